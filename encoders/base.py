"""The encoder interface every ``encoder`` component implements."""

from __future__ import annotations

from collections.abc import Sequence
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from swv.model.state import AudioState


class Encoder(nn.Module):
    """Waveform -> features -> frame embeddings.

    Subclasses set ``sample_rate`` (Hz of the waveforms :meth:`extract_features` expects),
    ``output_dim`` and ``feature_time_axis`` (the time axis of the batched ``input_features``:
    ``-1`` for Whisper's ``[B, n_mels, T]``, ``1`` for ``[B, T, C]`` layouts), and implement
    the four methods below.

    A frozen encoder (the default for every built-in) runs in eval mode under
    ``torch.no_grad()`` and reports no trainable parameters.
    """

    config_class: ClassVar[type]
    sample_rate: int
    #: ``input_features`` time steps per second of audio (Whisper: 100); sizes frame budgets
    #: such as ``data.max_frames_per_batch``.
    frame_rate: float
    output_dim: int
    feature_time_axis: int = -1
    fixed_num_frames: int | None = None  # set when the encoder needs a fixed feature length

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def frozen(self) -> bool:
        return bool(getattr(self.config, "frozen", True))

    def extract_features(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono float waveforms at ``sample_rate`` -> (``input_features``, ``feature_lengths`` ``[B]``)."""
        raise NotImplementedError

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Number of valid output frames for ``feature_lengths`` valid feature frames."""
        raise NotImplementedError

    def encode(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """``[B, T_out, output_dim]`` frame embeddings (no grad handling; see :meth:`forward`)."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What determines this encoder's outputs (checkpoint and feature settings), for caches."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write a checkpoint directory that this encoder's ``path`` option loads (used to bundle
        randomly initialised or trained encoders with an exported model)."""
        hf_config, state, prefix = self.checkpoint_parts()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hf_config.save_pretrained(str(directory))
        save_file({prefix + k: v.detach().contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
        self.feature_extractor.save_pretrained(str(directory))

    def checkpoint_parts(self) -> tuple[Any, dict[str, torch.Tensor], str]:
        """``(hf_config, state_dict, key_prefix)`` for :meth:`save_pretrained`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be bundled")

    def forward(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> AudioState:
        if self.frozen:
            self.eval()
            with torch.no_grad():
                embeds = self.encode(input_features, feature_lengths)
        else:
            embeds = self.encode(input_features, feature_lengths)
        lengths = self.output_lengths(feature_lengths).clamp(max=embeds.shape[1])
        return AudioState(embeds=embeds, lengths=lengths.long())

    def train(self, mode: bool = True) -> Encoder:
        return super().train(mode and not self.frozen)
