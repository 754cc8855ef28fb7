"""An encoder implementing only swv.encoders.base.Encoder.

waveform -> frames of ``frame`` samples -> log-magnitude spectrum ``[B, F, frame // 2 + 1]``
-> pairs of frames ``[B, F // 2, frame + 2]`` -> Linear + tanh ``[B, F // 2, dim]``.
The projection is drawn from ``seed``, so the config alone rebuilds the weights.
"""

import numpy as np
import torch
from pydantic import Field
from torch import nn

from swv.core.config import ComponentConfig
from swv.encoders.base import Encoder


class SpectrumConfig(ComponentConfig):
    frame: int = Field(default=160, ge=2, description="samples per feature frame")
    dim: int = Field(default=32, ge=1, description="output width")
    sample_rate: int = Field(default=16000, ge=1)
    seed: int = 0


class SpectrumEncoder(Encoder):
    config_class = SpectrumConfig
    feature_time_axis = 1

    def __init__(self, config):
        super().__init__(config)
        self.sample_rate = config.sample_rate
        self.frame_rate = config.sample_rate / config.frame
        self.output_dim = config.dim
        bins = config.frame // 2 + 1
        self.proj = nn.Linear(2 * bins, config.dim)
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for parameter in self.proj.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        self.requires_grad_(False)

    def extract_features(self, waveforms):
        frame = self.config.frame
        waves = [torch.as_tensor(np.asarray(w, dtype=np.float32)).reshape(-1) for w in waveforms]
        lengths = torch.tensor([len(w) // frame for w in waves], dtype=torch.long)
        frames = torch.zeros(len(waves), max(int(lengths.max()), 1), frame)
        for row, (wave, n) in enumerate(zip(waves, lengths.tolist())):
            frames[row, :n] = wave[: n * frame].reshape(n, frame)
        return torch.log1p(torch.fft.rfft(frames).abs()), lengths

    def output_lengths(self, feature_lengths):
        return feature_lengths // 2

    def encode(self, input_features, feature_lengths):
        batch, time, bins = input_features.shape
        pairs = input_features[:, : time // 2 * 2].reshape(batch, time // 2, 2 * bins)
        return torch.tanh(self.proj(pairs.to(self.proj.weight.dtype)))
