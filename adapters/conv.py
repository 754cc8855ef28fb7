"""Baseline: fixed-rate downsampling (Qwen2-Audio style), the paper's "Adapter (x n)".

``[B, T, D_enc]`` -> strided Conv1d (kernel = stride = n) + GELU, or average pooling by n ->
Linear to the LLM width ``[B, ceil(T/n), D]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from swv.adapters.base import Adapter
from swv.adapters.frames import stacked_lengths
from swv.core.config import ComponentConfig
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState, lengths_to_mask


class ConvConfig(ComponentConfig):
    factor: int = Field(default=4, ge=1, description="downsampling rate n")
    kind: Literal["conv", "pool"] = "conv"
    hidden_size: int | None = Field(default=None, ge=1, description="conv channels; default: encoder width")


class ConvAdapter(Adapter):
    config_class = ConvConfig

    def __init__(self, config: ConvConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        n = config.factor
        if config.kind == "conv":
            channels = config.hidden_size or input_dim
            self.down: nn.Module = nn.Sequential(nn.Conv1d(input_dim, channels, kernel_size=n, stride=n), nn.GELU())
        else:
            channels = input_dim
            self.down = nn.AvgPool1d(kernel_size=n, stride=n)
        self.proj = nn.Linear(channels, backbone.hidden_size)

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return stacked_lengths(input_lengths, self.config.factor, drop_remainder=False)

    def forward(self, state: AudioState) -> AudioState:
        n = self.config.factor
        embeds = state.embeds * lengths_to_mask(state.lengths, state.embeds.shape[1]).unsqueeze(-1).to(state.embeds.dtype)
        time = embeds.shape[1]
        embeds = F.pad(embeds, (0, 0, 0, (-time) % n))
        down = self.down(embeds.transpose(1, 2)).transpose(1, 2)
        lengths = self.output_lengths(state.lengths).clamp(max=down.shape[1])
        speech = torch.minimum(self.output_lengths(state.speech_mask().sum(dim=1)), lengths)
        return state.replace(embeds=self.proj(down), lengths=lengths, speech_lengths=speech)
