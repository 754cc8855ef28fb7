"""The small state object adapters pass along the chain."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from swv.model.vocab_logits import VocabLogits


@dataclass
class AudioState:
    """Audio representations flowing from the encoder through the adapter chain.

    Attributes:
        embeds: ``[B, T, D]`` frame embeddings; frames at ``t >= lengths[b]`` are padding
            (their values are unspecified and must be ignored via ``lengths``).
        lengths: ``[B]`` int64 number of valid frames per row.
        ctc_logits: ``[B, T_ctc, V]`` CTC logits over the backbone vocabulary, kept factored
            (hidden states + head, never materialised unless a caller asks), if an adapter
            produced them (the alignment adapter does).
        ctc_lengths: ``[B]`` valid lengths of ``ctc_logits``.
        keep_mask: ``[B, T_ctc]`` bool, the frames a shrinking adapter kept.
        aux_losses: named auxiliary losses (scalars) added by adapters. The training stage
            adds each with the weight its recipe's ``losses:`` gives that name (see
            :mod:`swv.train.stages`); the adapter declares the names in ``Adapter.aux_loss_names``.
        encoder_lengths: ``[B]`` valid encoder frames per row before the adapter chain (summed
            over windows), set on the chain's output by ``SpeechLM.encode_audio``.
        num_windows: ``[B]`` encoder windows per row (1 unless a long clip was windowed), set
            by ``SpeechLM.encode_audio``.
        speech_lengths: ``[B]`` how many of the valid frames hold audio (``<= lengths``); less than
            ``lengths`` when the encoder counts padding as valid (Whisper ``pad_to_30s``: the
            padded tail of the 30 s window). ``None``: every valid frame is audio. Adapters that
            change the frame rate map it; paper-semantics attention masks the frames past it.
    """

    embeds: torch.Tensor
    lengths: torch.Tensor
    ctc_logits: VocabLogits | None = None
    ctc_lengths: torch.Tensor | None = None
    keep_mask: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    encoder_lengths: torch.Tensor | None = None
    num_windows: torch.Tensor | None = None
    speech_lengths: torch.Tensor | None = None

    def replace(self, **changes: object) -> AudioState:
        return replace(self, **changes)  # type: ignore[arg-type]

    def padding_mask(self) -> torch.Tensor:
        """``[B, T]`` bool, True on valid frames."""
        return lengths_to_mask(self.lengths, self.embeds.shape[1])

    def speech_mask(self) -> torch.Tensor:
        """``[B, T]`` bool, True on valid frames that hold audio (not encoder padding)."""
        lengths = self.lengths if self.speech_lengths is None else torch.minimum(self.speech_lengths, self.lengths)
        return lengths_to_mask(lengths, self.embeds.shape[1])


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``[B]`` lengths -> ``[B, T]`` bool mask, True where ``t < lengths[b]``."""
    max_len = int(lengths.max().item()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
