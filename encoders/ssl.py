"""Self-supervised speech encoders of transformers (frozen by default): wav2vec 2.0, HuBERT,
WavLM, data2vec-audio, or any checkpoint ``transformers.AutoModel`` builds into a model of the
same kind (a convolutional feature encoder over the raw waveform, then Transformer layers).

Checkpoints: base-model checkpoints (``Wav2Vec2Model.save_pretrained``; keys
``feature_extractor.*``, ``encoder.*``) or pre-training / fine-tuned ones whose base model sits
under the class's ``base_model_prefix`` (``wav2vec2.*``, ``hubert.*``, ``wavlm.*``,
``data2vec_audio.*``; heads are not loaded). Weights are read by :mod:`swv.encoders.loading`
and loaded strictly; the weight-norm keys of older checkpoints (``weight_g``/``weight_v``) are
mapped to the parametrised names. ``trust_remote_code`` (off by default) lets transformers run
a checkpoint's own modelling code.

Features: the checkpoint's ``AutoFeatureExtractor`` (``Wav2Vec2FeatureExtractor``: each clip
normalised on its own valid samples, zero padding), so ``input_features`` is the waveform
``[B, S]``. Models whose feature encoder uses group norm (``feat_extract_norm: group``,
wav2vec2-base style) get no attention mask, as transformers documents for them: their batched
outputs depend on the padding, as in transformers. Every other model gets one, and a clip's
valid frames do not depend on the batch (except data2vec-audio's last few frames: its stacked
positional convolutions let the padding through, as in transformers).

``layer`` picks ``hidden_states[layer]`` in transformers' numbering (``0``: the projected
features before the first Transformer layer, ``k``: the output of layer ``k``; ``-1``, the
default: the last entry). SpecAugment inside the model is disabled.

Shapes: ``B`` batch, ``S`` samples (16 kHz), ``T`` output frames (50 per second for the usual
conv stack), ``D`` hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from pydantic import model_validator
from transformers import CONFIG_MAPPING, AutoConfig, AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

from swv.core.errors import ComponentError, InputError, first_line
from swv.encoders.loading import (
    CheckpointEncoder,
    CheckpointEncoderConfig,
    as_waveforms,
    build_hf_config,
    load_state_dict_strict,
    normalise_layer,
    read_state_dict,
    without_spec_augment,
)
from swv.nn.state import lengths_to_mask

#: Weight-norm parameter names of checkpoints saved before torch's parametrisations.
_LEGACY_WEIGHT_NORM = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


class SSLConfig(CheckpointEncoderConfig):
    """Config of the ``ssl`` encoder.

    Exactly one of ``path`` (a checkpoint directory or hub id) and ``random_init`` (a
    ``model_type`` such as ``wav2vec2``, ``hubert``, ``wavlm`` or ``data2vec-audio`` plus that
    transformers config's kwargs, for a randomly initialised encoder).
    """

    path_hint: ClassVar[str] = "a wav2vec2 / HuBERT / WavLM / data2vec-audio checkpoint directory or hub id"
    random_init_hint: ClassVar[str] = "model_type plus transformers config kwargs"

    #: ``hidden_states`` index to output (``-1``: the last).
    layer: int = -1
    #: Let transformers run the checkpoint's own Python code (only for checkpoints you trust).
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check_ssl_source(self) -> SSLConfig:
        if self.path is None and self.trust_remote_code:
            raise ValueError("'trust_remote_code' applies to a checkpoint 'path', not to 'random_init'")
        if self.random_init is not None and not isinstance(self.random_init.get("model_type"), str):
            raise ValueError("'random_init' needs a 'model_type' (e.g. wav2vec2, hubert, wavlm, data2vec-audio)")
        return self


class SSLEncoder(CheckpointEncoder):
    """Waveform ``[B, S]`` -> ``hidden_states[layer]`` ``[B, T, D]``.

    Attributes: ``model`` (the transformers base model; state-dict keys ``model.*``),
    ``feature_extractor``, ``conv_layers`` (``(kernel, stride)`` of the feature encoder's
    convolutions), ``uses_attention_mask``, ``layer`` (normalised to ``0..num_layers``),
    ``checkpoint_dir`` (``None`` for ``random_init``).
    """

    config_class: ClassVar[type[SSLConfig]] = SSLConfig
    feature_time_axis = -1
    _what = "speech encoder"

    def __init__(self, config: SSLConfig) -> None:
        if not isinstance(config, SSLConfig):
            config = SSLConfig.model_validate(config)
        super().__init__(config)
        if config.random_init is not None:
            self.model = self._build(self._random_config(dict(config.random_init)), "encoder.random_init")
        else:
            self.model = self._load_checkpoint(self._resolve_path(code=config.trust_remote_code))
        hf = self.model.config.to_dict()
        self.conv_layers = self._conv_geometry(hf)
        self.uses_attention_mask = hf.get("feat_extract_norm") != "group"
        self.feature_extractor = self._feature_extractor()
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.frame_rate = float(self.sample_rate)  # input_features are samples
        self.min_samples = self._min_samples()
        self.num_layers = int(hf["num_hidden_layers"])
        self.layer = normalise_layer(config.layer, self.num_layers)
        self.output_dim = int(hf["hidden_size"])
        self._finish_loading(self.model)

    # -- loading ------------------------------------------------------------------------------
    @staticmethod
    def _random_config(kwargs: dict[str, Any]) -> Any:
        model_type = kwargs.pop("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ComponentError(f"encoder.random_init: unknown transformers model_type {model_type!r}")
        return build_hf_config(CONFIG_MAPPING[model_type], kwargs, "encoder.random_init")

    def _build(self, hf_config: Any, field: str) -> Any:
        """The transformers base model for ``hf_config`` (random weights), SpecAugment off."""
        try:
            return AutoModel.from_config(without_spec_augment(hf_config), trust_remote_code=self.config.trust_remote_code)
        except (TypeError, ValueError, KeyError) as error:
            raise ComponentError(f"{field}: transformers cannot build a model from this config ({first_line(error)})") from error

    def _load_checkpoint(self, directory: Path) -> Any:
        trust = self.config.trust_remote_code
        try:
            hf_config = AutoConfig.from_pretrained(str(directory), trust_remote_code=trust, local_files_only=True)
        except (OSError, TypeError, ValueError, KeyError, StrictDataclassError) as error:
            raise InputError(
                f"encoder.path: {directory}/config.json: not a loadable transformers config ({first_line(error)})"
            ) from error
        model = self._build(hf_config, "encoder.path")
        prefixes = ("", model.base_model_prefix + ".")
        anchor = next(iter(model.state_dict()))
        prefix, state = read_state_dict(directory, prefixes, anchor, self._what)
        state = {_modern_key(key): value for key, value in state.items()}
        load_state_dict_strict(model, state, directory, prefix, self._what, ignore=lambda key: key == "masked_spec_embed")
        return model

    def _feature_extractor(self) -> Any:
        """The checkpoint's ``preprocessor_config.json`` through ``AutoFeatureExtractor``, else a
        16 kHz ``Wav2Vec2FeatureExtractor`` (normalising; attention mask as the model takes)."""
        directory = self.checkpoint_dir
        if directory is None or not (directory / "preprocessor_config.json").is_file():
            return Wav2Vec2FeatureExtractor(return_attention_mask=self.uses_attention_mask)
        try:
            return AutoFeatureExtractor.from_pretrained(str(directory), trust_remote_code=self.config.trust_remote_code)
        except (OSError, TypeError, ValueError, KeyError) as error:
            raise InputError(
                f"{directory}/preprocessor_config.json: not a usable feature extractor ({first_line(error)})"
            ) from error

    @staticmethod
    def _conv_geometry(hf: dict[str, Any]) -> list[tuple[int, int]]:
        kernels, strides = hf.get("conv_kernel"), hf.get("conv_stride")
        if not kernels or not strides or len(kernels) != len(strides):
            raise ComponentError(
                f"encoder: model_type {hf.get('model_type')!r} has no convolutional feature encoder (config conv_kernel/"
                "conv_stride); the ssl encoder takes wav2vec2-style models (wav2vec2, hubert, wavlm, data2vec-audio)"
            )
        return [(int(k), int(s)) for k, s in zip(kernels, strides, strict=True)]

    # -- lengths ------------------------------------------------------------------------------
    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Frames of the conv feature encoder for ``feature_lengths`` samples: per convolution
        (no padding), ``(L - kernel) // stride + 1``; the Transformer layers keep the rate."""
        lengths = torch.as_tensor(feature_lengths).long()
        for kernel, stride in self.conv_layers:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def _min_samples(self) -> int:
        """The fewest samples that give one output frame (the feature encoder's receptive field)."""
        need = 1
        for kernel, stride in reversed(self.conv_layers):
            need = (need - 1) * stride + kernel
        return need

    # -- features -----------------------------------------------------------------------------
    def extract_features(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono waveforms -> (``input_features`` ``[B, S]`` float32, ``feature_lengths`` ``[B]`` samples)."""
        waves = as_waveforms(waveforms, self.sample_rate, min_samples=self.min_samples, encoder="ssl")
        # the mask makes the extractor normalise each clip over its own samples only
        batch = self.feature_extractor(
            waves, sampling_rate=self.sample_rate, padding=True, return_attention_mask=True, return_tensors="np"
        )
        features = torch.from_numpy(np.asarray(batch["input_values"], dtype=np.float32))
        lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
        return features, lengths

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """``input_features`` ``[B, S]``, ``feature_lengths`` ``[B]`` -> ``[B, T, D]``."""
        if input_features.dim() != 2:
            raise InputError(f"input_features: expected a [B, S] waveform batch, got shape {tuple(input_features.shape)}")
        param = next(self.model.parameters())
        values = input_features.to(device=param.device, dtype=param.dtype)
        valid = lengths_to_mask(feature_lengths.to(param.device), values.shape[1])
        values = values.masked_fill(~valid, 0.0)
        mask = valid.long() if self.uses_attention_mask else None
        out = self.model(values, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[self.layer]

    def checkpoint_parts(self) -> tuple[Any, dict[str, torch.Tensor], str]:
        """A base-model checkpoint (keys without prefix)."""
        return self.model.config, self.model.state_dict(), ""

    def identity(self) -> dict[str, Any]:
        return {
            "encoder": "ssl",
            "checkpoint": self.checkpoint_identity(),
            "model_type": self.model.config.model_type,
            "layer": self.layer,
            "attention_mask": self.uses_attention_mask,
            "sampling_rate": self.sample_rate,
            "feature_extractor": self.feature_extractor.to_dict(),
            "dtype": self.config.dtype or "float32",
        }


def _modern_key(key: str) -> str:
    for old, new in _LEGACY_WEIGHT_NORM.items():
        if key.endswith(old):
            return key[: -len(old)] + new
    return key
