"""The Whisper encoder (frozen by default), as Soundwave uses it.

Two input modes:

* ``pad_to_30s`` (the released Soundwave behaviour): every clip is padded to 30 s of log-mel
  features (3000 frames) and the encoder runs exactly like transformers' ``WhisperEncoder``;
  all 1500 output frames count as valid, the padded tail included.
* ``trim``: a batch is padded only to its longest clip and the encoder's submodules run on the
  shorter sequence with a padding mask, so a clip's valid frames do not depend on what else is
  in the batch (and a full 30 s clip gives exactly the ``pad_to_30s`` result).

Checkpoints: a full Whisper checkpoint (``WhisperModel`` / ``WhisperForConditionalGeneration``
``save_pretrained`` output) or an encoder-only directory (``WhisperEncoder.save_pretrained``),
optionally with ``preprocessor_config.json``. The state dict is read here (safetensors; legacy
``pytorch_model.bin`` with ``torch.load(weights_only=True)``) and loaded strictly.

Shapes: ``B`` batch, ``M`` mel bins, ``F`` feature frames (100 per second), ``T`` output frames
(50 per second), ``D`` ``d_model``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import WhisperConfig as HFWhisperConfig
from transformers import WhisperFeatureExtractor
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import (
    WhisperEncoder as HFWhisperEncoder,
)

from swv.core.errors import ComponentError, InputError, first_line
from swv.encoders.loading import (
    CheckpointEncoder,
    CheckpointEncoderConfig,
    as_waveforms,
    build_hf_config,
    load_feature_extractor,
    load_state_dict_strict,
    read_config_json,
    read_state_dict,
)
from swv.nn.state import lengths_to_mask


# ---------------------------------------------------------------------------------------------
# Component
# ---------------------------------------------------------------------------------------------
class WhisperConfig(CheckpointEncoderConfig):
    """Config of the ``whisper`` encoder.

    Exactly one of ``path`` (a checkpoint directory or hub id: full Whisper or encoder-only) and
    ``random_init`` (``transformers.WhisperConfig`` kwargs for a randomly initialised encoder).
    ``dtype`` casts the encoder weights (``None`` keeps float32).
    """

    path_hint: ClassVar[str] = "a Whisper checkpoint directory or hub id"
    random_init_hint: ClassVar[str] = "transformers WhisperConfig kwargs"

    mode: Literal["pad_to_30s", "trim"] = "pad_to_30s"


class WhisperEncoder(CheckpointEncoder):
    """Whisper's audio encoder: 16 kHz waveform -> log-mel ``[B, M, F]`` -> ``[B, T, D]``.

    Attributes: ``whisper`` (the transformers ``WhisperEncoder``; state-dict keys
    ``whisper.conv1.weight``, ...), ``feature_extractor`` (``WhisperFeatureExtractor``),
    ``checkpoint_dir`` (``None`` for ``random_init``).
    """

    config_class: ClassVar[type[WhisperConfig]] = WhisperConfig
    feature_time_axis = -1
    _what = "Whisper encoder"

    def __init__(self, config: WhisperConfig) -> None:
        if not isinstance(config, WhisperConfig):
            config = WhisperConfig.model_validate(config)
        super().__init__(config)
        if config.random_init is not None:
            hf_config = build_hf_config(HFWhisperConfig, dict(config.random_init), "encoder.random_init")
            self.whisper = HFWhisperEncoder(hf_config)
            self.feature_extractor = WhisperFeatureExtractor(feature_size=hf_config.num_mel_bins)
        else:
            directory = self._resolve_path()
            self.whisper = self._load_checkpoint(directory)
            self.feature_extractor = self._load_feature_extractor(directory)
        hf_config = self.whisper.config
        fe = self.feature_extractor
        if fe.feature_size != hf_config.num_mel_bins:
            raise InputError(
                f"encoder.path: {self.checkpoint_dir}/preprocessor_config.json has feature_size={fe.feature_size} "
                f"but the encoder expects num_mel_bins={hf_config.num_mel_bins}"
            )
        self.sample_rate = int(fe.sampling_rate)
        self.hop_length = int(fe.hop_length)
        self.frame_rate = self.sample_rate / self.hop_length
        self.output_dim = int(hf_config.d_model)
        self.max_source_positions = int(hf_config.max_source_positions)
        #: The feature length the transformers encoder insists on (3000 for every Whisper).
        self.max_feature_frames = (
            self.max_source_positions * self.whisper.conv1.stride[0] * self.whisper.conv2.stride[0]
        )
        #: Longest clip in samples: 30 s, or less when the encoder's positions cover less.
        self.max_samples = min(int(fe.n_samples), self.max_feature_frames * self.hop_length)
        if config.mode == "pad_to_30s":
            if int(fe.nb_max_frames) != self.max_feature_frames:
                raise ComponentError(
                    f"encoder.mode: pad_to_30s needs {fe.nb_max_frames} feature frames but this encoder takes "
                    f"{self.max_feature_frames} (max_source_positions={self.max_source_positions}); use mode: trim"
                )
            self.fixed_num_frames = self.max_feature_frames
        self._finish_loading(self.whisper)

    # -- loading ------------------------------------------------------------------------------
    def _load_checkpoint(self, directory: Path) -> HFWhisperEncoder:
        data = read_config_json(directory, "encoder.path")
        model_type = data.get("model_type")
        if model_type != "whisper":
            raise ComponentError(
                f"encoder.path: {directory}/config.json has model_type {model_type!r}; the whisper encoder needs a "
                "'whisper' checkpoint"
            )
        try:
            hf_config = HFWhisperConfig.from_dict(data)
        except (TypeError, ValueError, StrictDataclassError) as error:
            raise InputError(f"{directory}/config.json: invalid WhisperConfig ({first_line(error)})") from error
        whisper = HFWhisperEncoder(hf_config)
        prefix, state = read_state_dict(directory, ("model.encoder.", "encoder.", ""), "conv1.weight", self._what)
        load_state_dict_strict(whisper, state, directory, prefix, self._what)
        return whisper

    def _load_feature_extractor(self, directory: Path) -> WhisperFeatureExtractor:
        return load_feature_extractor(
            directory,
            WhisperFeatureExtractor,
            lambda: WhisperFeatureExtractor(feature_size=self.whisper.config.num_mel_bins),
        )

    # -- features -----------------------------------------------------------------------------
    def extract_features(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz waveforms -> (``input_features`` ``[B, M, F]`` float32, ``feature_lengths`` ``[B]``).

        ``pad_to_30s``: ``F = 3000``. ``trim``: ``F`` = the longest clip's frame count rounded up
        to even. Either way each row equals what transformers' extractor gives for that clip
        padded to 30 s with silence (cropped to ``F`` in trim mode), so rows never depend on
        the rest of the batch. ``feature_lengths[b] = samples // hop_length`` (at least 1).
        Clips longer than 30 s raise :class:`InputError` (callers window them).
        """
        waves = as_waveforms(waveforms, self.sample_rate)
        num_samples = np.array([w.shape[0] for w in waves])
        too_long = np.flatnonzero(num_samples > self.max_samples)
        if too_long.size:
            index = int(too_long[0])
            raise InputError(
                f"waveform {index}: {num_samples[index] / self.sample_rate:.2f} s is longer than the Whisper encoder's "
                f"{self.max_samples / self.sample_rate:g} s window; split long audio before encoding"
            )
        lengths = torch.from_numpy(np.clip(num_samples // self.hop_length, 1, self.max_feature_frames)).long()
        fe = self.feature_extractor
        if self.config.mode == "pad_to_30s":
            padded_samples = int(fe.n_samples)
            num_frames = self.max_feature_frames
        else:
            # Zero-pad past the longest clip by n_fft samples so that every frame touching a
            # clip sees silence after it (as in 30 s padding), never STFT reflection padding.
            padded_samples = min(int(fe.n_samples), int(num_samples.max()) + int(fe.n_fft))
            longest = int(lengths.max())
            num_frames = min(longest + longest % 2, self.max_feature_frames)
        batch = fe(
            waves,
            sampling_rate=self.sample_rate,
            padding="max_length",
            max_length=padded_samples,
            truncation=False,
            return_tensors="np",
        )
        features = torch.from_numpy(np.asarray(batch["input_features"], dtype=np.float32))
        return features[..., :num_frames].contiguous(), lengths

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames: conv1 (stride 1) then conv2 (kernel 3, stride 2, padding 1),
        ``(L - 1) // 2 + 1``, in trim mode; in ``pad_to_30s`` mode all ``max_source_positions``
        frames (1500) count, as in the released Soundwave."""
        feature_lengths = torch.as_tensor(feature_lengths)
        if self.config.mode == "pad_to_30s":
            return torch.full_like(feature_lengths, self.max_source_positions, dtype=torch.long)
        return self.speech_lengths(feature_lengths)

    def speech_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Output frames of the clip itself, ``(L - 1) // 2 + 1``, in both modes (in
        ``pad_to_30s`` the frames past it are the 30 s window's padding)."""
        lengths = (torch.as_tensor(feature_lengths).long() - 1) // 2 + 1
        return lengths.clamp(min=0, max=self.max_source_positions)

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """``input_features`` ``[B, M, F]``, ``feature_lengths`` ``[B]`` -> ``[B, T, D]``."""
        param = self.whisper.conv1.weight
        input_features = input_features.to(device=param.device, dtype=param.dtype)
        if input_features.dim() != 3 or input_features.shape[1] != self.whisper.config.num_mel_bins:
            raise InputError(
                f"input_features: expected shape [B, {self.whisper.config.num_mel_bins}, F], "
                f"got {tuple(input_features.shape)}"
            )
        num_frames = input_features.shape[-1]
        if self.config.mode == "pad_to_30s":
            if num_frames != self.max_feature_frames:
                raise InputError(
                    f"input_features: pad_to_30s mode needs exactly {self.max_feature_frames} frames, got {num_frames}"
                )
            return self.whisper(input_features).last_hidden_state
        if num_frames > self.max_feature_frames:
            raise InputError(f"input_features: at most {self.max_feature_frames} frames (30 s), got {num_frames}")
        return self._encode_trimmed(input_features, feature_lengths.to(param.device))

    def _encode_trimmed(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """The transformers encoder's computation on ``F <= 3000`` frames with padding masked.

        Frames at ``t >= feature_lengths[b]`` are zeroed before each convolution (so the convs
        see the same zero padding as for the clip alone) and excluded as attention keys.
        """
        whisper = self.whisper
        feature_mask = lengths_to_mask(feature_lengths, input_features.shape[-1])[:, None, :]  # [B, 1, F]
        feature_mask = feature_mask.to(input_features.dtype)
        hidden = nn.functional.gelu(whisper.conv1(input_features * feature_mask))  # [B, D, F]
        hidden = nn.functional.gelu(whisper.conv2(hidden * feature_mask))  # [B, D, T]
        hidden = hidden.permute(0, 2, 1)  # [B, T, D]
        num_out = hidden.shape[1]
        hidden = hidden + whisper.embed_positions.weight[:num_out]
        hidden = nn.functional.dropout(hidden, p=whisper.dropout, training=whisper.training)
        valid = lengths_to_mask(self.output_lengths(feature_lengths), num_out)  # [B, T]
        attention_mask = create_bidirectional_mask(config=whisper.config, inputs_embeds=hidden, attention_mask=valid)
        for layer in whisper.layers:
            if whisper.training and whisper.layerdrop > 0.0 and torch.rand([]) < whisper.layerdrop:
                continue
            hidden = layer(hidden, attention_mask)
        return whisper.layer_norm(hidden)

    def checkpoint_parts(self) -> tuple[Any, dict[str, torch.Tensor], str]:
        """An encoder-only Whisper checkpoint (keys without prefix)."""
        return self.whisper.config, self.whisper.state_dict(), ""

    def identity(self) -> dict[str, Any]:
        fe = self.feature_extractor
        return {
            "encoder": "whisper",
            "checkpoint": self.checkpoint_identity(),
            "mode": self.config.mode,
            "num_mel_bins": int(self.whisper.config.num_mel_bins),
            "sampling_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "n_fft": int(fe.n_fft),
            "dtype": self.config.dtype or "float32",
        }
