"""Utterance adapter (beyond the paper): one vector per clip for what holds over the whole clip.

Statistics pooling as x-vector speaker embeddings do it: the mean and the standard deviation
over time of the incoming frames ``[B, T, D]`` (the frames that hold audio) -> ``[B, 2D]``,
standardised per channel over the training data (``BatchNorm1d`` without affine parameters: batch
statistics in training, the running averages at inference), then ``Linear -> [B, D_llm]``.

The frames pass through unchanged; the vector travels on the state (``AudioState.utterance_embeds``)
and ``SpeechLM`` puts it before the audio tokens at the end of the chain, as one more token. Put
the adapter first, on the encoder's frames (a linear probe reads the voice's pitch, sex and
speaking rate there far better than after an alignment adapter trained for the words,
docs/demo.md).

Why a token of standardised statistics and not a pathway learned through the shrinking adapter's
cross-attention alone: an LLM learns to read a direction its audio tokens already carry in a few
dozen steps, but while none is there it learns to ignore the audio for a label question instead
(its answer stops depending on the clip) and the adapter's gradient vanishes with it (docs/demo.md,
dev experiments). Standardised statistics through a projection at the LLM's embedding scale give
the LLM that direction from the first step. Its own token, not a vector added to every audio
token: added, a vector at that scale drowned the words (the dev WER went above 100 %).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from swv.adapters.base import Adapter
from swv.core.config import ComponentConfig
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState


class UtteranceConfig(ComponentConfig):
    gain: float = Field(
        default=3.0,
        ge=0,
        description=(
            "per-channel standard deviation of the vector at initialisation, in units of the standard "
            "deviation of the LLM's input-embedding table (of 1.0 when the backbone does not expose it)"
        ),
    )


def pooled_statistics(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``embeds [B, T, D]`` and ``mask [B, T]`` (True on the frames to pool; a row without any
    pools nothing and gives zeros) -> ``[B, 2D]`` float32 mean and standard deviation over time."""
    weights = mask.to(torch.float32)[..., None]
    count = weights.sum(dim=1).clamp(min=1.0)
    values = embeds.to(torch.float32)
    mean = (values * weights).sum(dim=1) / count
    variance = (((values - mean[:, None]) ** 2) * weights).sum(dim=1) / count
    return torch.cat([mean, variance.clamp(min=1e-8).sqrt()], dim=-1)


class UtteranceAdapter(Adapter):
    config_class = UtteranceConfig

    def __init__(self, config: UtteranceConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        self.output_dim = input_dim
        self.norm = nn.BatchNorm1d(2 * input_dim, affine=False, momentum=None)
        self.proj = nn.Linear(2 * input_dim, backbone.hidden_size)
        table = backbone.input_embedding() if backbone.input_embedding is not None else None
        scale = float(table.float().std()) if table is not None and not table.is_meta else 1.0
        with torch.no_grad():
            nn.init.normal_(self.proj.weight, std=config.gain * scale / (2 * input_dim) ** 0.5)
            nn.init.zeros_(self.proj.bias)

    @torch.no_grad()
    def silence(self) -> None:
        """Zero the projection: the vector is then zero for every clip (an ablation)."""
        self.proj.weight.zero_()
        self.proj.bias.zero_()

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return input_lengths

    def standardise(self, stats: torch.Tensor) -> torch.Tensor:
        """``[B, 2D]`` -> per-channel standardised: batch statistics when training on more than
        one clip (running averages updated), the running averages otherwise."""
        if self.training and stats.shape[0] > 1:
            return self.norm(stats)
        return F.batch_norm(stats, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps)

    def forward(self, state: AudioState) -> AudioState:
        """``embeds [B, T, D]`` unchanged; ``utterance_embeds [B, D_llm]`` set (the sum with one an
        earlier adapter set)."""
        stats = self.standardise(pooled_statistics(state.embeds, state.speech_mask()))
        vector = self.proj(stats.to(self.proj.weight.dtype))
        if state.utterance_embeds is not None:
            vector = vector + state.utterance_embeds
        return state.replace(utterance_embeds=vector)
