"""The w2v-BERT 2.0 speech encoder of SeamlessM4T v2 (frozen by default).

Checkpoints:

* ``Wav2Vec2BertModel`` checkpoints in the format of ``facebook/w2v-bert-2.0`` (keys
  ``feature_projection.*``, ``encoder.layers.*``; fine-tuned heads' ``wav2vec2_bert.*`` prefix is
  accepted too), run through transformers' ``Wav2Vec2BertModel`` modules;
* full SeamlessM4T v2 checkpoints (``SeamlessM4Tv2Model`` / ``...ForSpeechToText`` /
  ``...ForSpeechToSpeech``; keys ``speech_encoder.*``), whose speech encoder runs through
  transformers' ``SeamlessM4Tv2SpeechEncoder`` modules, length adaptor included (8x shorter
  output) unless ``layer`` is set.

Features come from ``SeamlessM4TFeatureExtractor``: 80-bin Kaldi fbanks normalised per clip,
stacked by 2 -> ``[B, T, 160]`` at 50 frames per second. The encoder keeps that rate (the
Conformer does not downsample), except for a length adaptor (``add_adapter``) when the output is
its last hidden state. SpecAugment inside the encoder is disabled: the component is a
deterministic feature encoder, and checkpoints' ``masked_spec_embed`` is not used.

``layer`` selects ``hidden_states[layer]`` in transformers' numbering (0 = the projected
features, ``k`` = the output of Conformer layer ``k``, no final norm or adaptor); the layers
above it are dropped at load time, so they cost neither memory nor compute.

Shapes: ``B`` batch, ``T`` feature frames (50 per second), ``C`` feature channels (160),
``T'`` output frames, ``D`` output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import (
    SeamlessM4TFeatureExtractor,
    SeamlessM4Tv2Config,
    Wav2Vec2BertConfig,
    Wav2Vec2BertModel,
)
from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import (
    SeamlessM4Tv2SpeechEncoder,
)

from swv.core.errors import ComponentError, InputError, first_line
from swv.encoders.loading import (
    CheckpointEncoder,
    CheckpointEncoderConfig,
    as_waveforms,
    build_hf_config,
    load_feature_extractor,
    load_state_dict_strict,
    normalise_layer,
    read_config_json,
    read_state_dict,
    without_spec_augment,
)
from swv.nn.state import lengths_to_mask

_W2V_BERT = "wav2vec2-bert"
_M4T_V2 = "seamless_m4t_v2"
_ANCHOR = "feature_projection.projection.weight"
#: Kaldi fbank frames are 25 ms (400 samples at 16 kHz) every 10 ms; two are stacked per frame.
_FRAME_SAMPLES = 400
_HOP_SAMPLES = 160


class SeamlessConfig(CheckpointEncoderConfig):
    """Config of the ``seamless`` encoder.

    Exactly one of ``path`` (a w2v-BERT 2.0 or SeamlessM4T v2 checkpoint directory or hub id)
    and ``random_init`` (``transformers.Wav2Vec2BertConfig`` kwargs for a randomly initialised
    encoder). ``layer``: use ``hidden_states[layer]`` instead of the last hidden state
    (``0..num_layers``, negative values count from the end as in Python).
    """

    path_hint: ClassVar[str] = "a w2v-BERT 2.0 / SeamlessM4T v2 checkpoint directory or hub id"
    random_init_hint: ClassVar[str] = "transformers Wav2Vec2BertConfig kwargs"

    layer: int | None = None


class SeamlessEncoder(CheckpointEncoder):
    """w2v-BERT 2.0 Conformer: 16 kHz waveform -> fbank ``[B, T, C]`` -> ``[B, T', D]``.

    Attributes: ``speech_encoder`` (transformers ``Wav2Vec2BertModel`` or
    ``SeamlessM4Tv2SpeechEncoder``), ``architecture`` (``"wav2vec2-bert"`` or
    ``"seamless_m4t_v2"``), ``feature_extractor`` (``SeamlessM4TFeatureExtractor``), ``layer``
    (normalised to ``0..num_layers`` or ``None``), ``checkpoint_dir``.
    """

    config_class: ClassVar[type[SeamlessConfig]] = SeamlessConfig
    feature_time_axis = 1
    _what = "speech encoder"

    def __init__(self, config: SeamlessConfig) -> None:
        if not isinstance(config, SeamlessConfig):
            config = SeamlessConfig.model_validate(config)
        super().__init__(config)
        if config.random_init is not None:
            hf_config = build_hf_config(Wav2Vec2BertConfig, dict(config.random_init), "encoder.random_init")
            self.architecture = _W2V_BERT
            self.speech_encoder: Wav2Vec2BertModel | SeamlessM4Tv2SpeechEncoder = Wav2Vec2BertModel(
                without_spec_augment(hf_config)
            )
            self.feature_extractor = self._default_feature_extractor()
        else:
            directory = self._resolve_path()
            self.architecture, self.speech_encoder = self._load_checkpoint(directory)
            self.feature_extractor = self._load_feature_extractor(directory)
        hf_config = self.speech_encoder.config
        fe = self.feature_extractor
        if fe.num_mel_bins * fe.stride != hf_config.feature_projection_input_dim:
            raise InputError(
                f"encoder.path: the feature extractor gives {fe.num_mel_bins} x {fe.stride} = "
                f"{fe.num_mel_bins * fe.stride} channels but the encoder expects feature_projection_input_dim="
                f"{hf_config.feature_projection_input_dim}"
            )
        self.sample_rate = int(fe.sampling_rate)
        self.min_samples = _FRAME_SAMPLES + (fe.stride - 1) * _HOP_SAMPLES
        self.frame_rate = self.sample_rate / (_HOP_SAMPLES * fe.stride)  # stacked frames
        self.num_layers = len(self._conformer_layers())
        self.layer = self._check_layer(config.layer)
        if self.layer is not None:
            self._drop_above(self.layer)
        self.output_dim = int(self._output_size())
        self._finish_loading(self.speech_encoder)

    # -- loading ------------------------------------------------------------------------------
    def _load_checkpoint(self, directory: Path) -> tuple[str, Wav2Vec2BertModel | SeamlessM4Tv2SpeechEncoder]:
        """``(architecture, module)`` with the checkpoint's weights loaded strictly."""
        data = read_config_json(directory, "encoder.path")
        model_type = data.get("model_type")
        if model_type == "seamless_m4t":
            raise ComponentError(
                f"encoder.path: {directory} is a SeamlessM4T v1 checkpoint; the seamless encoder takes w2v-BERT 2.0 "
                "(model_type 'wav2vec2-bert') or SeamlessM4T v2 (model_type 'seamless_m4t_v2') checkpoints"
            )
        if model_type not in (_W2V_BERT, _M4T_V2):
            raise ComponentError(
                f"encoder.path: {directory}/config.json has model_type {model_type!r}; the seamless encoder needs "
                f"{_W2V_BERT!r} (w2v-BERT 2.0) or {_M4T_V2!r} (SeamlessM4T v2)"
            )
        config_cls = Wav2Vec2BertConfig if model_type == _W2V_BERT else SeamlessM4Tv2Config
        try:
            hf_config = without_spec_augment(config_cls.from_dict(data))
        except (TypeError, ValueError, StrictDataclassError) as error:
            raise InputError(f"{directory}/config.json: invalid {config_cls.__name__} ({first_line(error)})") from error
        if model_type == _W2V_BERT:
            model: Wav2Vec2BertModel | SeamlessM4Tv2SpeechEncoder = Wav2Vec2BertModel(hf_config)
            prefixes: tuple[str, ...] = ("", "wav2vec2_bert.")
        else:
            model = SeamlessM4Tv2SpeechEncoder(hf_config)
            prefixes = ("speech_encoder.",)
        prefix, state = read_state_dict(directory, prefixes, _ANCHOR, self._what)
        load_state_dict_strict(
            model, state, directory, prefix, self._what, ignore=lambda key: key == "masked_spec_embed"
        )
        return model_type, model

    def _default_feature_extractor(self) -> SeamlessM4TFeatureExtractor:
        dim = int(self.speech_encoder.config.feature_projection_input_dim)
        stride = 2
        if dim % stride:
            raise ComponentError(
                f"encoder: feature_projection_input_dim={dim} is not {stride} x a number of mel bins; add a "
                "preprocessor_config.json to the checkpoint"
            )
        return SeamlessM4TFeatureExtractor(feature_size=dim // stride, num_mel_bins=dim // stride, stride=stride)

    def _load_feature_extractor(self, directory: Path) -> SeamlessM4TFeatureExtractor:
        return load_feature_extractor(directory, SeamlessM4TFeatureExtractor, self._default_feature_extractor)

    # -- structure ----------------------------------------------------------------------------
    @property
    def _is_m4t(self) -> bool:
        return self.architecture == _M4T_V2

    def _conformer_layers(self) -> nn.ModuleList:
        return self.speech_encoder.encoder.layers

    def _check_layer(self, layer: int | None) -> int | None:
        return None if layer is None else normalise_layer(layer, self.num_layers)

    def _drop_above(self, layer: int) -> None:
        """Keep Conformer layers ``< layer`` and nothing after them (final norm, FFN, adaptor)."""
        model = self.speech_encoder
        model.encoder.layers = model.encoder.layers[:layer]
        model.intermediate_ffn = None
        model.adapter = None
        if self._is_m4t:
            model.encoder.layer_norm = nn.Identity()
            model.inner_layer_norm = nn.Identity()

    def _uses_adapter(self) -> bool:
        return self.layer is None and self.speech_encoder.adapter is not None

    def _adapter_geometry(self) -> tuple[int, int, int]:
        """``(kernel_size, stride, num_layers)`` of the length adaptor."""
        cfg = self.speech_encoder.config
        if self._is_m4t:
            return int(cfg.adaptor_kernel_size), int(cfg.adaptor_stride), int(cfg.num_adapter_layers)
        return int(cfg.adapter_kernel_size), int(cfg.adapter_stride), int(cfg.num_adapter_layers)

    def _output_size(self) -> int:
        cfg = self.speech_encoder.config
        if self._uses_adapter() and not self._is_m4t and cfg.output_hidden_size is not None:
            return int(cfg.output_hidden_size)
        return int(cfg.hidden_size)

    # -- features -----------------------------------------------------------------------------
    def extract_features(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz waveforms -> (``input_features`` ``[B, T, C]`` float32, ``feature_lengths`` ``[B]``).

        Each clip is normalised on its own, so a row does not depend on the rest of the batch;
        ``T`` is the longest clip's stacked frame count (rounded up to even by the extractor).
        """
        waves = as_waveforms(waveforms, self.sample_rate, min_samples=self.min_samples, encoder="seamless")
        batch = self.feature_extractor(
            waves,
            sampling_rate=self.sample_rate,
            padding=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        features = torch.from_numpy(np.asarray(batch["input_features"], dtype=np.float32))
        lengths = torch.from_numpy(np.asarray(batch["attention_mask"])).long().sum(dim=-1)
        return features, lengths

    def _adapter_step(self, lengths: torch.Tensor) -> torch.Tensor:
        kernel, stride, _ = self._adapter_geometry()
        return (lengths + 2 * (kernel // 2) - kernel) // stride + 1

    def output_lengths(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """The feature lengths (the Conformer keeps the frame rate); with a length adaptor in use,
        ``(L + 2 * (kernel // 2) - kernel) // stride + 1`` per adaptor layer."""
        lengths = torch.as_tensor(feature_lengths).long()
        if self._uses_adapter():
            for _ in range(self._adapter_geometry()[2]):
                lengths = self._adapter_step(lengths)
        return lengths

    # -- encoder ------------------------------------------------------------------------------
    def encode(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """``input_features`` ``[B, T, C]``, ``feature_lengths`` ``[B]`` -> ``[B, T', D]``."""
        model = self.speech_encoder
        param = model.feature_projection.projection.weight
        expected = int(model.config.feature_projection_input_dim)
        if input_features.dim() != 3 or input_features.shape[-1] != expected:
            raise InputError(f"input_features: expected shape [B, T, {expected}], got {tuple(input_features.shape)}")
        features = input_features.to(device=param.device, dtype=param.dtype)
        lengths = feature_lengths.to(param.device).long()
        attention_mask = lengths_to_mask(lengths, features.shape[1]).long()  # [B, T]
        if self._is_m4t:
            hidden = model.feature_projection(features)
            hidden = model.encoder(hidden, attention_mask=attention_mask)
        else:
            hidden, _ = model.feature_projection(features)
            hidden = model.encoder(hidden, attention_mask=attention_mask).last_hidden_state
        if self.layer is not None:
            return hidden
        if model.intermediate_ffn is not None:
            hidden = hidden + 0.5 * model.intermediate_ffn(hidden)
        if model.adapter is not None:
            hidden = self._run_adapter(hidden, lengths)
        if self._is_m4t:
            hidden = model.inner_layer_norm(hidden)
        return hidden

    def _run_adapter(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """transformers' length adaptor layers, with padded frames zeroed before each layer so
        its strided convolutions see the same zero padding as for the clip alone (transformers
        zeroes them only before the Conformer). Each layer gets the mask of its own input length
        (transformers gives every SeamlessM4T v2 adaptor layer the input mask, which differs only
        when there is more than one adaptor layer; released checkpoints have one)."""
        adapter = self.speech_encoder.adapter
        if not self._is_m4t and adapter.proj is not None:
            hidden = adapter.proj_layer_norm(adapter.proj(hidden))
        for layer in adapter.layers:
            valid = lengths_to_mask(lengths, hidden.shape[1])  # [B, T]
            hidden = hidden.masked_fill(~valid[..., None], 0.0)
            next_lengths = self._adapter_step(lengths)
            if self._is_m4t:
                hidden = layer(hidden, attention_mask=valid.long())
            else:
                hidden = layer(hidden, attention_mask=valid.long(), sub_sampled_lengths=next_lengths)
            lengths = next_lengths
        return hidden

    def checkpoint_parts(self) -> tuple[Any, dict[str, torch.Tensor], str]:
        if self.layer is not None:
            raise ComponentError("a seamless encoder truncated with 'layer' cannot be bundled; reference its checkpoint path instead")
        prefix = "" if self.architecture == _W2V_BERT else "speech_encoder."
        return self.speech_encoder.config, self.speech_encoder.state_dict(), prefix

    def identity(self) -> dict[str, Any]:
        fe = self.feature_extractor
        return {
            "encoder": "seamless",
            "checkpoint": self.checkpoint_identity(),
            "architecture": self.architecture,
            "layer": self.layer,
            "num_mel_bins": int(fe.num_mel_bins),
            "stride": int(fe.stride),
            "sampling_rate": self.sample_rate,
            "dtype": self.config.dtype or "float32",
        }
