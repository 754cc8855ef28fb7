"""GGUF causal LMs -> plain safetensors Hugging Face directories.

transformers can read a GGUF file directly (``from_pretrained(dir, gguf_file=name)``), but it
de-quantizes every tensor and rebuilds the tokenizer from metadata on each load. Converting once
gives a normal directory (``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja`` when the file has one) that
later loads fast with ``AutoModelForCausalLM.from_pretrained(dest)`` / ``AutoTokenizer``.

Which architectures and tokenizers work is decided by the installed transformers (llama, mistral,
qwen2, qwen3, gemma, phi3, ...); anything it cannot read becomes an :class:`~swv.core.errors.InputError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from swv.core.dtypes import DTYPE_NAMES
from swv.core.errors import InputError, UsageError, first_line
from swv.core.io import atomic_directory

__all__ = ["GGUF_MAGIC", "OUTPUT_DTYPES", "convert_gguf", "resolve_gguf_file"]

GGUF_MAGIC = b"GGUF"
OUTPUT_DTYPES = DTYPE_NAMES
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


def resolve_gguf_file(src: str | Path) -> Path:
    """The ``.gguf`` file ``src`` names: the file itself, or the only ``*.gguf`` in a directory."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.is_dir():
        found = sorted(p for p in src.iterdir() if p.is_file() and p.suffix == ".gguf")
        if not found:
            raise InputError(f"{src}: no .gguf file in this directory")
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:4])
            raise InputError(f"{src}: several .gguf files ({names}); pass one of them")
        src = found[0]
    with open(src, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise InputError(f"{src}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    if _SHARD.search(src.name):
        raise InputError(
            f"{src}: one shard of a split GGUF; merge the shards into one file first (llama.cpp: llama-gguf-split --merge)"
        )
    return src


def _check_destination(dest: Path, src: Path, overwrite: bool) -> None:
    resolved, source = dest.resolve(), src.resolve()
    if resolved == source or resolved in source.parents:
        raise UsageError(f"{dest}: destination overlaps the input {src}; choose a separate directory")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest}: exists and is not a directory")
        if any(dest.iterdir()) and not overwrite:
            raise UsageError(f"{dest}: directory exists and is not empty (pass --overwrite to replace it)")


def _load(gguf_file: Path, dtype: str | None) -> tuple[Any, Any]:
    """(model, tokenizer) read from ``gguf_file`` with every weight de-quantized to ``dtype``."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise UsageError("reading GGUF files needs the gguf package: pip install 'gguf>=0.10'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = None
    if dtype is not None:
        if dtype not in OUTPUT_DTYPES:
            raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)}")
        torch_dtype = getattr(torch, dtype)
    directory, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise InputError(f"{gguf_file}: cannot build its tokenizer ({first_line(exc)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch_dtype,
            local_files_only=True,
        )
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise InputError(f"{gguf_file}: cannot load as a transformers causal LM ({first_line(exc)})") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith("gguf")})
    not_float = [n for n, p in model.named_parameters() if not p.is_floating_point()]
    if packed or not_float:
        raise InputError(f"{gguf_file}: transformers kept weights packed ({packed or not_float[:3]}); cannot save plain safetensors")
    model.eval()
    return model, tokenizer


def convert_gguf(
    src: str | Path,
    dest: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the GGUF causal LM ``src`` (a ``.gguf`` file, or a directory holding exactly one) to a
    safetensors directory at ``dest``.

    Quantized tensors (Q4_K, Q8_0, ...) are de-quantized by transformers. ``dtype`` (float32, float16,
    bfloat16) sets the saved weights' dtype; ``None`` keeps the one transformers picks for the file.
    The tokenizer, its special tokens and chat template are written alongside. The directory appears
    atomically; returns ``dest``.
    """
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)}")
    gguf_file = resolve_gguf_file(src)
    dest = Path(dest)
    _check_destination(dest, gguf_file, overwrite)
    model, tokenizer = _load(gguf_file, dtype)
    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest
