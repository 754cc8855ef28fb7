"""The encoder interface every ``encoder`` component implements (contract: docs/plugins.md)."""

from __future__ import annotations

import os
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import save_file
from torch import nn

from swv.core.errors import ComponentError
from swv.nn.state import AudioState


class Encoder(nn.Module, metaclass=ABCMeta):
    """Waveform -> features -> frame embeddings.

    Constructed as ``cls(config)`` by the registry. Subclasses set ``sample_rate`` (Hz of the
    waveforms :meth:`extract_features` expects) and ``output_dim``, and implement
    :meth:`extract_features`, :meth:`output_lengths` and :meth:`encode`; every other member
    has a default. ``feature_time_axis`` is the time axis of the batched ``input_features``
    (``-1`` for Whisper's ``[B, n_mels, T]``, ``1`` for ``[B, T, C]`` layouts; SpecAugment
    masks along it).

    A frozen encoder (the default) runs in eval mode under ``torch.no_grad()`` and reports no
    trainable parameters.
    """

    #: Every member swv's core reads or calls on an encoder (docs/plugins.md lists each one;
    #: tests/test_plugin_docs.py checks this list against the core's code and the doc).
    CORE_MEMBERS: ClassVar[tuple[str, ...]] = (
        "config", "sample_rate", "frame_rate", "output_dim", "extract_features", "output_lengths", "encode",
        "speech_lengths", "feature_time_axis", "max_samples", "fixed_num_frames", "frozen", "identity",
        "needs_bundle", "save_pretrained", "bundled_config", "checkpoint_parts", "feature_extractor", "hub_commit",
        "forward", "train",
    )
    #: Config fields the core reads, or sets, when an encoder's config declares them.
    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("path", "random_init", "revision", "trust_remote_code")

    config_class: ClassVar[type]
    #: The validated config (an instance of the component's registered pydantic model).
    config: BaseModel
    sample_rate: int
    #: ``input_features`` time steps per second of audio (Whisper: 100); sizes frame budgets
    #: such as ``data.max_frames_per_batch``.
    frame_rate: float
    output_dim: int
    feature_time_axis: int = -1
    #: The feature length the encoder insists on (Whisper ``pad_to_30s``: 3000), else ``None``.
    fixed_num_frames: int | None = None
    #: Longest clip, in samples at ``sample_rate``, the encoder takes in one pass (Whisper: 30 s);
    #: longer clips are windowed at inference. ``None``: no limit.
    max_samples: int | None = None
    #: The Hugging Face feature extractor, if any (the default :meth:`save_pretrained` writes it
    #: next to the weights).
    feature_extractor: Any = None
    #: Commit of the Hugging Face Hub snapshot the weights were loaded from (``None`` when not
    #: from the Hub). An export that references the encoder records it as the config's
    #: ``revision``, so the run is reproducible (the config must then have a ``revision`` field).
    hub_commit: str | None = None

    def __init__(self, config: BaseModel) -> None:
        super().__init__()
        self.config = config

    @property
    def frozen(self) -> bool:
        """Whether the encoder stays frozen (no stage may train it). Default: always."""
        return True

    @property
    def needs_bundle(self) -> bool:
        """True when ``cls(config)`` would not rebuild these weights (e.g. a random init), so an
        export must carry a copy (:meth:`save_pretrained` + :meth:`bundled_config`). Default: False."""
        return False

    @abstractmethod
    def extract_features(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono float waveforms at ``sample_rate`` -> (``input_features``, ``feature_lengths`` ``[B]``)."""

    @abstractmethod
    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Number of valid output frames for ``feature_lengths`` valid feature frames."""

    def speech_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Output frames that hold audio for ``feature_lengths`` valid feature frames. Default:
        :meth:`output_lengths`; an encoder that counts padding as valid output (Whisper
        ``pad_to_30s``) returns fewer."""
        return self.output_lengths(feature_lengths)

    @abstractmethod
    def encode(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """``[B, T_out, output_dim]`` frame embeddings (no grad handling; see :meth:`forward`)."""

    def identity(self) -> dict[str, Any]:
        """What determines this encoder's outputs besides its weights (the feature cache is
        rebuilt when it changes). Default: the class and the full config."""
        cls = type(self)
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "config": self.config.model_dump(mode="json")}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write a checkpoint directory that :meth:`bundled_config` loads (used to bundle
        randomly initialised or trained encoders with an exported model). The default writes
        :meth:`checkpoint_parts` in the Hugging Face layout, plus the feature extractor."""
        hf_config, state, prefix = self.checkpoint_parts()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hf_config.save_pretrained(str(directory))
        save_file({prefix + k: v.detach().contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
        if self.feature_extractor is not None:
            self.feature_extractor.save_pretrained(str(directory))

    def checkpoint_parts(self) -> tuple[Any, dict[str, torch.Tensor], str]:
        """``(hf_config, state_dict, key_prefix)`` for the default :meth:`save_pretrained`."""
        raise ComponentError(f"encoder {type(self).__name__} cannot be bundled (it implements no save_pretrained)")

    def bundled_config(self, path: str) -> dict[str, Any]:
        """This encoder's config arguments (JSON values, without ``name``) changed to load the copy
        :meth:`save_pretrained` wrote to ``path``. A relative ``path`` field is resolved against
        the model directory on load."""
        raise ComponentError(f"encoder {type(self).__name__} cannot be bundled (it implements no bundled_config)")

    def forward(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> AudioState:
        if self.frozen:
            self.eval()
            with torch.no_grad():
                embeds = self.encode(input_features, feature_lengths)
        else:
            embeds = self.encode(input_features, feature_lengths)
        lengths = self.output_lengths(feature_lengths).clamp(max=embeds.shape[1]).long()
        speech = torch.minimum(self.speech_lengths(feature_lengths).long().to(lengths.device), lengths)
        return AudioState(embeds=embeds, lengths=lengths, speech_lengths=speech)

    def train(self, mode: bool = True) -> Encoder:
        return super().train(mode and not self.frozen)
