"""Training losses of the composed model.

Both losses take their vocabulary-sized logits as :class:`~swv.nn.vocab_logits.VocabLogits`
(hidden states + head) so that neither ever holds ``[B, T, V]``: only the per-position
log-normaliser (computed in blocks over the vocabulary) and the logits of the ids the loss
needs are computed. :func:`lm_loss` also takes materialised logits (evaluation).
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F

from swv.model.defaults import LmReduction
from swv.model.splice import IGNORE_INDEX
from swv.nn.state import lengths_to_mask
from swv.nn.vocab_logits import VocabLogits

#: the names :func:`lm_loss` accepts as ``reduction``
LM_REDUCTIONS = get_args(LmReduction)


def lm_loss(logits: torch.Tensor | VocabLogits, labels: torch.Tensor, reduction: LmReduction = "token") -> torch.Tensor:
    """Next-token cross-entropy. ``logits [B, L, V]`` (a tensor, or factored: then the head runs on
    the labelled positions only), ``labels [B, L]`` (-100 ignored).

    ``reduction="token"``: the mean over every labelled token of the batch (Hugging Face's
    meaning). ``"row"``: each row's mean over its own labelled tokens, then the mean over the rows
    that have any, so a one-token answer weighs as much as a long transcript."""
    if reduction not in LM_REDUCTIONS:
        raise ValueError(f"lm_loss reduction must be one of {LM_REDUCTIONS}, got {reduction!r}")
    if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
        hidden = logits.hidden if isinstance(logits, VocabLogits) else logits
        return hidden.sum() * 0.0
    per_token, labelled = token_nll(logits, labels)
    if reduction == "token":
        return per_token.mean()
    sums, counts = row_sums(per_token, labelled)
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def token_nll(logits: torch.Tensor | VocabLogits, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each labelled token's next-token negative log-likelihood ``[N]`` (row-major) and where
    they are, ``labelled [B, L-1]`` (``labels`` shifted by one; -100 ignored). ``logits [B, L, V]``
    as in :func:`lm_loss`."""
    shift_labels = labels[:, 1:]
    labelled = shift_labels != IGNORE_INDEX  # [B, L-1]
    targets = shift_labels[labelled]  # [N]
    if isinstance(logits, VocabLogits):
        # [1, N, D]: the hidden states that predict a label
        rows = VocabLogits(logits.hidden[:, :-1][labelled][None], logits.weight, logits.bias)
        return (rows.log_normaliser() - rows.picked(targets[None]))[0], labelled
    return F.cross_entropy(logits[:, :-1][labelled].float(), targets, reduction="none"), labelled


def row_sums(per_token: torch.Tensor, labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_token [N]`` values at the true positions of ``labelled [B, L]`` (row-major) -> each
    row's sum ``[B]`` and count ``[B]``."""
    counts = labelled.sum(dim=1)  # [B]
    row_of_token = torch.repeat_interleave(torch.arange(labelled.shape[0], device=labelled.device), counts)
    return per_token.new_zeros(labelled.shape[0]).index_add(0, row_of_token, per_token), counts


def ctc_loss(
    ctc_logits: VocabLogits,
    ctc_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
) -> torch.Tensor:
    """CTC over the backbone vocabulary: mean over samples of (loss / target length), with
    impossible alignments zeroed (``F.ctc_loss(log_softmax(logits), ..., reduction="mean",
    zero_infinity=True)``). ``ctc_logits [B, T, V]`` (factored), ``targets [B, S]`` padded past
    ``target_lengths``. See :func:`_ctc_nll` for how the vocabulary is never materialised."""
    nll, feasible = _ctc_nll(ctc_logits, ctc_lengths, targets, target_lengths, blank_id, zero_infinity=True)
    per_sample = torch.where(feasible, nll, torch.zeros_like(nll))
    return (per_sample / target_lengths.long().clamp(min=1)).mean()


def ctc_log_likelihood(
    ctc_logits: VocabLogits,
    ctc_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
) -> torch.Tensor:
    """``[B]``: each row's CTC log-likelihood ``log P(targets[b] | frames)`` (summed over its
    alignments; ``-inf`` where no alignment fits its frames; an empty target is the all-blank
    path). Scores candidate transcripts (:mod:`swv.infer.rescoring`)."""
    nll, feasible = _ctc_nll(ctc_logits, ctc_lengths, targets, target_lengths, blank_id, zero_infinity=False)
    return torch.where(feasible, -nll, torch.full_like(nll, float("-inf")))


def _ctc_nll(
    ctc_logits: VocabLogits,
    ctc_lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    blank_id: int,
    zero_infinity: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row CTC negative log-likelihood ``[B]`` and whether any alignment is feasible ``[B]``.

    Only the blank and each row's target ids are gathered: ``scores [B, T, 1 + S]``. Every CTC
    path of row b scores ``sum_t (scores[b, t, path_t] - lse_V[b, t])`` with ``lse_V`` the
    log-normaliser over the whole vocabulary, so the loss equals torch's CTC on the scores
    normalised over the gathered columns (``lse_S``; a proper distribution, which torch's CTC
    gradient assumes) plus ``sum_t (lse_V - lse_S)`` over the row's valid frames.
    """
    lengths, target_lengths = ctc_lengths.long(), target_lengths.long()
    batch, time = ctc_logits.hidden.shape[:2]
    targets = targets.clamp(min=0)
    if targets.shape[1] == 0:  # every target empty: one (unused) column keeps the shapes valid
        targets = targets.new_zeros(batch, 1)
    blank = torch.full((batch, 1), blank_id, dtype=targets.dtype, device=targets.device)
    columns = torch.cat([blank, targets], dim=1)  # [B, 1 + S]: blank, then each target id
    scores = ctc_logits.columns(columns)  # [B, T, 1 + S]
    local = scores.log_softmax(dim=-1).transpose(0, 1)  # [T, B, 1 + S]
    # Each target becomes the first column holding its id, so equal ids stay one class (CTC
    # needs a blank between repeats); the unused duplicate columns only widen lse_S.
    local_targets = (targets[:, :, None] == columns[:, None, :]).int().argmax(dim=-1)  # [B, S]
    paths = F.ctc_loss(local, local_targets, lengths, target_lengths, blank=0, reduction="none",
                       zero_infinity=zero_infinity)
    with torch.no_grad():
        feasible = torch.isfinite(
            F.ctc_loss(local.detach(), local_targets, lengths, target_lengths, blank=0, reduction="none")
        )
    valid = lengths_to_mask(lengths, time)
    normaliser_gap = (ctc_logits.log_normaliser(valid) - scores.logsumexp(dim=-1)).masked_fill(~valid, 0.0)
    return paths + normaliser_gap.sum(dim=1), feasible
