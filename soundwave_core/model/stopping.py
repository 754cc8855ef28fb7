"""Where a generated answer ends, and how prompts are batched for generation.

The stop tokens come from the backbone's tokenizer and generation config, never from token
strings written here: the generation config's ``eos_token_id`` (an id or a list), the
tokenizer's eos, and the end-of-turn token the chat template puts after an assistant answer
(found by rendering a one-turn conversation). :meth:`swv.model.speechlm.SpeechLM.generate`
stops on them; :func:`cut_at_stop` cuts generated rows at the first one.

An answer that renders the speech (a transcript, a translation) also ends where the audio
runs out: :func:`length_bound` is the most new tokens such an answer can need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from swv.core.errors import InputError
from swv.model.prompts import PromptBuilder
from swv.model.splice import IGNORE_INDEX


def end_of_turn_ids(tokenizer: Any, audio_token: str) -> list[int]:
    """The special token the chat template puts after an assistant answer (``[]`` when the
    template has none or cannot render a conversation)."""
    try:
        full, labels = PromptBuilder(tokenizer, None, audio_token).training_ids("hi", "ok", has_audio=False)
    except InputError:
        return []
    special = set(tokenizer.all_special_ids or [])
    tail = [token for token, label in zip(full, labels) if label != IGNORE_INDEX]
    return [token for token in tail if token in special][:1]


def stop_token_ids(tokenizer: Any, generation_config: Any, audio_token: str) -> list[int]:
    """Sorted ids that end an answer: the generation config's eos id(s), the tokenizer's eos
    and the chat template's end-of-turn token."""
    ids: list[int] = []
    eos = None if generation_config is None else generation_config.eos_token_id
    if eos is not None:
        ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids.extend(end_of_turn_ids(tokenizer, audio_token))
    return sorted({int(i) for i in ids})


_ROUNDING = 1e-6


def length_bound(
    seconds: torch.Tensor,
    audio_tokens: torch.Tensor,
    max_new_tokens: int | torch.Tensor,
    *,
    tokens_per_second: float,
    min_tokens_per_second: float,
    per_audio_token: float,
    margin: int,
) -> torch.Tensor:
    """The most new tokens a transcript (or translation) of each row's audio can need, ``[B]``
    int64, per row and vectorised::

        min(max_new_tokens,
            ceil(clamp(per_audio_token * audio_tokens,
                       min_tokens_per_second * seconds, tokens_per_second * seconds)) + margin)

    ``seconds [B]`` is the row's audio duration, ``audio_tokens [B]`` the audio embeddings the
    adapter chain hands to the LLM (``AudioState.lengths`` summed over the row's clips; after a
    shrinking adapter one per kept frame, about one per transcript token). The audio-token term
    follows the speech actually heard (slow speech keeps few frames, fast speech many); the
    duration clamps it from both sides: no answer longer than the fastest speech could say
    (``tokens_per_second``; it also bounds chains that hand the LLM many frames per token), none
    shorter than the slowest (``min_tokens_per_second``, for a chain that keeps too few frames).
    ``margin`` covers very short clips and the stop token. ``max_new_tokens`` (an int or ``[B]``)
    is never exceeded. The ceiling forgives float rounding (a float32 0.2 s at 10 tokens per
    second is 2 tokens, not 3)."""
    seconds = torch.as_tensor(seconds, dtype=torch.float64)
    by_tokens = torch.as_tensor(audio_tokens, dtype=torch.float64) * per_audio_token
    bounded = torch.minimum(torch.maximum(by_tokens, seconds * min_tokens_per_second), seconds * tokens_per_second)
    bound = torch.ceil(bounded - _ROUNDING).long() + margin
    return torch.minimum(bound, torch.as_tensor(max_new_tokens, dtype=torch.long))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> left-padded ``input_ids [B, L]`` and ``attention_mask [B, L]``."""
    longest = max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, longest - len(row) :] = 1
    return ids, mask


def cut_at_stop(
    new_tokens: torch.Tensor, stop_ids: torch.Tensor, limits: torch.Tensor | None = None
) -> tuple[list[list[int]], list[int]]:
    """``[B, N]`` generated ids -> each row's tokens before its first stop id, and the number
    of tokens generated per row (up to and including that stop id). With ``limits [B]`` only a
    row's first ``limits[b]`` tokens count (what follows is padding)."""
    is_stop = torch.isin(new_tokens, stop_ids.to(new_tokens.device))
    length = torch.full((new_tokens.shape[0],), new_tokens.shape[1], dtype=torch.long, device=new_tokens.device)
    if limits is not None:
        length = torch.minimum(length, limits.to(new_tokens.device).long())
        is_stop &= torch.arange(new_tokens.shape[1], device=new_tokens.device)[None, :] < length[:, None]
    stopped = is_stop.any(dim=1)
    first = torch.where(stopped, is_stop.int().argmax(dim=1), length)
    generated = torch.where(stopped, first + 1, first)
    rows = new_tokens.tolist()
    return [row[:n] for row, n in zip(rows, first.tolist())], generated.tolist()

