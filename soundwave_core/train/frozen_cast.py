"""Frozen weights held in bf16 while a stage trains under bf16 autocast, exports from the source.

Under ``precision: bf16`` autocast runs linear layers and convolutions in bf16 and casts their
float32 weights to bf16 at every use: frozen weights (the encoder, a frozen alignment adapter,
the LLM's base under LoRA) are re-cast at every step for nothing. :class:`FrozenCast` casts
them once, and keeps the source tensors (in host memory, so that on a GPU the cast halves the
frozen weights' device memory; on a CPU they cost 1.5x their float32 size) so that an export
writes them unchanged (:meth:`FrozenCast.restored`).

Only the weights and biases of ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` modules (PEFT's
LoRA base layers included) that require no gradient are cast, and only if no other kind of
module shares them (a Linear tied to an ``nn.Embedding`` stays float32): these are exactly the
tensors autocast casts to bf16 anyway, so the step computes the same values. Trainable weights
stay float32 (the optimizer's master weights), as do embeddings and norms.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: modules whose weights autocast runs in bf16 on every device
CAST_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def castable_frozen(model: nn.Module) -> list[nn.Parameter]:
    """The frozen float32 parameters owned only by :data:`CAST_MODULES` modules."""
    owners: dict[int, list[nn.Module]] = {}
    params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(module)
            params[id(param)] = param
    return [
        param for key, param in params.items()
        if not param.requires_grad and param.dtype == torch.float32
        and all(isinstance(owner, CAST_MODULES) for owner in owners[key])
    ]


class FrozenCast:
    """Casts ``model``'s :func:`castable_frozen` parameters to ``dtype`` in place (their
    ``.data``; the ``Parameter`` objects stay, so optimizers and hooks are unaffected) and keeps
    the source tensors. ``len()`` is the number of parameters cast."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self._pairs: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for param in castable_frozen(model):
            cast = param.data.to(dtype)
            # the source waits in host memory: on an accelerator the cast frees device memory
            # instead of adding to it (an export reads the weights, it runs no forward)
            source = param.data.to("cpu")
            param.data = cast
            self._pairs.append((param, source, cast))

    def __len__(self) -> int:
        return len(self._pairs)

    @contextmanager
    def restored(self) -> Iterator[None]:
        """The source tensors back in place inside the block (for an export), the cast ones after."""
        for param, source, _ in self._pairs:
            param.data = source
        try:
            yield
        finally:
            for param, _, cast in self._pairs:
                param.data = cast

    def release(self) -> None:
        """The source tensors back in place for good."""
        for param, source, cast in self._pairs:
            param.data = source.to(cast.device)
        self._pairs = []
