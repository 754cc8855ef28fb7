"""Logits over an LLM vocabulary kept factored: hidden states ``[B, T, D]`` and a head ``[V, D]``.

A vocabulary-sized head (the alignment adapter's CTC head, the LM head) costs ``B x T x V``
floats when its logits are materialised: 3 GB in float32 for 8 x 750 frames at V = 128,256, and
as much again for ``log_softmax`` and each gradient. :class:`VocabLogits` keeps the two factors and
computes only what a caller needs, in blocks of at most :data:`BLOCK_ELEMENTS` logits:

- :meth:`VocabLogits.log_normaliser`: the per-position ``logsumexp`` over the vocabulary
  (differentiable; its backward never holds more than one block either),
- :meth:`VocabLogits.columns` / :meth:`VocabLogits.picked`: the logits of a few vocabulary ids,
- :meth:`VocabLogits.argmax`: the best id of every position,
- :meth:`VocabLogits.materialise`: the whole ``[B, T, V]`` tensor, for callers that ask for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Vocabulary columns per block.
VOCAB_CHUNK = 4096
#: Logits per block (rows x columns): 8M floats = 32 MB in float32.
BLOCK_ELEMENTS = 1 << 23


def _blocks(rows: int, vocab: int) -> Iterator[tuple[slice, slice]]:
    """Row-major blocks of ``[rows, vocab]`` with at most :data:`BLOCK_ELEMENTS` elements."""
    cols = min(vocab, VOCAB_CHUNK)
    block_rows = max(1, BLOCK_ELEMENTS // max(cols, 1))
    for r in range(0, rows, block_rows):
        for c in range(0, vocab, cols):
            yield slice(r, r + block_rows), slice(c, c + cols)


def _block_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: slice, cols: slice
) -> torch.Tensor:
    """float32 logits of one block: ``hidden[rows] [R, D]`` x ``weight[cols] [C, D]`` -> ``[R, C]``
    (the product in ``hidden``'s dtype, as the head itself computes it: under bf16 autocast a
    float32 head meets bf16 hidden states, also in the backward pass, which runs outside autocast)."""
    weight, bias = weight[cols], None if bias is None else bias[cols]
    if weight.dtype != hidden.dtype:
        weight, bias = weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype)
    return F.linear(hidden[rows], weight, bias).float()


class _LogSumExp(torch.autograd.Function):
    """``hidden [N, D]``, ``weight [V, D]``, ``bias [V]`` -> ``logsumexp(hidden @ weight.T + bias) [N]``
    (float32), one block at a time.

    When ``hidden`` needs a gradient, the forward pass also accumulates (online, like the
    normaliser) the softmax-weighted mean of the head rows ``E_p[w] [N, D]``, which is exactly
    d lse / d hidden: the backward pass then needs no second sweep over the vocabulary unless
    the head itself is trained.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        rows, vocab = hidden.shape[0], weight.shape[0]
        want_mean = ctx.needs_input_grad[0]
        running_max = hidden.new_full((rows,), float("-inf"), dtype=torch.float32)
        running_sum = hidden.new_zeros(rows, dtype=torch.float32)
        mean_row = hidden.new_zeros(rows, hidden.shape[1], dtype=torch.float32) if want_mean else None
        for r, c in _blocks(rows, vocab):
            logits = _block_logits(hidden, weight, bias, r, c)
            new_max = torch.maximum(running_max[r], logits.amax(dim=1))
            rescale = torch.exp(running_max[r] - new_max)
            probs = torch.exp(logits - new_max[:, None])
            running_sum[r] = running_sum[r] * rescale + probs.sum(dim=1)
            if mean_row is not None:
                mean_row[r] = mean_row[r] * rescale[:, None] + probs @ weight[c].float()
            running_max[r] = new_max
        lse = running_max + running_sum.log()
        if mean_row is not None:
            mean_row /= running_sum[:, None]
        ctx.save_for_backward(hidden, weight, bias, lse, mean_row)
        return lse

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor):  # type: ignore[override]
        hidden, weight, bias, lse, mean_row = ctx.saved_tensors
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad_lse[:, None] * mean_row).to(hidden.dtype)
        if ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2]):
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            for r, c in _blocks(hidden.shape[0], weight.shape[0]):
                probs = torch.exp(_block_logits(hidden, weight, bias, r, c) - lse[r, None]) * grad_lse[r, None]
                grad_weight[c] += probs.T @ hidden[r].float()
                if grad_bias is not None:
                    grad_bias[c] += probs.sum(dim=0)
            grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
            if grad_bias is not None:
                grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias


@dataclass(frozen=True)
class VocabLogits:
    """The logits ``hidden @ weight.T + bias`` ``[B, T, V]`` of a linear head over a vocabulary,
    never materialised unless :meth:`materialise` is called.

    Attributes:
        hidden: ``[B, T, D]`` the head's input (positions past a row's length are padding).
        weight: ``[V, D]`` the head's weight (the parameter itself: a trained head gets gradients).
        bias: ``[V]`` or None.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        """``(B, T, V)``, the shape of the materialised logits."""
        return torch.Size((*self.hidden.shape[:2], self.weight.shape[0]))

    def select_rows(self, rows: torch.Tensor) -> VocabLogits:
        """The batch rows ``rows`` (a ``[B]`` bool mask or an index tensor)."""
        return VocabLogits(self.hidden[rows], self.weight, self.bias)

    def materialise(self) -> torch.Tensor:
        """``[B, T, V]`` logits (the whole tensor: for callers that really need it)."""
        return F.linear(self.hidden, self.weight, self.bias)

    def columns(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, S]`` vocabulary ids -> float32 logits of those ids at every position ``[B, T, S]``."""
        scores = torch.einsum("btd,bsd->bts", self.hidden, self.weight[ids])
        if self.bias is not None:
            scores = scores + self.bias[ids][:, None, :]
        return scores.float()

    def picked(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, T]`` one vocabulary id per position -> its float32 logit ``[B, T]``.

        Computed as a product (as the blocks of :meth:`log_normaliser` are), so under autocast it
        is rounded the same way: a loss ``log_normaliser - picked`` is then never below zero by a
        rounding error (an elementwise product would stay float32 while the blocks are bf16)."""
        scores = torch.einsum("btd,btd->bt", self.hidden, self.weight[ids])
        if self.bias is not None:
            scores = scores + self.bias[ids]
        return scores.float()

    def log_normaliser(self, valid: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``logsumexp`` over the vocabulary ``[B, T]`` (differentiable), computed only
        where ``valid [B, T]`` (bool) is True; 0 elsewhere."""
        if valid is None:
            flat = self.hidden.reshape(-1, self.hidden.shape[-1])
            return _LogSumExp.apply(flat, self.weight, self.bias).reshape(self.hidden.shape[:2])
        lse = _LogSumExp.apply(self.hidden[valid], self.weight, self.bias)
        return torch.zeros(valid.shape, dtype=lse.dtype, device=lse.device).masked_scatter(valid, lse)

    @torch.no_grad()
    def argmax(self) -> torch.Tensor:
        """``[B, T]`` the id of the largest logit at every position (the first on ties, as
        ``torch.argmax``)."""
        flat = self.hidden.reshape(-1, self.hidden.shape[-1])
        best = torch.full((flat.shape[0],), float("-inf"), dtype=torch.float32, device=flat.device)
        best_id = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        for r, c in _blocks(flat.shape[0], self.weight.shape[0]):
            values, ids = _block_logits(flat, self.weight, self.bias, r, c).max(dim=1)
            better = values > best[r]
            best[r] = torch.where(better, values, best[r])
            best_id[r] = torch.where(better, ids + c.start, best_id[r])
        return best_id.reshape(self.hidden.shape[:2])
