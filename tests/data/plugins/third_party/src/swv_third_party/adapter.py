"""An adapter implementing only swv.adapters.base.Adapter: a gated projection to its own width
(the next adapter of the chain takes ``output_dim`` as its input width)."""

import torch
from pydantic import Field
from torch import nn

from swv.adapters.base import Adapter
from swv.core.config import ComponentConfig


class GatedProjectionConfig(ComponentConfig):
    width: int = Field(default=48, ge=1)


class GatedProjection(Adapter):
    config_class = GatedProjectionConfig

    def __init__(self, config, *, input_dim, backbone):
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        self.output_dim = config.width
        self.value = nn.Linear(input_dim, config.width)
        self.gate = nn.Linear(input_dim, config.width)

    def output_lengths(self, input_lengths):
        return input_lengths

    def forward(self, state):
        x = state.embeds
        return state.replace(embeds=self.value(x) * torch.sigmoid(self.gate(x)), lengths=self.output_lengths(state.lengths))
