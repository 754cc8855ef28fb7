"""Greedy CTC decoding of the alignment adapter, and the held-out WER of that CTC head.

The alignment adapter predicts, for every (paired) encoder frame, a distribution over the LLM
vocabulary plus the blank (the audio placeholder id). Greedy decoding takes the argmax of each
frame, collapses runs of the same id, drops blanks and detokenizes with the LLM's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


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


def greedy_ctc_texts(frame_ids: torch.Tensor, lengths: torch.Tensor, blank_id: int, tokenizer: Any) -> list[str]:
    """Greedy CTC transcripts (special tokens skipped, surrounding spaces stripped)."""
    return [
        tokenizer.decode(ids, skip_special_tokens=True).strip()
        for ids in greedy_ctc_ids(frame_ids, lengths, blank_id)
    ]


@torch.no_grad()
def transcribe_ctc(model: Any, waveforms: Sequence[Any], batch_size: int = 16) -> list[str]:
    """Greedy CTC transcripts of ``waveforms`` (16 kHz mono float arrays) by ``model``'s encoder
    and alignment adapter only: the LLM does not run."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        for start in range(0, len(waveforms), batch_size):
            chunk = list(waveforms[start : start + batch_size])
            state = model.encode_audio(waveforms=chunk, stop_after_ctc=True)
            if state.ctc_logits is None or state.ctc_lengths is None:
                raise RuntimeError("the model's adapter chain produces no CTC logits")
            texts += greedy_ctc_texts(state.ctc_logits.argmax(), state.ctc_lengths, model.audio_token_id, model.tokenizer)
    finally:
        model.train(was_training)
    return texts
