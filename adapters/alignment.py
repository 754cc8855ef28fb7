"""Soundwave's alignment adapter (Stage I): map encoder frames into the LLM's embedding space.

frames ``[B, T, D_enc]`` -> stack pairs ``[B, T/2, 2 D_enc]`` -> Linear ``[B, T/2, D]`` ->
one pre-norm Transformer encoder layer -> LayerNorm -> embeddings ``[B, T/2, D]``; a CTC head
over the backbone vocabulary gives ``ctc_logits [B, T/2, V]`` (blank = audio placeholder id), handed on
factored (the embeddings + the head weight, see :class:`~swv.nn.vocab_logits.VocabLogits`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from swv.adapters.base import Adapter
from swv.adapters.frames import stack_frames, stacked_lengths
from swv.core.config import ComponentConfig
from swv.core.errors import ComponentError
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState, lengths_to_mask, to_blocks
from swv.nn.vocab_logits import VocabLogits


class AlignmentConfig(ComponentConfig):
    stack: int = Field(default=2, ge=1, description="adjacent encoder frames concatenated into one")
    num_heads: int | None = Field(default=None, ge=1, description="attention heads; default: the backbone's")
    ffn_multiplier: float = Field(default=2.0, gt=0, description="FFN width as a multiple of the LLM width")
    dropout: float = Field(default=0.1, ge=0, lt=1)
    activation: Literal["relu", "gelu"] = "relu"
    ctc_head_trainable: bool = Field(
        default=False,
        description="train the vocabulary-sized CTC head (initialised from the LM head); frozen by default",
    )
    blank_row: Literal["distinct", "lm_head"] = Field(
        default="distinct",
        description=(
            "initial CTC-head row of the blank (the audio placeholder): 'distinct', a fixed pseudo-random "
            "direction with the rows' mean norm; 'lm_head', the LM head's row, which for a newly added "
            "token is a weighted mean of other rows: its logit is then never the largest, so greedy CTC "
            "never predicts a blank and training learns far slower (docs/demo.md)"
        ),
    )
    ctc_added_rows_trainable: bool = Field(
        default=False,
        description=(
            "train only the CTC-head rows of the tokens added for swv (the blank and the sound tags) "
            "through a zero-initialised correction; the rest of the head stays frozen"
        ),
    )
    compat: Literal["paper", "released"] = Field(
        default="paper",
        description=(
            "paper: the Transformer layer attends across the frames of each utterance that hold "
            "audio (the padded tail of a pad_to_30s window masked; within each 30 s encoder window of "
            "a longer clip at inference); released: like the released Soundwave weights, each frame "
            "is processed on its own (self-attention over a length-1 sequence)"
        ),
    )


def distinct_row(weight: torch.Tensor, row: int, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random direction (``seed``) scaled to the mean norm of the other rows of
    ``weight [V, D]``: not a combination of them, so its logit can be the largest."""
    direction = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(seed))
    norms = weight.norm(dim=1)
    mean_norm = (norms.sum() - norms[row]) / (norms.shape[0] - 1)
    return (direction / direction.norm() * mean_norm).to(weight.dtype)


class AlignmentAdapter(Adapter):
    config_class = AlignmentConfig
    produces_ctc = True

    def __init__(self, config: AlignmentConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        hidden = backbone.hidden_size
        heads = config.num_heads or backbone.num_attention_heads
        if hidden % heads:
            raise ComponentError(f"alignment adapter: LLM width {hidden} is not divisible by num_heads={heads}")
        self.proj = nn.Linear(config.stack * input_dim, hidden)
        self.layer = nn.TransformerEncoderLayer(
            d_model=hidden,
            nhead=heads,
            dim_feedforward=int(round(config.ffn_multiplier * hidden)),
            dropout=config.dropout,
            activation=config.activation,
            batch_first=True,
            norm_first=True,
        )
        self.norm = nn.LayerNorm(hidden)
        self.ctc_head = nn.Linear(hidden, backbone.vocab_size, bias=False)
        if backbone.output_embedding is not None:
            with torch.no_grad():
                weight = backbone.output_embedding()
                self.ctc_head.weight.copy_(weight.to(self.ctc_head.weight.dtype))
                if config.blank_row == "distinct":
                    self.ctc_head.weight[backbone.audio_token_id] = distinct_row(self.ctc_head.weight, backbone.audio_token_id)
        self.ctc_head.weight.requires_grad_(config.ctc_head_trainable)
        if config.ctc_added_rows_trainable:
            if config.ctc_head_trainable:
                raise ComponentError(
                    "alignment adapter: 'ctc_added_rows_trainable' is redundant with 'ctc_head_trainable' (set one)"
                )
            if not backbone.added_token_ids:
                raise ComponentError("alignment adapter: 'ctc_added_rows_trainable' needs the backbone's added token ids")
        added = backbone.added_token_ids if config.ctc_added_rows_trainable else ()
        self.register_buffer("ctc_added_ids", torch.tensor(added, dtype=torch.long), persistent=False)
        #: ``[n_added, D]`` trained corrections of the added tokens' CTC-head rows (zeros: the
        #: head starts as copied); ``None`` unless ``ctc_added_rows_trainable``.
        self.ctc_added_rows = nn.Parameter(torch.zeros(len(added), hidden)) if added else None

    def always_frozen(self) -> set[str]:
        return set() if self.config.ctc_head_trainable else {"ctc_head.weight"}

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return stacked_lengths(input_lengths, self.config.stack, drop_remainder=True)

    def forward(self, state: AudioState) -> AudioState:
        """``state.embeds [B, T, D_enc]`` -> embeds ``[B, T', D]`` and ``ctc_logits [B, T', V]``
        (factored: ``embeds`` and the CTC head's weight; nothing vocabulary-sized is computed here)."""
        stacked = stack_frames(state.embeds, state.lengths, self.config.stack, drop_remainder=True)
        lengths = self.output_lengths(state.lengths).clamp(max=stacked.shape[1])
        # a stacked frame holding any audio counts as audio
        speech = stacked_lengths(state.speech_mask().sum(dim=1), self.config.stack, drop_remainder=False)
        speech = torch.minimum(speech, lengths)
        hidden = self.proj(stacked)
        batch, time, dim = hidden.shape
        if self.config.compat == "released":
            hidden = self.layer(hidden.reshape(batch * time, 1, dim)).reshape(batch, time, dim)
        else:
            # keys: the frames holding audio (the padded tail of a pad_to_30s window is masked),
            # within each encoder window of a long clip
            window = None if state.window_frames is None else int(self.output_lengths(torch.tensor([state.window_frames])).item())
            hidden = self.attend_within_windows(hidden, speech, window)
        embeds = self.norm(hidden)
        ctc_logits = VocabLogits(embeds, self.effective_ctc_weight())
        return state.replace(embeds=embeds, lengths=lengths, ctc_logits=ctc_logits, ctc_lengths=lengths,
                             speech_lengths=speech)

    def attend_within_windows(self, hidden: torch.Tensor, lengths: torch.Tensor, window: int | None) -> torch.Tensor:
        """The Transformer layer over ``hidden [B, T, D]`` (``lengths [B]`` valid frames), each
        frame attending to the valid frames of its own encoder window of ``window`` frames (the
        whole row when ``None``): memory and time grow linearly with a long clip's duration. A
        clip of one window (every training clip) attends across all its frames."""
        batch, time, dim = hidden.shape
        blocks, block_lengths, _ = to_blocks(hidden, lengths, window)
        pad_mask = ~lengths_to_mask(block_lengths, blocks.shape[1])
        # blocks without valid frames would make every key masked; let them attend to themselves
        pad_mask[block_lengths == 0] = False
        out = self.layer(blocks, src_key_padding_mask=pad_mask)
        return out.reshape(batch, -1, dim)[:, :time]

    def effective_ctc_weight(self) -> torch.Tensor:
        """The CTC head's ``[V, D]`` weight, with the trained corrections of the added tokens'
        rows added when ``ctc_added_rows_trainable`` (then a copy of the head: one ``[V, D]``
        tensor per forward, which the factored CTC loss uses like the head itself)."""
        if self.ctc_added_rows is None:
            return self.ctc_head.weight
        rows = self.ctc_added_rows.to(self.ctc_head.weight.dtype)
        return self.ctc_head.weight.index_add(0, self.ctc_added_ids, rows)
