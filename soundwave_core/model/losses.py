"""Training losses of the composed model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swv.model.splice import IGNORE_INDEX


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token cross-entropy. ``logits [B, L, V]``, ``labels [B, L]`` (-100 ignored)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if bool((shift_labels != IGNORE_INDEX).any()):
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    return shift_logits.sum() * 0.0


def ctc_loss(
    ctc_logits: torch.Tensor,
    ctc_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
) -> torch.Tensor:
    """CTC over the backbone vocabulary: mean over samples of (loss / target length), with
    impossible alignments zeroed. ``ctc_logits [B, T, V]``, ``targets [B, S]`` padded past
    ``target_lengths``."""
    log_probs = ctc_logits.float().log_softmax(dim=-1).transpose(0, 1)
    targets = targets.clamp(min=0)
    return F.ctc_loss(
        log_probs,
        targets,
        ctc_lengths.long(),
        target_lengths.long(),
        blank=blank_id,
        reduction="mean",
        zero_infinity=True,
    )
