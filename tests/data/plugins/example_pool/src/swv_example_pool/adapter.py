"""An adapter: average-pool n frames, then a Linear to the LLM width."""

import torch
from pydantic import Field

from swv.adapters.base import Adapter
from swv.adapters.frames import stack_frames, stacked_lengths
from swv.core.config import ComponentConfig


class ExamplePoolConfig(ComponentConfig):
    factor: int = Field(default=2, ge=1)


class ExamplePool(Adapter):
    config_class = ExamplePoolConfig

    def __init__(self, config, *, input_dim, backbone):
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        self.proj = torch.nn.Linear(input_dim, backbone.hidden_size)

    def output_lengths(self, input_lengths):
        return stacked_lengths(input_lengths, self.config.factor, drop_remainder=False)

    def forward(self, state):
        n = self.config.factor
        stacked = stack_frames(state.embeds, state.lengths, n, drop_remainder=False)
        pooled = stacked.unflatten(-1, (n, -1)).mean(dim=2)
        return state.replace(embeds=self.proj(pooled), lengths=self.output_lengths(state.lengths))
