"""Window-level Q-Former (SALMONN / SLAM-LLM style): learned queries cross-attend to windows of
encoder frames.

``[B, T, D_enc]`` -> LayerNorm -> windows of ``window_frames`` frames (the last one of a row
zero-padded and masked) -> ``num_queries`` learned queries per window through a BLIP-2 Q-Former
(transformers' ``Blip2QFormerModel``: per layer self-attention over the queries, cross-attention
to the window's valid frames, feed-forward) -> Linear to the LLM width ->
``[B, ceil(T / window_frames) * num_queries, D]``.

Every window of every row runs in one batch (``[B * W, window_frames, D_enc]``). Windows never
straddle encoder windows of a long clip (``AudioState.window_frames``): each encoder window is
cut into its own Q-Former windows, so a full encoder window of ``S`` frames gives
``output_lengths(S)`` frames, as the core assumes.

Shapes: ``B`` batch, ``T`` input frames, ``K`` encoder windows per row, ``W`` Q-Former windows
per encoder window, ``w`` frames per Q-Former window, ``Q`` queries per window, ``H`` Q-Former
width, ``D`` LLM width.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from swv.adapters.base import Adapter
from swv.adapters.frames import stacked_lengths
from swv.core.config import ComponentConfig
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState, lengths_to_mask, to_blocks


class QFormerConfig(ComponentConfig):
    window_frames: int = Field(default=17, ge=1, description="encoder frames per window (17 at 50 Hz: ~0.33 s)")
    num_queries: int = Field(default=1, ge=1, description="learned queries (output frames) per window")
    num_layers: int = Field(default=2, ge=1, description="Q-Former layers")
    hidden_size: int = Field(default=768, ge=1, description="Q-Former width (BERT-base, as SALMONN)")
    num_heads: int = Field(default=12, ge=1, description="attention heads (must divide hidden_size)")
    intermediate_size: int | None = Field(default=None, ge=1, description="feed-forward width; default 4 x hidden_size")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout on hidden states and attention weights")

    @model_validator(mode="after")
    def _check_heads(self) -> QFormerConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self


class QFormerAdapter(Adapter):
    """Attributes: ``input_norm`` (LayerNorm over the encoder frames), ``queries``
    (``[1, Q, H]``), ``qformer`` (transformers ``Blip2QFormerModel``), ``proj`` (Linear H -> D)."""

    config_class = QFormerConfig

    def __init__(self, config: QFormerConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        qconfig = Blip2QFormerConfig(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size or 4 * config.hidden_size,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            cross_attention_frequency=1,
            encoder_hidden_size=input_dim,
        )
        self.input_norm = nn.LayerNorm(input_dim)
        self.queries = nn.Parameter(torch.empty(1, config.num_queries, config.hidden_size))
        nn.init.normal_(self.queries, std=qconfig.initializer_range)
        self.qformer = Blip2QFormerModel(qconfig)
        self.proj = nn.Linear(config.hidden_size, backbone.hidden_size)

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """``ceil(L / window_frames) * num_queries``."""
        return stacked_lengths(input_lengths, self.config.window_frames, drop_remainder=False) * self.config.num_queries

    def _windowed_lengths(self, block_lengths: torch.Tensor, batch: int) -> torch.Tensor:
        """Output frames per row: :meth:`output_lengths` of each encoder window, summed per row."""
        return self.output_lengths(block_lengths).reshape(batch, -1).sum(dim=1)

    def forward(self, state: AudioState) -> AudioState:
        embeds, lengths = state.embeds, state.lengths
        batch = embeds.shape[0]
        # [B, T, D] -> encoder windows [B*K, S, D] -> Q-Former windows [B*K*W, w, D]
        blocks, block_lengths, _ = to_blocks(self.input_norm(embeds), lengths, state.window_frames)
        windows, window_lengths, _ = to_blocks(blocks, block_lengths, self.config.window_frames)
        # windows without a valid frame (past a row's end) attend to their first (zero) frame;
        # their outputs lie past the row's length and are ignored
        mask = lengths_to_mask(window_lengths.clamp(min=1), windows.shape[1]).long()
        queries = self.queries.expand(windows.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=windows, encoder_attention_mask=mask)
        hidden = out.last_hidden_state.to(embeds.dtype).reshape(batch, -1, self.config.hidden_size)  # [B, K*W*Q, H]
        out_lengths = self._windowed_lengths(block_lengths, batch)
        speech_blocks = to_blocks(embeds[..., :1], state.speech_mask().sum(dim=1), state.window_frames)[1]
        speech = torch.minimum(self._windowed_lengths(speech_blocks, batch), out_lengths)
        return state.replace(embeds=self.proj(hidden), lengths=out_lengths, speech_lengths=speech)
