"""Soundwave's shrinking adapter (Stage II): shorten the audio to roughly its text length.

From the CTC argmax of each frame, keep one frame per run of equal predictions (the first
frame of each run) -> content frames ``[B, N, D]`` (N = longest kept count); then the content
frames query the full frame sequence ``[B, T, D]`` with multi-head cross-attention to gather
what the kept frames lack (tone, pitch...), and ``out = LayerNorm(kept + attention)``.

Beyond the paper, ``posterior_embedding: true`` hands the LLM, at each kept frame, the CTC
posterior's expected input embedding ``softmax(ctc_logits / temperature) @ E_in`` (as LegoSLM,
arXiv 2505.11352, does), plus ``gate * LayerNorm(kept + attention)`` with a per-channel gate that
starts at zero: an untrained shrinking adapter then gives the LLM what it already reads (the
CTC head's tokens, as text embeddings), and training lets the acoustic frames in.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from swv.adapters.base import Adapter
from swv.core.config import ComponentConfig
from swv.core.errors import ComponentError
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState, lengths_to_mask, to_blocks
from swv.nn.vocab_logits import VocabLogits
from swv.nn.windowing import join_windows

#: The cross-attention's dropout when a config gives none, by ``compat``: the paper gives no value
#: (0.0 is swv's choice); the released implementation builds its ``nn.MultiheadAttention`` with 0.1.
DEFAULT_DROPOUT: dict[str, float] = {"paper": 0.0, "released": 0.1}


class ShrinkingConfig(ComponentConfig):
    num_heads: int | None = Field(default=None, ge=1, description="attention heads; default: the backbone's")
    dropout: float = Field(
        default=DEFAULT_DROPOUT["paper"],
        ge=0,
        lt=1,
        description="cross-attention dropout; default by compat: 0.0 (paper, swv's choice) or 0.1 (released)",
    )
    keep_blank_runs: bool = Field(
        default=True,
        description="keep one frame for runs of the CTC blank too (the released model does)",
    )
    posterior_embedding: bool = Field(
        default=False,
        description=(
            "beyond the paper (LegoSLM-style): add the CTC posterior's expected input embedding "
            "(softmax over the vocabulary times the LLM's input-embedding table) at each kept frame; "
            "the adapter's own output enters through a per-channel gate initialised to zero"
        ),
    )
    posterior_temperature: float = Field(default=1.0, gt=0, description="softmax temperature of posterior_embedding")
    inference_posterior_temperature: float | None = Field(
        default=None,
        gt=0,
        description=(
            "posterior_embedding's temperature when the adapter is not training (inference, evaluation, and "
            "stages that keep it frozen); default: posterior_temperature"
        ),
    )
    gate_init: float = Field(
        default=0.0,
        ge=0,
        description=(
            "initial value of posterior_embedding's per-channel gate on the adapter's own output; 0 starts "
            "from the CTC tokens alone, about the LLM's embedding scale lets the acoustic path in from the start"
        ),
    )
    compat: Literal["paper", "released"] = Field(
        default="paper",
        description=(
            "paper: kept frames attend to the frames that were NOT kept (kept positions masked, "
            "as in the paper's figure 3) and hold audio (the padded tail of a pad_to_30s window "
            "masked); released: kept frames attend to the kept frames only, padding included, "
            "as the released implementation does"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _dropout_by_compat(cls, data: Any) -> Any:
        """A config without ``dropout`` takes its ``compat``'s default (:data:`DEFAULT_DROPOUT`);
        an unknown ``compat`` is left for the field's own validation to report."""
        if isinstance(data, dict) and "dropout" not in data:
            compat = data.get("compat", "paper")
            if isinstance(compat, str) and compat in DEFAULT_DROPOUT:
                return {**data, "dropout": DEFAULT_DROPOUT[compat]}
        return data


def run_starts(tokens: torch.Tensor, lengths: torch.Tensor, blank_id: int, keep_blank_runs: bool) -> torch.Tensor:
    """``[B, T]`` per-frame CTC argmax ids -> ``[B, T]`` bool, True on the first frame of each run
    of equal ids within the valid length. A row whose every run is dropped (all blank) keeps its
    first frame."""
    valid = lengths_to_mask(lengths, tokens.shape[1])
    changed = torch.ones_like(valid)
    changed[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    keep = valid & changed
    if not keep_blank_runs:
        keep &= tokens != blank_id
        empty = (keep.sum(dim=1) == 0) & (lengths > 0)
        keep[:, 0] |= empty
    return keep


def gather_kept(embeds: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack the kept frames of each row to the front: ``[B, T, D]`` -> ``[B, N, D]`` and lengths ``[B]``."""
    lengths = keep.sum(dim=1)
    max_len = int(lengths.max().item()) if keep.numel() else 0
    out = embeds.new_zeros(embeds.shape[0], max_len, embeds.shape[2])
    rows, cols = keep.nonzero(as_tuple=True)
    slots = (keep.cumsum(dim=1) - 1)[rows, cols]
    out[rows, slots] = embeds[rows, cols]
    return out, lengths


class ShrinkingAdapter(Adapter):
    config_class = ShrinkingConfig
    needs_ctc = True

    def __init__(self, config: ShrinkingConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        if input_dim != backbone.hidden_size:
            raise ComponentError(
                f"shrinking adapter: input width {input_dim} must equal the LLM width {backbone.hidden_size} "
                "(put it after the alignment adapter)"
            )
        heads = config.num_heads or backbone.num_attention_heads
        if input_dim % heads:
            raise ComponentError(f"shrinking adapter: width {input_dim} is not divisible by num_heads={heads}")
        self.blank_id = backbone.audio_token_id
        self.cross_attn = nn.MultiheadAttention(input_dim, heads, dropout=config.dropout, batch_first=True)
        self.norm = nn.LayerNorm(input_dim)
        self._token_table = backbone.input_embedding
        if config.posterior_embedding:
            if backbone.input_embedding is None:
                raise ComponentError("shrinking adapter: posterior_embedding needs a backbone that exposes its input embeddings")
            self.gate = nn.Parameter(torch.full((input_dim,), config.gate_init))

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        """Upper bound (every frame kept); the actual lengths depend on the CTC predictions."""
        return input_lengths

    def forward(self, state: AudioState) -> AudioState:
        """``embeds [B, T, D]`` + ``ctc_logits [B, T, V]`` -> ``embeds [B, N, D]``, ``keep_mask [B, T]``.
        The per-frame argmax runs in blocks over the vocabulary (no ``[B, T, V]`` tensor)."""
        if state.ctc_logits is None:
            raise ComponentError("shrinking adapter needs CTC logits from an earlier adapter (e.g. alignment)")
        frames, lengths = state.embeds, state.lengths
        keep = run_starts(state.ctc_logits.argmax(), lengths, self.blank_id, self.config.keep_blank_runs)
        # Each kept frame attends to the frames of its own encoder window (the whole row when the
        # clip is one window): blocks of a long clip are attended separately, then re-joined.
        blocks, _, owner = to_blocks(frames, lengths, state.window_frames)
        size = blocks.shape[1]
        block_keep = nn.functional.pad(keep, (0, blocks.shape[0] // keep.shape[0] * size - keep.shape[1])).reshape(-1, size)
        kept, kept_in_block = gather_kept(blocks, block_keep)
        # paper: the frames not kept that hold audio (a pad_to_30s window's padded tail masked)
        speech = to_blocks(state.speech_mask()[..., None].to(frames.dtype), lengths, state.window_frames)[0][..., 0] > 0
        attendable = block_keep if self.config.compat == "released" else speech & ~block_keep
        # Blocks with nothing to attend to (every frame kept) get no auxiliary information.
        has_keys = attendable.any(dim=1)
        key_padding_mask = ~(attendable | ~has_keys[:, None])
        gathered, _ = self.cross_attn(kept, blocks, blocks, key_padding_mask=key_padding_mask, need_weights=False)
        gathered = gathered * has_keys[:, None, None].to(gathered.dtype)
        out, kept_lengths = join_windows(self.norm(kept + gathered), kept_in_block, owner, frames.shape[0])
        if self.config.posterior_embedding:
            out = self.expected_embeddings(state.ctc_logits, keep, kept_lengths) + self.gate * out
        return state.replace(embeds=out, lengths=kept_lengths, keep_mask=keep, speech_lengths=None)

    def temperature(self) -> float:
        """The posterior's softmax temperature now: ``posterior_temperature`` in training,
        ``inference_posterior_temperature`` (when set) otherwise."""
        inference = self.config.inference_posterior_temperature
        return self.config.posterior_temperature if self.training or inference is None else inference

    def expected_embeddings(self, ctc_logits: VocabLogits, keep: torch.Tensor, kept_lengths: torch.Tensor) -> torch.Tensor:
        """The CTC posterior at the kept frames ``keep [B, T]`` (``kept_lengths [B]`` of them per
        row) -> the posterior-weighted input embeddings ``[B, N, D]`` (rows past a row's kept count
        are zero). Only the kept frames' logits ``[B, N, V]`` are computed."""
        assert self._token_table is not None
        table = self._token_table()
        kept_hidden, _ = gather_kept(ctc_logits.hidden, keep)
        kept_logits = VocabLogits(kept_hidden, ctc_logits.weight, ctc_logits.bias).materialise()
        probs = (kept_logits.float() / self.temperature()).softmax(dim=-1)
        expected = probs.to(table.dtype) @ table
        return expected * lengths_to_mask(kept_lengths, expected.shape[1])[..., None].to(expected.dtype)
