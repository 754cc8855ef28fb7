"""CTC rescoring of transcripts (``GenerationSettings.ctc_weight``).

A Soundwave model has two readers of the same clip: the alignment adapter's CTC head and the
LLM. On speech unlike its training data the LLM fills uncertain stretches from its own prior
("we walked along the river until it got dark" -> "we visited the beach until the tide came
in") where the CTC head's reading stays closer to the sound. Hybrid CTC/attention recognisers
settle such disagreements by scoring hypotheses with both models (WeNet's attention rescoring,
ESPnet's joint decoding, both with a ``ctc_weight``). Here, for every request whose answer is a
transcript of its one clip (``ChatRequest.transcript``), the two candidates, the generated
answer and the CTC head's greedy transcript, are scored by

    (1 - ctc_weight) * log P_LLM(candidate | prompt, audio) + ctc_weight * log P_CTC(candidate | frames)

(the LLM's teacher-forced log-likelihood of the candidate and its end-of-turn token; the CTC
log-likelihood summed over alignments, :func:`~swv.model.losses.ctc_log_likelihood`) and the
higher one is the answer. Only rows whose two readings differ are scored: their prompts run
once more (the generation's KV cache is not kept), and both candidates continue from that
cache in one pass; nothing is sampled again. Answers that are streamed are not rescored (their tokens
are out before the scores exist).
"""

from __future__ import annotations

import torch

from swv.core.errors import UsageError
from swv.infer.batching import Prepared
from swv.infer.running import RunningBatch
from swv.model.ctc import greedy_ctc_ids
from swv.model.losses import ctc_log_likelihood
from swv.model.speechlm import SpeechLM
from swv.model.splice import IGNORE_INDEX
from swv.model.stopping import end_of_turn_ids

__all__ = ["rescore_with_ctc"]


@torch.no_grad()
def rescore_with_ctc(
    model: SpeechLM, prepared: Prepared, new_tokens: torch.Tensor, limits: torch.Tensor, ctc_weight: float
) -> torch.Tensor:
    """``new_tokens [B, N]`` with each transcript row replaced by the CTC head's greedy transcript
    (and an end-of-turn token) where that scores higher (see the module's docstring); a
    candidate longer than the row's ``limits[b]`` new tokens is not considered. Returns
    ``[B, N']`` (``N' >= N``; rows end at their first stop token, as generated rows do)."""
    rows = [b for b, request in enumerate(prepared.requests) if request.transcript]
    state = prepared.state
    if not rows or state is None:
        return new_tokens
    if state.ctc_logits is None or state.ctc_lengths is None:
        raise UsageError("ctc_weight: the model's adapter chain has no CTC head to rescore transcripts with")
    owners = prepared.clip_owner.tolist()
    clips = torch.tensor([owners.index(b) for b in rows], dtype=torch.long)
    end = _end_id(model)
    stops = set(model.stop_token_ids())
    answers = [_until_stop(new_tokens[b].tolist(), stops) for b in rows]
    chosen = state.select(clips)
    assert chosen.ctc_logits is not None and chosen.ctc_lengths is not None
    greedy = greedy_ctc_ids(chosen.ctc_logits.argmax(), chosen.ctc_lengths, model.audio_token_id)
    # only rows whose two readings differ (and whose CTC reading fits the row's limit) are scored
    differ = [i for i, b in enumerate(rows) if answers[i] != greedy[i] and len(greedy[i]) + 1 <= int(limits[b])]
    if not differ:
        return new_tokens
    index = torch.tensor(differ, dtype=torch.long)
    both = torch.cat([clips[index], clips[index]])
    candidates = [answers[i] for i in differ] + [greedy[i] for i in differ]  # each row's answer, then its CTC reading
    llm = _llm_log_likelihoods(model, prepared, [rows[i] for i in differ] * 2, candidates, end)
    ctc = _ctc_log_likelihoods(model, prepared, both, candidates)
    score = (1.0 - ctc_weight) * llm + ctc_weight * ctc  # [2D]
    width = max(new_tokens.shape[1], max(len(greedy[i]) for i in differ) + 1)
    out = torch.full((new_tokens.shape[0], width), end, dtype=new_tokens.dtype, device=new_tokens.device)
    out[:, : new_tokens.shape[1]] = new_tokens
    for k, i in enumerate(differ):
        if score[len(differ) + k] > score[k]:
            out[rows[i]] = end
            out[rows[i], : len(greedy[i])] = torch.tensor(greedy[i], dtype=out.dtype, device=out.device)
    return out


def _end_id(model: SpeechLM) -> int:
    """The token an answer ends with in training: the chat template's end-of-turn token (else the
    tokenizer's eos)."""
    tokenizer = model.tokenizer
    ids = end_of_turn_ids(tokenizer, tokenizer.convert_ids_to_tokens(model.audio_token_id))
    if ids:
        return ids[0]
    if tokenizer.eos_token_id is None:
        raise UsageError("ctc_weight: the tokenizer has no end-of-turn or eos token to end a rescored transcript")
    return int(tokenizer.eos_token_id)


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    """A generated row's answer tokens, before its first stop token."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i]
    return ids


#: candidates teacher-forced per forward pass (their logits are ``[rows, tokens, vocabulary]``)
SCORING_ROWS = 16


def _llm_log_likelihoods(model: SpeechLM, prepared: Prepared, rows: list[int], candidates: list[list[int]],
                         end: int) -> torch.Tensor:
    """``[N]``: log P_LLM of ``candidates[i] + [end]`` after request ``rows[i]``'s prompt and clip.
    Each distinct prompt runs once (:meth:`RunningBatch.prefill`: its logits give the first
    token); its cache then takes every candidate of its row at once (:meth:`RunningBatch.feed`),
    ``SCORING_ROWS`` candidates per pass."""
    distinct = sorted(set(rows))
    prompts = RunningBatch(model)
    first = prompts.prefill(prepared.select(distinct)).log_softmax(dim=-1)  # [U, V]
    out = torch.zeros(len(candidates))
    for start in range(0, len(candidates), SCORING_ROWS):
        chunk = range(start, min(start + SCORING_ROWS, len(candidates)))
        owners = [distinct.index(rows[i]) for i in chunk]
        answers = [candidates[i] + [end] for i in chunk]
        firsts = torch.tensor([answer[0] for answer in answers], device=first.device)
        head = first[owners].gather(1, firsts[:, None])[:, 0].float().cpu()  # [n]
        width = max(max(len(answer) for answer in answers) - 1, 1)
        fed = torch.zeros(len(answers), width, dtype=torch.long)  # each answer but its last token
        wanted = torch.full((len(answers), width), IGNORE_INDEX, dtype=torch.long)  # the token after each
        for k, answer in enumerate(answers):
            fed[k, : len(answer) - 1] = torch.tensor(answer[:-1], dtype=torch.long)
            wanted[k, : len(answer) - 1] = torch.tensor(answer[1:], dtype=torch.long)
        lengths = torch.tensor([len(answer) - 1 for answer in answers])
        logits = prompts.selected(owners).feed(fed, lengths).float().log_softmax(dim=-1).cpu()  # [n, C, V]
        picked = logits.gather(2, wanted.clamp(min=0)[..., None])[..., 0].masked_fill(wanted == IGNORE_INDEX, 0.0)
        out[list(chunk)] = head + picked.sum(dim=1)
    return out


def _ctc_log_likelihoods(model: SpeechLM, prepared: Prepared, clips: torch.Tensor, candidates: list[list[int]]) -> torch.Tensor:
    """``[N]``: log P_CTC of ``candidates[i]`` given clip ``clips[i]``'s CTC frames."""
    assert prepared.state is not None
    state = prepared.state.select(clips)
    assert state.ctc_logits is not None and state.ctc_lengths is not None
    targets = torch.zeros(len(candidates), max(1, max(len(c) for c in candidates)), dtype=torch.long)
    for i, candidate in enumerate(candidates):
        targets[i, : len(candidate)] = torch.tensor(candidate, dtype=torch.long)
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.long)
    device = state.ctc_lengths.device
    scores = ctc_log_likelihood(state.ctc_logits, state.ctc_lengths, targets.to(device), lengths.to(device), model.audio_token_id)
    return scores.float().cpu()
