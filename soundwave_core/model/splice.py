"""Splicing variable-length audio embeddings into token embeddings, without Python loops.

A row of a text batch may hold any number of audio placeholder tokens (a conversation with
several clips, each at its place). The placeholders are matched, in row-major order (row by
row, left to right), with the rows of the audio batch; each is replaced by that audio row's
``audio_lengths[a]`` embeddings. Text-only rows pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from swv.core.errors import InputError
from swv.nn.state import IGNORE_INDEX, lengths_to_mask


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


def placeholder_counts(input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_token_id: int) -> torch.Tensor:
    """``[B]`` number of audio placeholders per row (padding excluded)."""
    return ((input_ids == audio_token_id) & attention_mask.bool()).sum(dim=1)


@dataclass
class _Layout:
    """Where every text token and audio frame of the input lands in the spliced output.

    Text token ``(rows[i], cols[i])`` goes to output column ``dests[i]`` of its row; frame
    ``a_cols[j]`` of placeholder ``a_idx[j]`` goes to ``(b_idx[j], a_dests[j])``."""

    total: int
    rows: torch.Tensor
    cols: torch.Tensor
    dests: torch.Tensor
    a_idx: torch.Tensor
    a_cols: torch.Tensor
    b_idx: torch.Tensor
    a_dests: torch.Tensor


def _layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_lengths: torch.Tensor, n_frames: int,
            n_given: int, audio_token_id: int, padding_side: str, device: torch.device) -> _Layout:
    """The output positions of :func:`splice_audio`, computed without Python loops."""
    batch = input_ids.shape[0]
    valid = attention_mask.bool()
    is_placeholder = (input_ids == audio_token_id) & valid
    n_audio = int(is_placeholder.sum())
    if n_audio != n_given:
        raise InputError(f"the prompts hold {n_audio} audio placeholder(s) but {n_given} audio inputs were given")
    text_tokens = valid & ~is_placeholder

    # Width of every input position in the output: 1 per text token, the audio's length per
    # placeholder (row-major order = the audio rows' order), 0 for padding.
    width = text_tokens.long()
    width[is_placeholder] = audio_lengths.to(device=device, dtype=torch.long)
    new_len = width.sum(dim=1)
    total = int(new_len.max().item()) if batch else 0
    offset = (total - new_len) if padding_side == "left" else torch.zeros_like(new_len)
    start = width.cumsum(dim=1) - width + offset[:, None]  # [B, L] first output slot of each position

    rows, cols = text_tokens.nonzero(as_tuple=True)
    dests = start[rows, cols]

    # Audio frame j of placeholder p goes to start[p] + j.
    p_rows, p_cols = is_placeholder.nonzero(as_tuple=True)  # [P], row-major
    audio_valid = (
        lengths_to_mask(audio_lengths.to(device), n_frames)
        if n_audio
        else torch.zeros(0, 0, dtype=torch.bool, device=device)
    )
    a_idx, a_cols = audio_valid.nonzero(as_tuple=True)
    b_idx = p_rows[a_idx]
    a_dests = start[b_idx, p_cols[a_idx]] + a_cols
    return _Layout(total, rows, cols, dests, a_idx, a_cols, b_idx, a_dests)


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
    """Replace every placeholder by its audio.

    Args:
        token_embeds: ``[B, L, D]`` embeddings of ``input_ids``.
        input_ids: ``[B, L]``; padding may sit on either side (``attention_mask`` decides).
        attention_mask: ``[B, L]`` 1 on real tokens.
        audio_embeds: ``[P, N, D]`` with ``P`` = number of placeholders in the batch, in
            row-major order.
        audio_lengths: ``[P]`` valid audio frames per placeholder.
        labels: optional ``[B, L]`` targets aligned with ``input_ids``.
        padding_side: where the output is padded.
    """
    batch, _, dim = token_embeds.shape
    device = token_embeds.device
    lay = _layout(input_ids, attention_mask, audio_lengths, audio_embeds.shape[1], audio_embeds.shape[0],
                  audio_token_id, padding_side, device)
    total = lay.total
    out = token_embeds.new_zeros(batch, total, dim)
    out[lay.rows, lay.dests] = token_embeds[lay.rows, lay.cols]
    out[lay.b_idx, lay.a_dests] = audio_embeds[lay.a_idx, lay.a_cols].to(out.dtype)

    new_mask = torch.zeros(batch, total, dtype=attention_mask.dtype, device=device)
    new_mask[lay.rows, lay.dests] = 1
    new_mask[lay.b_idx, lay.a_dests] = 1
    audio_positions = torch.zeros(batch, total, dtype=torch.bool, device=device)
    audio_positions[lay.b_idx, lay.a_dests] = True

    new_labels = None
    if labels is not None:
        new_labels = torch.full((batch, total), IGNORE_INDEX, dtype=labels.dtype, device=device)
        new_labels[lay.rows, lay.dests] = labels[lay.rows, lay.cols]

    position_ids = (new_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return Spliced(out, new_mask, position_ids, new_labels, audio_positions)
