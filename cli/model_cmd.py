"""``swv export`` and ``swv import``: write swv model directories.

* ``swv export RUN_OR_CHECKPOINT DEST`` re-saves a model directory (or the newest stage export of
  a training run) with ``SpeechLM.save_pretrained``, optionally merging the LoRA (``--merge-lora``)
  and/or copying the encoder and backbone into DEST (``--bundle``: DEST then stands alone).
* ``swv import soundwave SRC DEST`` converts a released Soundwave checkpoint.

Which stage of a run is exported: the stages are the subdirectories of the run's ``output_dir``
that hold ``export/swv_config.json``. If ``output_dir/run.json`` exists, its ``"stages"`` list
gives their order and the last listed stage that has an export wins; otherwise the stage whose
``export/swv_config.json`` was modified last wins.

torch and transformers are imported inside the commands, so ``swv --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from swv.cli.commands import SwvTyper
from swv.cli.options import WEIGHT_DTYPES, TrustRemoteCode, weight_dtype
from swv.core.config import CONFIG_NAME
from swv.core.errors import InputError, UsageError
from swv.train.plots import RUN_FILE

STAGE_EXPORT = "export"

import_app = SwvTyper(
    help="Import checkpoints of other implementations as swv model directories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# ----------------------------------------------------------------------------------------------
# Locating the model to export
# ----------------------------------------------------------------------------------------------
def _run_order(run_dir: Path) -> list[str] | None:
    """Stage names in order from ``run.json`` (None when the file does not exist)."""
    file = run_dir / RUN_FILE
    if not file.is_file():
        return None
    try:
        stages = json.loads(file.read_text(encoding="utf-8"))["stages"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{file}: expected a JSON object with a 'stages' list ({error})") from None
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise InputError(f"{file}: 'stages' must be a list of stage names")
    return stages


def resolve_model_dir(path: Path) -> tuple[Path, str]:
    """The swv model directory ``path`` designates, and how it was chosen.

    ``path`` is a model directory (holds ``swv_config.json``) or a run's ``output_dir`` (see the
    module docstring for which stage's ``export/`` is taken).
    """
    if not path.is_dir():
        raise InputError(f"{path}: no such directory (expected an swv model directory or a training run)")
    if (path / CONFIG_NAME).is_file():
        return path, "model directory"
    exported = {d.name: d / STAGE_EXPORT for d in path.iterdir() if (d / STAGE_EXPORT / CONFIG_NAME).is_file()}
    if not exported:
        raise InputError(
            f"{path}: neither an swv model directory ({CONFIG_NAME}) nor a training run "
            f"(no <stage>/{STAGE_EXPORT}/{CONFIG_NAME})"
        )
    order = _run_order(path)
    if order is not None:
        listed = [name for name in order if name in exported]
        if not listed:
            raise InputError(f"{path / RUN_FILE}: none of the stages {order} has an {STAGE_EXPORT}/ directory")
        return exported[listed[-1]], f"stage {listed[-1]!r} (last exported stage in {RUN_FILE})"
    newest = max(exported, key=lambda name: (exported[name] / CONFIG_NAME).stat().st_mtime_ns)
    return exported[newest], f"stage {newest!r} (most recently exported)"


def _check_destination(source: Path, dest: Path, overwrite: bool) -> None:
    resolved, src = dest.resolve(), source.resolve()
    if resolved == src or src in resolved.parents or resolved in src.parents:
        raise UsageError(f"{dest}: destination overlaps the model directory {source}; choose a separate directory")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest}: exists and is not a directory")
        if any(dest.iterdir()) and not overwrite:
            raise UsageError(f"{dest}: directory exists and is not empty (pass --overwrite to replace it)")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human_bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def describe_written(dest: Path) -> list[str]:
    """One line per top-level entry of a written model directory, then where the parts live."""
    lines = [f"  {item.name}{'/' if item.is_dir() else ''}  {_human_bytes(_size(item))}" for item in sorted(dest.iterdir())]
    config = json.loads((dest / CONFIG_NAME).read_text(encoding="utf-8"))
    encoder, backbone = config.get("encoder") or {}, config.get("backbone") or {}
    lora = "adapter_model.safetensors (PEFT)" if (dest / "adapter_config.json").is_file() else "none"
    lines.append(f"  encoder: {encoder.get('name')} {_source(encoder)}")
    lines.append(f"  adapters: {', '.join(str(a.get('name')) for a in config.get('adapters') or [])}")
    lines.append(f"  backbone: {backbone.get('name')} {_source(backbone)}; LoRA: {lora}")
    return lines


def _source(component: dict) -> str:
    """Where a component's weights come from: its ``path`` field (plugins may have none)."""
    path = component.get("path")
    return f"from {path}" if path else "(rebuilt from its config)"


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------
def export(
    source: Annotated[
        Path,
        typer.Argument(
            help="An swv model directory, or a training run's output_dir (its last stage's export/ is used).",
            metavar="RUN_OR_CHECKPOINT",
            show_default=False,
        ),
    ],
    dest: Annotated[Path, typer.Argument(help="Output directory.", metavar="DEST", show_default=False)],
    merge_lora: Annotated[
        bool, typer.Option("--merge-lora", help="Merge the LoRA into the backbone and write it to DEST/backbone.")
    ] = False,
    bundle: Annotated[
        bool, typer.Option("--bundle", help="Copy the encoder and backbone into DEST (a self-contained directory).")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DEST if it is a non-empty directory.")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Export a trained model (or a run's last stage) as an swv model directory.

    Run directories: the stages are the subdirectories holding export/swv_config.json; the last stage listed in run.json ("stages") that has one is used, else the most recently written export.
    """
    from swv.cli.convert import _quiet_transformers
    from swv.model.speechlm import SpeechLM

    model_dir, how = resolve_model_dir(source)
    _check_destination(model_dir, dest, overwrite)
    typer.echo(f"loading {model_dir} ({how})")
    with _quiet_transformers():
        model = SpeechLM.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        written = model.save_pretrained(dest, bundle=bundle, merge_lora=merge_lora)
    typer.echo(f"wrote {written}{' (LoRA merged into backbone/)' if merge_lora else ''}:")
    for line in describe_written(written):
        typer.echo(line)
    if not bundle:
        typer.echo("note: parts listed with an absolute path are referenced, not copied (use --bundle to copy them)")


@import_app.command("soundwave")
def import_soundwave(
    src: Annotated[
        Path,
        typer.Argument(help="A released Soundwave checkpoint directory (model_type 'Soundwave').", metavar="SRC", show_default=False),
    ],
    dest: Annotated[Path, typer.Argument(help="Output swv model directory.", metavar="DEST", show_default=False)],
    shrinking_heads: Annotated[
        int | None,
        typer.Option("--shrinking-heads", min=1, help="Heads of the shrinking cross-attention (default: the LLM's)."),
    ] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option("--dtype", help=f"dtype of the saved weights and of the backbone: {WEIGHT_DTYPES} (default: as stored)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DEST if it is a non-empty directory.")] = False,
) -> None:
    """Convert a released Soundwave checkpoint into an swv model directory (SpeechLM.from_pretrained)."""
    from swv.cli.convert import _quiet_transformers
    from swv.convert.import_soundwave import import_soundwave as convert

    with _quiet_transformers():
        summary = convert(
            src,
            dest,
            shrinking_heads=shrinking_heads,
            dtype=weight_dtype(dtype),
            overwrite=overwrite,
        )
    enc, llm = summary.encoder, summary.llm
    typer.echo(f"wrote {summary.dest} (weights {summary.dtype}):")
    for line in describe_written(summary.dest):
        typer.echo(line)
    typer.echo(
        f"  Whisper encoder d_model {enc['d_model']} x {enc['layers']} layers, {enc['heads']} heads, "
        f"{enc['mel_bins']} mel bins; Llama hidden {llm['hidden']} x {llm['layers']} layers, {llm['heads']} heads, "
        f"vocab {llm['vocab']}; audio token / CTC blank id {summary.audio_token_id}"
    )
    counts = ", ".join(f"{part} {count:,}" for part, count in summary.parameters.items())
    typer.echo(f"  parameters: {counts}")
    typer.echo(f"  encoder config: {summary.encoder_config_source}")
