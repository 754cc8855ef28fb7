"""Splicing variable-length audio embeddings into token embeddings, without Python loops.

Each row of a text batch holds at most one audio placeholder token. Rows that hold one are
matched, in order, with the rows of the audio batch. The placeholder is replaced by that
row's ``audio_lengths[a]`` embeddings; text-only rows pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from swv.errors import InputError
from swv.model.state import lengths_to_mask

IGNORE_INDEX = -100


@dataclass
class Spliced:
    """``inputs_embeds [B, L', D]``, ``attention_mask [B, L']``, ``position_ids [B, L']``,
    ``labels [B, L']`` (audio and padding positions are ``-100``) and ``audio_positions``
    ``[B, L']`` (True where an audio embedding sits)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    audio_positions: torch.Tensor


def audio_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_token_id: int) -> torch.Tensor:
    """``[B]`` bool: rows that contain the audio placeholder. Raises if a row has several."""
    counts = ((input_ids == audio_token_id) & attention_mask.bool()).sum(dim=1)
    if bool((counts > 1).any()):
        row = int((counts > 1).nonzero()[0, 0])
        raise InputError(f"prompt row {row} contains {int(counts[row])} audio placeholders; expected at most one")
    return counts == 1


def splice_audio(
    token_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    audio_embeds: torch.Tensor,
    audio_lengths: torch.Tensor,
    audio_token_id: int,
    labels: torch.Tensor | None = None,
    padding_side: Literal["left", "right"] = "right",
) -> Spliced:
    """Replace each row's placeholder by its audio.

    Args:
        token_embeds: ``[B, L, D]`` embeddings of ``input_ids``.
        input_ids: ``[B, L]``; padding may sit on either side (``attention_mask`` decides).
        attention_mask: ``[B, L]`` 1 on real tokens.
        audio_embeds: ``[B_a, N, D]`` with ``B_a`` = number of rows holding a placeholder.
        audio_lengths: ``[B_a]`` valid audio frames per audio row.
        labels: optional ``[B, L]`` targets aligned with ``input_ids``.
        padding_side: where the output is padded.
    """
    batch, seq_len, dim = token_embeds.shape
    device = token_embeds.device
    valid = attention_mask.bool()
    has_audio = audio_rows(input_ids, attention_mask, audio_token_id)
    n_audio = int(has_audio.sum())
    if n_audio != audio_embeds.shape[0]:
        raise InputError(f"{n_audio} prompt rows hold an audio placeholder but {audio_embeds.shape[0]} audio inputs were given")

    # Audio length per text row (0 for text-only rows).
    row_audio_len = torch.zeros(batch, dtype=torch.long, device=device)
    row_audio_len[has_audio] = audio_lengths.to(device=device, dtype=torch.long)
    is_placeholder = (input_ids == audio_token_id) & valid
    text_tokens = valid & ~is_placeholder

    rank = valid.long().cumsum(dim=1) - 1  # position among the row's real tokens
    after_audio = (is_placeholder.long().cumsum(dim=1) - is_placeholder.long()) > 0
    new_len = valid.sum(dim=1) - has_audio.long() + row_audio_len
    total = int(new_len.max().item()) if batch else 0
    offset = (total - new_len) if padding_side == "left" else torch.zeros_like(new_len)

    # Destination of every text token: its rank, shifted by the audio it follows.
    token_dest = rank + offset[:, None] + torch.where(after_audio, row_audio_len[:, None] - 1, 0)
    rows, cols = text_tokens.nonzero(as_tuple=True)
    dests = token_dest[rows, cols]

    out = token_embeds.new_zeros(batch, total, dim)
    out[rows, dests] = token_embeds[rows, cols]

    # Destination of every audio frame: the placeholder's rank + frame index.
    audio_start = (rank + offset[:, None]).masked_fill(~is_placeholder, 0).sum(dim=1)  # [B]
    audio_valid = lengths_to_mask(audio_lengths.to(device), audio_embeds.shape[1]) if n_audio else torch.zeros(0, 0, dtype=torch.bool, device=device)
    a_rows, a_cols = audio_valid.nonzero(as_tuple=True)
    text_row_of_audio = has_audio.nonzero(as_tuple=True)[0]
    b_idx = text_row_of_audio[a_rows]
    out[b_idx, audio_start[b_idx] + a_cols] = audio_embeds[a_rows, a_cols].to(out.dtype)

    new_mask = torch.zeros(batch, total, dtype=attention_mask.dtype, device=device)
    new_mask[rows, dests] = 1
    new_mask[b_idx, audio_start[b_idx] + a_cols] = 1
    audio_positions = torch.zeros(batch, total, dtype=torch.bool, device=device)
    audio_positions[b_idx, audio_start[b_idx] + a_cols] = True

    new_labels = None
    if labels is not None:
        new_labels = torch.full((batch, total), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[rows, dests] = labels[rows, cols]

    position_ids = (new_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return Spliced(out, new_mask, position_ids, new_labels, audio_positions)
