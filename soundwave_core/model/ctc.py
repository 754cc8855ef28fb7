"""Greedy CTC decoding over the LLM vocabulary: each frame's argmax, runs of the same id
collapsed, blanks (the audio placeholder id) dropped. Used by the demo's CTC-head WER and by
CTC rescoring of transcripts (:mod:`swv.infer.rescoring`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["collapse_ctc", "greedy_ctc_ids"]


def collapse_ctc(ids: Sequence[int], blank_id: int) -> list[int]:
    """Frame-wise argmax ids -> token ids: collapse repeats, then drop blanks.

    ``[5, 5, blank, 5, 7, 7, blank]`` -> ``[5, 5, 7]`` (a blank separates two real repeats).
    """
    out: list[int] = []
    previous: int | None = None
    for token in ids:
        token = int(token)
        if token != previous and token != blank_id:
            out.append(token)
        previous = token
    return out


def greedy_ctc_ids(frame_ids: torch.Tensor, lengths: torch.Tensor, blank_id: int) -> list[list[int]]:
    """``[B, T]`` per-frame argmax ids and ``[B]`` valid lengths -> one collapsed id list per row."""
    best = frame_ids.cpu()
    return [collapse_ctc(best[b, : int(n)].tolist(), blank_id) for b, n in enumerate(lengths.cpu().tolist())]
