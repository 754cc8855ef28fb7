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

The checkpoint helpers at the top of this file (:func:`resolve_checkpoint_dir`,
:func:`read_config_json`, :func:`read_state_dict`, :func:`load_state_dict_strict`) are shared
by the other built-in encoders.

Shapes: ``B`` batch, ``M`` mel bins, ``F`` feature frames (100 per second), ``T`` output frames
(50 per second), ``D`` ``d_model``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from pydantic import model_validator
from torch import nn
from transformers import WhisperFeatureExtractor
from transformers import WhisperConfig as HFWhisperConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from swv.config import ComponentConfig
from swv.encoders.base import Encoder
from swv.errors import ComponentError, InputError
from swv.model.state import lengths_to_mask

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN = "pytorch_model.bin"
_BIN_INDEX = "pytorch_model.bin.index.json"


# ---------------------------------------------------------------------------------------------
# Checkpoint helpers (shared by the built-in encoders)
# ---------------------------------------------------------------------------------------------
def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def resolve_checkpoint_dir(path: str, field: str) -> Path:
    """A local checkpoint directory, or a Hugging Face Hub id downloaded with ``snapshot_download``.

    The hub is contacted only when ``path`` is not an existing local path and looks like a hub
    id (``name`` or ``org/name``); ``field`` (e.g. ``"encoder.path"``) prefixes error messages.
    """
    local = Path(path).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise InputError(f"{field}: {path} is a file; expected a checkpoint directory or hub id")
    if path.startswith((".", "/", "~")) or ".." in path or not _HUB_ID.match(path):
        raise InputError(f"{field}: checkpoint directory {path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id=path, allow_patterns=["*.json", "*.safetensors"]))
        if not any(snapshot.glob("*.safetensors")):
            snapshot = Path(snapshot_download(repo_id=path, allow_patterns=["*.json", "pytorch_model*.bin"]))
    except Exception as error:  # hub errors: offline, not found, gated, ...
        raise InputError(
            f"{field}: {path} is not a local directory and could not be downloaded from the Hugging Face Hub "
            f"({first_line(error)})"
        ) from error
    return snapshot


def read_config_json(directory: Path, field: str) -> dict[str, Any]:
    """``directory/config.json`` as a dict (an :class:`InputError` if missing or invalid)."""
    file = directory / "config.json"
    if not file.is_file():
        raise InputError(f"{field}: {file} not found (expected a transformers checkpoint directory)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{file}: not a readable JSON file ({first_line(error)})") from error
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object")
    return data


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    except Exception as error:  # SafetensorError, OSError
        raise InputError(f"{file}: not a readable safetensors file ({first_line(error)})") from error


def _safetensors_tensors(file: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in keys}
    except Exception as error:
        raise InputError(f"{file}: not a readable safetensors file ({first_line(error)})") from error


def _torch_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError (unsafe content), RuntimeError, OSError
        raise InputError(f"{file}: not a loadable weights-only PyTorch checkpoint ({first_line(error)})") from error
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{file}: expected a state dict of tensors")
    return data


def _index_weight_map(file: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(file.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{file}: not a valid shard index ({first_line(error)})") from error
    if not isinstance(weight_map, dict):
        raise InputError(f"{file}: 'weight_map' must be an object")
    return {str(k): str(v) for k, v in weight_map.items()}


def read_state_dict(
    directory: Path, prefixes: Sequence[str], anchor: str, what: str
) -> tuple[str, dict[str, torch.Tensor]]:
    """Read the weights under one key prefix from a checkpoint directory.

    Looks for ``model.safetensors``, ``model.safetensors.index.json`` (shards), then legacy
    ``pytorch_model.bin`` / ``pytorch_model.bin.index.json`` (``weights_only=True``). The first
    of ``prefixes`` for which ``prefix + anchor`` is a key wins; only keys under it are loaded
    (other shards are never opened) and are returned with the prefix stripped.

    Returns ``(prefix, state_dict)``.
    """
    key_files: dict[str, Path]
    bin_cache: dict[Path, dict[str, torch.Tensor]] = {}
    if (directory / _SAFETENSORS).is_file():
        file = directory / _SAFETENSORS
        key_files = {key: file for key in _safetensors_keys(file)}
    elif (directory / _SAFETENSORS_INDEX).is_file():
        key_files = {k: directory / v for k, v in _index_weight_map(directory / _SAFETENSORS_INDEX).items()}
    elif (directory / _BIN).is_file():
        file = directory / _BIN
        bin_cache[file] = _torch_bin(file)
        key_files = {key: file for key in bin_cache[file]}
    elif (directory / _BIN_INDEX).is_file():
        key_files = {k: directory / v for k, v in _index_weight_map(directory / _BIN_INDEX).items()}
    else:
        raise InputError(
            f"{directory}: no weights found (expected {_SAFETENSORS}, {_SAFETENSORS_INDEX} or legacy {_BIN})"
        )
    prefix = next((p for p in prefixes if p + anchor in key_files), None)
    if prefix is None:
        expected = " or ".join(repr(p + anchor) for p in prefixes)
        raise InputError(f"{directory}: no {what} weights in this checkpoint (looked for key {expected})")
    by_file: dict[Path, list[str]] = {}
    for key, file in key_files.items():
        if key.startswith(prefix):
            by_file.setdefault(file, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        if not file.is_file():
            raise InputError(f"{file}: shard listed in the checkpoint index does not exist")
        if file.name.endswith(".safetensors"):
            tensors = _safetensors_tensors(file, keys)
        else:
            if file not in bin_cache:
                bin_cache[file] = _torch_bin(file)
            tensors = bin_cache[file]
        for key in keys:
            if key not in tensors:
                raise InputError(f"{file}: weight {key} listed in the checkpoint index is not in this shard")
            state[key[len(prefix) :]] = tensors[key]
    return prefix, state


def load_state_dict_strict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: Path,
    prefix: str,
    what: str,
    ignore: Callable[[str], bool] = lambda key: False,
) -> None:
    """Load ``state`` into ``module``: every weight of the module must be present with its shape,
    and no key outside the module may remain (``ignore`` exempts known extras). Error messages
    name the checkpoint directory and the keys as stored (with ``prefix``)."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        shown = ", ".join(prefix + key for key in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{source}: checkpoint is missing {what} weight(s) {shown}{more}")
    unexpected = [key for key in state if key not in expected and not ignore(key)]
    if unexpected:
        shown = ", ".join(prefix + key for key in unexpected[:3])
        more = f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""
        raise InputError(
            f"{source}: checkpoint has weight(s) {shown}{more} that the {what} built from its config.json does not have"
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise InputError(
                f"{source}: weight {prefix + key} has shape {tuple(state[key].shape)} but the {what} built from "
                f"config.json expects {tuple(tensor.shape)}"
            )
    module.load_state_dict({key: state[key] for key in expected}, strict=True)


def build_hf_config(config_cls: type, kwargs: dict[str, Any], field: str) -> Any:
    """Instantiate a transformers config from ``kwargs``; keys it does not know are errors
    (transformers would silently keep them as unused attributes)."""
    try:
        hf_config = config_cls(**kwargs)
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ComponentError(f"{field}: invalid {config_cls.__name__}: {first_line(error)}") from error
    known = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    known |= set(getattr(config_cls, "attribute_map", {}) or {})
    unknown = sorted(key for key in kwargs if key not in known)
    if known and unknown:
        raise ComponentError(f"{field}: unknown {config_cls.__name__} field(s): {', '.join(unknown)}")
    return hf_config


def random_init_digest(kwargs: dict[str, Any]) -> str:
    text = json.dumps(kwargs, sort_keys=True, default=str)
    return "random_init:sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def as_waveforms(waveforms: Sequence[np.ndarray | torch.Tensor], sample_rate: int) -> list[np.ndarray]:
    """Validate a batch of mono waveforms and return them as float32 numpy arrays."""
    if len(waveforms) == 0:
        raise InputError("extract_features: expected at least one waveform, got an empty batch")
    out: list[np.ndarray] = []
    for index, wav in enumerate(waveforms):
        if isinstance(wav, torch.Tensor):
            array = wav.detach().cpu().float().numpy()
        else:
            array = np.asarray(wav, dtype=np.float32)
        if array.ndim != 1:
            raise InputError(
                f"waveform {index}: expected a 1-D mono waveform at {sample_rate} Hz, got shape {array.shape}"
            )
        if array.size == 0:
            raise InputError(f"waveform {index}: empty waveform (0 samples)")
        if not np.isfinite(array).all():
            raise InputError(f"waveform {index}: contains NaN or infinite samples")
        out.append(np.ascontiguousarray(array, dtype=np.float32))
    return out


# ---------------------------------------------------------------------------------------------
# Component
# ---------------------------------------------------------------------------------------------
class WhisperConfig(ComponentConfig):
    """Config of the ``whisper`` encoder.

    Exactly one of ``path`` (a checkpoint directory or hub id: full Whisper or encoder-only) and
    ``random_init`` (``transformers.WhisperConfig`` kwargs for a randomly initialised encoder).
    ``dtype`` casts the encoder weights (``None`` keeps float32).
    """

    path: str | None = None
    random_init: dict[str, Any] | None = None
    mode: Literal["pad_to_30s", "trim"] = "pad_to_30s"
    frozen: bool = True
    dtype: Literal["float32", "float16", "bfloat16"] | None = None

    @model_validator(mode="after")
    def _check_source(self) -> WhisperConfig:
        if (self.path is None) == (self.random_init is None):
            raise ValueError(
                "exactly one of 'path' (a Whisper checkpoint directory or hub id) or 'random_init' "
                "(transformers WhisperConfig kwargs) must be set"
            )
        if self.path is not None and not self.path.strip():
            raise ValueError("'path' must be a non-empty checkpoint directory or hub id")
        return self


class WhisperEncoder(Encoder):
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
        self.checkpoint_dir: Path | None = None
        if config.random_init is not None:
            hf_config = build_hf_config(HFWhisperConfig, dict(config.random_init), "encoder.random_init")
            self.whisper = HFWhisperEncoder(hf_config)
            self.feature_extractor = WhisperFeatureExtractor(feature_size=hf_config.num_mel_bins)
        else:
            assert config.path is not None  # guaranteed by WhisperConfig
            self.checkpoint_dir = resolve_checkpoint_dir(config.path, "encoder.path")
            self.whisper = self._load_checkpoint(self.checkpoint_dir)
            self.feature_extractor = self._load_feature_extractor(self.checkpoint_dir)
        hf_config = self.whisper.config
        fe = self.feature_extractor
        if fe.feature_size != hf_config.num_mel_bins:
            raise InputError(
                f"encoder.path: {self.checkpoint_dir}/preprocessor_config.json has feature_size={fe.feature_size} "
                f"but the encoder expects num_mel_bins={hf_config.num_mel_bins}"
            )
        self.sample_rate = int(fe.sampling_rate)
        self.hop_length = int(fe.hop_length)
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
        if config.dtype is not None:
            self.whisper.to(DTYPES[config.dtype])
        if self.frozen:
            self.whisper.requires_grad_(False)
            self.eval()

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
        file = directory / "preprocessor_config.json"
        if not file.is_file():
            return WhisperFeatureExtractor(feature_size=self.whisper.config.num_mel_bins)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{file}: not a readable JSON file ({first_line(error)})") from error
        kind = data.get("feature_extractor_type", "WhisperFeatureExtractor") if isinstance(data, dict) else None
        if kind != "WhisperFeatureExtractor":
            raise InputError(f"{file}: feature_extractor_type is {kind!r}; expected 'WhisperFeatureExtractor'")
        try:
            return WhisperFeatureExtractor.from_dict(data)
        except (TypeError, ValueError) as error:
            raise InputError(f"{file}: invalid WhisperFeatureExtractor settings ({first_line(error)})") from error

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
        lengths = (feature_lengths.long() - 1) // 2 + 1
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
        checkpoint = (
            str(self.checkpoint_dir)
            if self.checkpoint_dir is not None
            else random_init_digest(dict(self.config.random_init or {}))
        )
        return {
            "encoder": "whisper",
            "checkpoint": checkpoint,
            "mode": self.config.mode,
            "num_mel_bins": int(self.whisper.config.num_mel_bins),
            "sampling_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "n_fft": int(fe.n_fft),
            "dtype": self.config.dtype or "float32",
        }
