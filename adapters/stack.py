"""Baseline: frame stacking x n + MLP projection (Ultravox / LLaVA style).

``[B, T, D_enc]`` -> ``[B, ceil(T/n), n D_enc]`` -> Linear -> GELU -> Linear -> ``[B, ceil(T/n), D]``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from swv.adapters.base import Adapter
from swv.adapters.frames import stack_frames, stacked_lengths
from swv.core.config import ComponentConfig
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState


class StackConfig(ComponentConfig):
    factor: int = Field(default=4, ge=1, description="frames stacked into one")
    hidden_size: int | None = Field(default=None, ge=1, description="MLP width; default: the LLM width")
    layer_norm: bool = Field(default=True, description="LayerNorm on the output")


class StackAdapter(Adapter):
    config_class = StackConfig

    def __init__(self, config: StackConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        hidden = config.hidden_size or backbone.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(config.factor * input_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, backbone.hidden_size),
        )
        self.norm = nn.LayerNorm(backbone.hidden_size) if config.layer_norm else nn.Identity()

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return stacked_lengths(input_lengths, self.config.factor, drop_remainder=False)

    def forward(self, state: AudioState) -> AudioState:
        stacked = stack_frames(state.embeds, state.lengths, self.config.factor, drop_remainder=False)
        lengths = self.output_lengths(state.lengths).clamp(max=stacked.shape[1])
        speech = torch.minimum(self.output_lengths(state.speech_mask().sum(dim=1)), lengths)
        return state.replace(embeds=self.norm(self.mlp(stacked)), lengths=lengths, speech_lengths=speech)
