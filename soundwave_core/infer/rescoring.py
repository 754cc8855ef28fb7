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
higher one is the answer. One batched forward of the backbone over both candidates of every
such row; nothing is sampled again. Answers that are streamed are not rescored (their tokens
are out before the scores exist).

:func:`rescore_with_ctc` rescores the rows of a generated batch (``Pipeline``);
:func:`rescore_transcripts` does the choosing for answers gathered from anywhere, each with its
:class:`TranscriptSource` (its prompt and its clip, kept apart from the batch it was encoded in:
``swv serve``'s per-token scheduler keeps one per row until the row's answer is done).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from swv.core.errors import UsageError
from swv.infer.batching import Prepared
from swv.model.ctc import greedy_ctc_ids
from swv.model.losses import ctc_log_likelihood, row_sums, token_nll
from swv.model.speechlm import SpeechLM
from swv.model.splice import IGNORE_INDEX
from swv.model.stopping import cut_at_stop, end_of_turn_ids
from swv.nn.state import AudioState
from swv.nn.vocab_logits import VocabLogits

__all__ = ["TranscriptSource", "check_ctc_head", "rescore_transcripts", "rescore_with_ctc", "transcript_source"]

#: Why a model cannot rescore.
NO_CTC_HEAD = "ctc_weight: the model's adapter chain has no CTC head to rescore transcripts with"


def check_ctc_head(model: SpeechLM, ctc_weight: float | None) -> None:
    """A :class:`UsageError` when ``ctc_weight`` is above 0 but no adapter of the model's chain
    produces CTC logits (nothing to rescore with)."""
    if ctc_weight and not model.has_ctc_head:
        raise UsageError(NO_CTC_HEAD)


@dataclass(frozen=True)
class TranscriptSource:
    """What rescoring one transcript reads of its request: ``prompt``, its prompt ids ``[L]`` (no
    padding; one audio placeholder), and ``clip``, its clip's adapter-chain output as a one-row
    :class:`~swv.nn.state.AudioState` of the fields rescoring reads, cut to the clip's own frames:
    ``embeds [1, T, D]``/``lengths [1]`` (spliced into the prompt) and ``ctc_logits [1, T_ctc, V]``/
    ``ctc_lengths [1]`` (the CTC head's reading and score)."""

    prompt: list[int]
    clip: AudioState


def transcript_source(prepared: Prepared, row: int) -> TranscriptSource:
    """The :class:`TranscriptSource` of request ``row`` of ``prepared`` (a transcript: one clip);
    its tensors are copies, so the batch may be freed. A chain without a CTC head is a
    :class:`UsageError`."""
    state = prepared.state
    assert state is not None, "a transcript has a clip"
    if state.ctc_logits is None or state.ctc_lengths is None:
        raise UsageError(NO_CTC_HEAD)
    clip = prepared.clip_owner.tolist().index(row)
    frames, ctc_frames = int(state.lengths[clip]), int(state.ctc_lengths[clip])
    head = state.ctc_logits
    ctc = VocabLogits(head.hidden[clip : clip + 1, :ctc_frames].clone(), head.weight, head.bias)
    own = AudioState(state.embeds[clip : clip + 1, :frames].clone(), state.lengths[clip : clip + 1].clone(), ctc,
                     state.ctc_lengths[clip : clip + 1].clone())
    return TranscriptSource(prepared.input_ids[row][prepared.attention_mask[row].bool()].tolist(), own)


@torch.no_grad()
def rescore_with_ctc(
    model: SpeechLM, prepared: Prepared, new_tokens: torch.Tensor, limits: torch.Tensor, ctc_weight: float,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """``new_tokens [B, N]`` with each transcript row (of ``rows``; default: every row) replaced by
    the CTC head's greedy transcript (and an end-of-turn token) where that scores higher
    (:func:`rescore_transcripts`); a row's answer is its tokens before its first stop token within
    its ``limits[b]``. Returns ``[B, N']`` (``N' >= N``; rows end at their first stop token, as
    generated rows do)."""
    rows = [b for b in (range(len(prepared.requests)) if rows is None else rows) if prepared.requests[b].transcript]
    if not rows:
        return new_tokens
    index = torch.tensor(rows, dtype=torch.long)
    stops = torch.tensor(model.stop_token_ids())
    answers, _ = cut_at_stop(new_tokens[index.to(new_tokens.device)], stops, limits[index])
    sources = [transcript_source(prepared, b) for b in rows]
    readings = rescore_transcripts(model, sources, answers, [int(limits[b]) for b in rows], ctc_weight)
    won = [(b, reading) for b, reading in zip(rows, readings) if reading is not None]
    if not won:
        return new_tokens
    end = _end_id(model)
    width = max(new_tokens.shape[1], max(len(reading) + 1 for _, reading in won))
    out = torch.full((new_tokens.shape[0], width), end, dtype=new_tokens.dtype, device=new_tokens.device)
    out[:, : new_tokens.shape[1]] = new_tokens
    for b, reading in won:
        out[b] = end
        out[b, : len(reading)] = torch.tensor(reading, dtype=out.dtype, device=out.device)
    return out


@torch.no_grad()
def rescore_transcripts(
    model: SpeechLM, sources: Sequence[TranscriptSource], answers: Sequence[list[int]], limits: Sequence[int],
    ctc_weight: float,
) -> list[list[int] | None]:
    """For each transcript (its ``sources[i]``, its generated ``answers[i]``, the tokens before its
    stop token), the CTC head's greedy reading of its clip where that scores higher by
    ``(1 - ctc_weight) * log P_LLM + ctc_weight * log P_CTC`` (the module's docstring) and fits
    ``limits[i]`` new tokens with its end-of-turn token; ``None`` where the answer stays. One
    batched forward of the backbone over both candidates of the rows whose two readings differ."""
    chosen: list[list[int] | None] = [None] * len(sources)
    if not sources:
        return chosen
    state = _stacked([source.clip for source in sources])
    assert state.ctc_logits is not None and state.ctc_lengths is not None
    stops = set(model.stop_token_ids())
    # a reading ends at its first stop token, as a generated answer does
    greedy = [_before_stop(ids, stops) for ids in greedy_ctc_ids(state.ctc_logits.argmax(), state.ctc_lengths,
                                                                 model.audio_token_id)]
    # only rows whose two readings differ (and whose CTC reading fits the row's limit) are scored
    differ = [i for i in range(len(sources)) if answers[i] != greedy[i] and len(greedy[i]) + 1 <= limits[i]]
    if not differ:
        return chosen
    pairs = state.select(torch.tensor(differ + differ, dtype=torch.long))  # each row's answer, then its CTC reading
    candidates = [answers[i] for i in differ] + [greedy[i] for i in differ]
    prompts = [sources[i].prompt for i in differ] * 2
    llm = _llm_log_likelihoods(model, prompts, pairs, candidates, _end_id(model))
    ctc = _ctc_log_likelihoods(model, pairs, candidates)
    score = (1.0 - ctc_weight) * llm + ctc_weight * ctc  # [2D]
    for k, i in enumerate(differ):
        if score[len(differ) + k] > score[k]:
            chosen[i] = greedy[i]
    return chosen


def _before_stop(ids: list[int], stops: set[int]) -> list[int]:
    """``ids`` up to (without) the first of ``stops``."""
    return next((ids[:i] for i, token in enumerate(ids) if token in stops), ids)


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


def _stacked(clips: Sequence[AudioState]) -> AudioState:
    """One-row clips (:class:`TranscriptSource`) -> one batch: ``embeds [P, T, D]`` and the CTC
    head's input ``[P, T_ctc, D']`` zero-padded to the longest (past ``lengths``/``ctc_lengths``:
    padding)."""
    hidden, ctc_lengths = [], []
    for clip in clips:
        assert clip.ctc_logits is not None and clip.ctc_lengths is not None  # transcript_source checks it
        hidden.append(clip.ctc_logits.hidden[0])
        ctc_lengths.append(clip.ctc_lengths)
    head = clips[0].ctc_logits
    assert head is not None
    ctc = VocabLogits(pad_sequence(hidden, batch_first=True), head.weight, head.bias)
    return AudioState(pad_sequence([clip.embeds[0] for clip in clips], batch_first=True),
                      torch.cat([clip.lengths for clip in clips]), ctc, torch.cat(ctc_lengths))


def _llm_log_likelihoods(
    model: SpeechLM, prompts: Sequence[list[int]], state: AudioState, candidates: Sequence[list[int]], end: int
) -> torch.Tensor:
    """``[N]``: log P_LLM of ``candidates[i] + [end]`` after ``prompts[i]`` with clip ``i`` of
    ``state`` (teacher-forced, one right-padded batch; the vocabulary head runs only on the
    candidates' positions)."""
    sequences, labels = [], []
    for prompt, candidate in zip(prompts, candidates):
        sequences.append(prompt + candidate + [end])
        labels.append([IGNORE_INDEX] * len(prompt) + candidate + [end])
    longest = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(sequences), longest, dtype=torch.long)
    label_ids = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(sequences, labels)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        label_ids[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    spliced = model.splice(state, input_ids, mask, label_ids)
    assert spliced.labels is not None
    logits = model.backbone.factored_logits(spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids)
    if logits is None:  # a head that is not a plain Linear: the full logits
        logits = model.backbone(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                                position_ids=spliced.position_ids).logits
    nll, labelled = token_nll(logits, spliced.labels)
    return -row_sums(nll.float(), labelled)[0].cpu()


def _ctc_log_likelihoods(model: SpeechLM, state: AudioState, candidates: Sequence[list[int]]) -> torch.Tensor:
    """``[N]``: log P_CTC of ``candidates[i]`` given the CTC frames of clip ``i`` of ``state``."""
    assert state.ctc_logits is not None and state.ctc_lengths is not None
    targets = torch.zeros(len(candidates), max(1, max(len(c) for c in candidates)), dtype=torch.long)
    for i, candidate in enumerate(candidates):
        targets[i, : len(candidate)] = torch.tensor(candidate, dtype=torch.long)
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.long)
    device = state.ctc_lengths.device
    scores = ctc_log_likelihood(state.ctc_logits, state.ctc_lengths, targets.to(device), lengths.to(device), model.audio_token_id)
    return scores.float().cpu()
