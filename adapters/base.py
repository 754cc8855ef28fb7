"""The adapter interface every ``adapter`` component implements (contract: docs/plugins.md)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState


class Adapter(nn.Module, metaclass=ABCMeta):
    """One link of the adapter chain: :class:`AudioState` in, :class:`AudioState` out.

    Constructed as ``cls(config, input_dim=..., backbone=BackboneInfo(...))`` by the registry.
    Subclasses implement :meth:`forward` and :meth:`output_lengths` (the only place their
    length arithmetic lives; for data-dependent adapters such as shrinking it is the upper
    bound, and the state carries the actual lengths). ``output_dim`` defaults to the LLM width;
    an adapter that feeds another adapter may set its own. The last adapter of a chain must
    end at the LLM width.
    """

    #: Every member swv's core reads or calls on an adapter (docs/plugins.md lists each one;
    #: tests/test_plugin_docs.py checks this list against the core's code and the doc).
    CORE_MEMBERS: ClassVar[tuple[str, ...]] = (
        "config", "forward", "output_lengths", "input_dim", "output_dim", "produces_ctc", "needs_ctc",
        "aux_loss_names", "always_frozen", "clip_classes",
    )
    #: Config fields the core reads when an adapter's config declares them.
    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("path", "trust_remote_code")

    config_class: ClassVar[type]
    #: Whether this adapter consumes CTC logits produced earlier in the chain.
    needs_ctc: ClassVar[bool] = False
    #: Names of the auxiliary losses this adapter reports in ``AudioState.aux_losses``; a
    #: stage weighs each by the same name in its recipe's ``losses:`` (unweighted: not trained).
    aux_loss_names: ClassVar[frozenset[str]] = frozenset()
    #: Whether this adapter's output state carries ``ctc_logits``/``ctc_lengths`` (a CTC loss
    #: can then be trained; a CTC-only stage stops the chain after the first such adapter).
    produces_ctc: ClassVar[bool] = False

    config: Any
    #: Width of the incoming ``state.embeds`` (the encoder's or the previous adapter's output).
    input_dim: int
    #: Width of the outgoing ``state.embeds``.
    output_dim: int

    def __init__(self, config: Any, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.output_dim = backbone.hidden_size

    def always_frozen(self) -> set[str]:
        """Parameter names (relative to this adapter) that its config keeps frozen even when a
        stage trains the adapter (e.g. the alignment adapter's vocabulary-sized CTC head)."""
        return set()

    def clip_classes(self) -> dict[str, list[str]]:
        """Labels of whole clips this adapter learns from, per task: ``{task: [label, ...]}``. A
        training row whose ``task`` is one of these and whose ``label`` is one of its labels gives
        the adapter that label's index in ``state.clip_targets[task]``. Default: none."""
        return {}

    @abstractmethod
    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """``[B]`` valid input frames -> ``[B]`` valid output frames (an upper bound when the
        actual lengths depend on the data)."""

    @abstractmethod
    def forward(self, state: AudioState) -> AudioState:
        """``state.embeds [B, T, input_dim]`` -> a new state with ``embeds [B, T', output_dim]``
        and ``lengths [B]`` (built with ``state.replace(...)`` so other fields travel on)."""
