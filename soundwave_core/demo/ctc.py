"""Greedy CTC decoding of the alignment adapter, and the held-out WER of that CTC head.

The alignment adapter predicts, for every (paired) encoder frame, a distribution over the LLM
vocabulary plus the blank (the audio placeholder id). Greedy decoding takes the argmax of each
frame, collapses runs of the same id, drops blanks and detokenizes with the LLM's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from swv.model.ctc import greedy_ctc_ids

__all__ = ["greedy_ctc_texts", "transcribe_ctc"]


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
