"""Checkpoint helpers shared by the built-in encoders: locating a checkpoint, reading its
config and (sharded) weights under a key prefix, strict loading, random-init configs,
feature-extractor files and waveform validation; :class:`CheckpointEncoder`, their common base."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
from huggingface_hub.errors import StrictDataclassError
from pydantic import model_validator
from torch import nn

from swv.core.config import ComponentConfig
from swv.core.dtypes import torch_dtype
from swv.core.errors import ComponentError, InputError, first_line, unpickling_detail
from swv.core.hub import Resolved, resolve_dir
from swv.encoders.base import Encoder
from swv.nn.meta import building_on_meta, reading_weights

_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN = "pytorch_model.bin"
_BIN_INDEX = "pytorch_model.bin.index.json"


# ---------------------------------------------------------------------------------------------
# Checkpoint helpers (shared by the built-in encoders)
# ---------------------------------------------------------------------------------------------
def resolve_checkpoint_dir(path: str, field: str, revision: str | None = None, *, code: bool = False) -> Resolved:
    """A local checkpoint directory, or a Hugging Face Hub id (at ``revision``) fetched with
    ``snapshot_download`` (:func:`swv.core.hub.resolve_dir`): config/JSON files and safetensors
    weights, or legacy ``pytorch_model*.bin`` when the snapshot has no safetensors; with
    ``code`` also the repository's Python files (remote code the user chose to trust).

    The hub is contacted only when ``path`` is not an existing local path and looks like a hub
    id (``name`` or ``org/name``); ``field`` (e.g. ``"encoder.path"``) prefixes error messages.
    """
    extra = ["*.py"] if code else []
    resolved = resolve_dir(path, field, revision=revision, allow_patterns=["*.json", "*.safetensors", *extra])
    if resolved.repo_id is not None and not any(resolved.path.glob("*.safetensors")):
        resolved = resolve_dir(path, field, revision=revision, allow_patterns=["*.json", "pytorch_model*.bin", *extra])
    return resolved


def without_spec_augment(hf_config: Any) -> Any:
    """Turn off the SpecAugment a transformers speech encoder applies to itself in training mode
    (and with it the ``masked_spec_embed`` weight, which checkpoints may still carry): the
    encoders are deterministic feature extractors."""
    hf_config.apply_spec_augment = False
    hf_config.mask_time_prob = 0.0
    hf_config.mask_feature_prob = 0.0
    return hf_config


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
    except pickle.UnpicklingError as error:  # unsafe content: a global weights-only loading refuses
        raise InputError(f"{file}: {unpickling_detail(error)}; convert it to safetensors") from None
    except Exception as error:  # RuntimeError, OSError
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

    Returns ``(prefix, state_dict)``; ``(prefixes[0], {})`` when building from configs alone
    (:func:`swv.nn.meta.reading_weights`).
    """
    if not reading_weights():
        return prefixes[0], {}
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
    name the checkpoint directory and the keys as stored (with ``prefix``). Nothing to do when
    building from configs alone (:func:`swv.nn.meta.reading_weights`)."""
    if not reading_weights():
        return
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
    if not building_on_meta():  # on the meta device (a shape check) there is nothing to copy into
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


def normalise_layer(layer: int, count: int) -> int:
    """A ``hidden_states`` index of a ``count``-layer encoder (``0..count``, or ``-(count + 1)..-1``
    counted from the end) as ``0..count``; a ``ComponentError`` naming ``encoder.layer`` if out of range."""
    if not -(count + 1) <= layer <= count:
        raise ComponentError(
            f"encoder.layer: {layer} is out of range for a {count}-layer encoder "
            f"(expected 0..{count}, or -{count + 1}..-1 counted from the end)"
        )
    return layer % (count + 1)


def random_init_digest(kwargs: dict[str, Any]) -> str:
    text = json.dumps(kwargs, sort_keys=True, default=str)
    return "random_init:sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def as_waveforms(
    waveforms: Sequence[np.ndarray | torch.Tensor], sample_rate: int, *, min_samples: int = 1, encoder: str = ""
) -> list[np.ndarray]:
    """Validate a batch of mono waveforms and return them as float32 numpy arrays; each must hold
    at least ``min_samples`` (the ``encoder``'s receptive field, named in the error)."""
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
    for index, wav in enumerate(out):
        if wav.shape[0] < min_samples:
            raise InputError(
                f"waveform {index}: {wav.shape[0]} samples is too short; the {encoder} encoder needs at least "
                f"{min_samples} ({1000 * min_samples / sample_rate:g} ms)"
            )
    return out


FE = TypeVar("FE")


def load_feature_extractor(directory: Path, extractor_cls: type[FE], default: Callable[[], FE]) -> FE:
    """``preprocessor_config.json`` of ``directory`` as ``extractor_cls``, or ``default()`` when
    the checkpoint has none. A file of another extractor type is an error."""
    file = directory / "preprocessor_config.json"
    if not file.is_file():
        return default()
    name = extractor_cls.__name__
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{file}: not a readable JSON file ({first_line(error)})") from error
    kind = data.get("feature_extractor_type", name) if isinstance(data, dict) else None
    if kind != name:
        raise InputError(f"{file}: feature_extractor_type is {kind!r}; expected {name!r}")
    try:
        return extractor_cls.from_dict(data)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as error:
        raise InputError(f"{file}: invalid {name} settings ({first_line(error)})") from error


# ---------------------------------------------------------------------------------------------
# Common base of the built-in encoders
# ---------------------------------------------------------------------------------------------
class CheckpointEncoderConfig(ComponentConfig):
    """Fields every checkpoint-backed encoder config has: exactly one of ``path`` (a checkpoint
    directory or hub id, optionally pinned to ``revision``) and ``random_init`` (kwargs of the
    architecture's transformers config, for a randomly initialised encoder); ``frozen``;
    ``dtype`` (``None`` keeps float32). Subclasses name their checkpoints and config class in
    ``path_hint`` and ``random_init_hint`` for the error message."""

    #: What ``path`` and ``random_init`` take, in the message when neither or both are set.
    path_hint: ClassVar[str] = "a checkpoint directory or hub id"
    random_init_hint: ClassVar[str] = "transformers config kwargs"

    path: str | None = None
    #: Branch, tag or commit of a hub id ``path`` (exports record the commit used).
    revision: str | None = None
    random_init: dict[str, Any] | None = None
    frozen: bool = True
    dtype: Literal["float32", "float16", "bfloat16"] | None = None

    @model_validator(mode="after")
    def _check_source(self) -> CheckpointEncoderConfig:
        if (self.path is None) == (self.random_init is None):
            raise ValueError(
                f"exactly one of 'path' ({self.path_hint}) or 'random_init' ({self.random_init_hint}) must be set"
            )
        if self.path is not None and not self.path.strip():
            raise ValueError("'path' must be a non-empty checkpoint directory or hub id")
        if self.revision is not None and self.path is None:
            raise ValueError("'revision' pins a hub id given as 'path'; it cannot go with 'random_init'")
        return self


class CheckpointEncoder(Encoder):
    """An encoder whose config has ``path`` (a checkpoint) or ``random_init`` (a random model,
    which exports bundle), and ``frozen``; subclasses implement the :class:`Encoder` methods and
    ``checkpoint_parts`` (for the default ``save_pretrained``)."""

    #: The local checkpoint directory (``None`` for ``random_init``), set by :meth:`_resolve_path`.
    checkpoint_dir: Path | None = None

    @property
    def frozen(self) -> bool:
        return self.config.frozen

    def _resolve_path(self, code: bool = False) -> Path:
        """The local directory of ``config.path`` (a hub id at ``revision`` is fetched into the
        Hugging Face cache, with its Python files when ``code``: remote code the user trusts);
        sets ``checkpoint_dir`` and ``hub_commit``."""
        assert self.config.path is not None  # guaranteed by CheckpointEncoderConfig
        resolved = resolve_checkpoint_dir(self.config.path, "encoder.path", self.config.revision, code=code)
        self.checkpoint_dir, self.hub_commit = resolved.path, resolved.commit
        return resolved.path

    def _finish_loading(self, module: nn.Module) -> None:
        """Cast ``module`` (the transformers encoder) to ``config.dtype`` and freeze it when ``frozen``."""
        if self.config.dtype is not None:
            module.to(torch_dtype(self.config.dtype))
        if self.frozen:
            module.requires_grad_(False)
            self.eval()

    def checkpoint_identity(self) -> str:
        """What the weights are, for feature-cache identities: the checkpoint directory, or a
        digest of the ``random_init`` kwargs."""
        if self.checkpoint_dir is not None:
            return str(self.checkpoint_dir)
        return random_init_digest(dict(self.config.random_init or {}))

    @property
    def needs_bundle(self) -> bool:
        return self.config.random_init is not None

    def bundled_config(self, path: str) -> dict[str, Any]:
        return {**self.config.model_dump(mode="json"), "path": path, "revision": None, "random_init": None}
