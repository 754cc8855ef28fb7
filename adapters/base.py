"""The adapter interface every ``adapter`` component implements."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from swv.model.context import BackboneInfo
from swv.model.state import AudioState


class Adapter(nn.Module):
    """One link of the adapter chain: :class:`AudioState` in, :class:`AudioState` out.

    Constructed as ``cls(config, input_dim=..., backbone=BackboneInfo(...))`` by the registry.
    Subclasses set ``output_dim`` and implement :meth:`forward` and :meth:`output_lengths`
    (the only place their length arithmetic lives; for data-dependent adapters such as
    shrinking it is the upper bound, and the state carries the actual lengths).
    """

    config_class: ClassVar[type]
    #: Whether this adapter consumes CTC logits produced earlier in the chain.
    needs_ctc: ClassVar[bool] = False
    #: Names of the auxiliary losses this adapter reports in ``AudioState.aux_losses``; a
    #: stage weighs each by the same name in its recipe's ``losses:`` (unweighted: not trained).
    aux_loss_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Any, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.output_dim = backbone.hidden_size

    def always_frozen(self) -> set[str]:
        """Parameter names (relative to this adapter) that its config keeps frozen even when a
        stage trains the adapter (e.g. the alignment adapter's vocabulary-sized CTC head)."""
        return set()

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, state: AudioState) -> AudioState:
        raise NotImplementedError
