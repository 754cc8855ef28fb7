"""``swv convert``: turn faster-whisper (CTranslate2) and GGUF checkpoints into Hugging Face directories.

torch and transformers are imported inside the commands, so ``swv --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from swv.cli.commands import SwvTyper
from swv.cli.options import WEIGHT_DTYPES, weight_dtype

app = SwvTyper(
    help="Convert CTranslate2 (faster-whisper) Whisper and GGUF LLM checkpoints to Hugging Face safetensors directories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def count_safetensors_parameters(directory: Path) -> int:
    """Number of stored parameters in ``directory``'s ``*.safetensors`` files, read from their headers
    (a tied weight stored once counts once)."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as fh:
            (header_size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-file progress bars: the command reports with its own summary line."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


@app.command("whisper-ct2")
def whisper_ct2(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="A CTranslate2 Whisper directory (model.bin, or parts model.bin.partN / model.bin.NN), "
            "or several directories/part files in order.",
            metavar="SRC",
            show_default=False,
        ),
    ],
    dest: Annotated[Path, typer.Argument(help="Output directory.", metavar="DEST", show_default=False)],
    encoder_only: Annotated[
        bool, typer.Option("--encoder-only", help="Write only the audio encoder (WhisperEncoder + preprocessor config).")
    ] = False,
    dtype: Annotated[str, typer.Option("--dtype", help=f"dtype of the saved weights: {WEIGHT_DTYPES}.")] = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DEST if it is a non-empty directory.")] = False,
) -> None:
    """Convert a faster-whisper / CTranslate2 Whisper checkpoint (float or int8/int16 quantized)."""
    from swv.convert.ct2_whisper import convert_ct2_whisper

    dtype = weight_dtype(dtype) or "float32"
    with _quiet_transformers():
        written = convert_ct2_whisper(sources, dest, encoder_only=encoder_only, dtype=dtype, overwrite=overwrite)
    params = count_safetensors_parameters(written)
    kind = "Whisper encoder" if encoder_only else "Whisper model"
    typer.echo(f"wrote {kind} to {written} ({_human(params)} parameters = {params:,}, {dtype})")


@app.command("gguf")
def gguf(
    src: Annotated[
        Path,
        typer.Argument(help="A .gguf causal LM file (or a directory holding exactly one).", metavar="SRC", show_default=False),
    ],
    dest: Annotated[Path, typer.Argument(help="Output directory.", metavar="DEST", show_default=False)],
    dtype: Annotated[
        Optional[str], typer.Option("--dtype", help=f"dtype of the saved weights: {WEIGHT_DTYPES} (default: the one transformers picks).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DEST if it is a non-empty directory.")] = False,
) -> None:
    """Convert a GGUF causal LM (de-quantized) to a safetensors directory with its tokenizer and chat template."""
    from swv.convert.gguf import convert_gguf

    with _quiet_transformers():
        written = convert_gguf(src, dest, dtype=weight_dtype(dtype), overwrite=overwrite)
    params = count_safetensors_parameters(written)
    config = json.loads((written / "config.json").read_text(encoding="utf-8"))
    arch = ",".join(config.get("architectures") or [config.get("model_type", "?")])
    typer.echo(f"wrote {arch} to {written} ({_human(params)} parameters = {params:,}, {config.get('dtype', '?')})")
