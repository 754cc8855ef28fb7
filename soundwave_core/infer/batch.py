"""Batch inference over a manifest, resumable, with per-item errors (``swv infer --manifest``
and ``swv eval``).

Output: one JSON line per manifest item, ``{"id", "prediction" | "error", <reference fields>,
"stats"?}``. ``id`` is the record's ``id`` or ``<manifest file name>:<line>``; the reference and
descriptive fields (:data:`COPIED_FIELDS`) are copied from the manifest. Lines are appended
and flushed + fsynced after every batch, so an interrupted run loses at most one batch; a
rerun skips ids already predicted in the output (a half-written last line is dropped first).
An item whose audio is missing, unreadable, empty, non-finite or too long gets an ``error``
field and the run goes on; a rerun removes the error lines (atomically) and retries them.

Every line carries the run's ``fingerprint`` (:mod:`swv.infer.fingerprint`: the model, the
generation settings, the prompts, the manifest). A rerun reuses the lines only when they all
carry its own fingerprint; an output written by another run (another model, other settings or
prompts, a changed manifest) or by an older swv (lines without one) is refused with one line
naming what differs, unless the run is asked to start over (``overwrite``): answers of two runs
are never mixed in one file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from swv.core.audio import DEFAULT_MAX_DURATION
from swv.core.errors import InputError, UsageError
from swv.core.io import append_durably, atomic_file
from swv.data.manifest import read_manifest, resolve_audio
from swv.infer.fingerprint import FINGERPRINT_FIELD, Fingerprint, run_fingerprint, stale_reason
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings
from swv.model.defaults import GenerationDefaults
from swv.model.processor import Waveform
from swv.model.prompts import default_instruction, instruction_table

#: Manifest fields copied to every output line (references for evaluation and descriptions).
COPIED_FIELDS = (
    "audio",
    "instruction",
    "prompt",
    "text",
    "response",
    "target_text",
    "label",
    "options",
    "task",
    "language",
    "target_language",
)

@dataclass(frozen=True)
class ManifestItem:
    """One manifest line: ``id``, ``where`` (``file:line`` for messages), the record, its
    instruction (``None`` when no prompt is needed, e.g. when only reading predictions) and its
    task (the record's ``task`` field, else the run's; ``None`` when neither says: then the
    instruction decides whether the answer renders the speech, see
    :func:`swv.model.prompts.renders_speech`)."""

    id: str
    where: str
    record: dict[str, Any]
    prompt: str | None
    task: str | None = None


@dataclass
class RunSummary:
    """What :func:`run_manifest` did."""

    output: Path
    total: int = 0
    skipped: int = 0
    generated: int = 0
    failed: int = 0

    def format(self) -> str:
        return (
            f"{self.generated} generated, {self.failed} failed, {self.skipped} already in {self.output.name} "
            f"({self.total} item(s)) -> {self.output}"
        )


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def record_instruction(record: dict[str, Any], where: str) -> str | None:
    """The record's own ``instruction`` (or ``prompt``), if it has a non-empty one."""
    for field in ("instruction", "prompt"):
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
        if value.strip():
            return value
    return None


def _saved_field(model_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """A mapping field of a model's ``swv_config.json`` (None when absent or unreadable: the
    model loader reports unreadable configs)."""
    from swv.core.config import CONFIG_NAME

    try:
        saved = json.loads((Path(model_dir) / CONFIG_NAME).read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, dict) else None


def saved_instructions(model_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The default-instruction table saved with a model (``swv_config.json``'s ``instructions``)
    over swv's defaults: the table its training used."""
    return instruction_table(_saved_field(model_dir, "instructions"))


def saved_generation(model_dir: str | os.PathLike[str]) -> GenerationDefaults:
    """The decoding defaults saved with a model (greedy, 256 new tokens when it has none)."""
    try:
        return GenerationDefaults.model_validate(_saved_field(model_dir, "generation") or {})
    except ValueError:
        return GenerationDefaults()


def saved_system_prompt(model_dir: str | os.PathLike[str]) -> str | None:
    """The system prompt saved with a model (``swv_config.json``'s ``system_prompt``; ``None``
    when it has none or the config is unreadable)."""
    from swv.core.config import CONFIG_NAME

    try:
        saved = json.loads((Path(model_dir) / CONFIG_NAME).read_text(encoding="utf-8")).get("system_prompt")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, str) else None


def manifest_fingerprint(model_dir: str | os.PathLike[str], manifest: str | os.PathLike[str],
                         items: Sequence[ManifestItem], settings: GenerationSettings,
                         system: str | None) -> Fingerprint:
    """The fingerprint (:func:`swv.infer.fingerprint.run_fingerprint`) of answering ``items`` of
    ``manifest`` with the model in ``model_dir`` (a local directory or a resolved Hub snapshot):
    ``settings`` resolved over the model's saved defaults, ``system`` (``None``: the model's own)."""
    resolved = settings.over(saved_generation(model_dir))
    system_prompt = system if system is not None else saved_system_prompt(model_dir)
    prompts = [(item.id, item.prompt, item.task) for item in items]
    return run_fingerprint(model_dir, manifest, prompts, resolved.as_dict(), system_prompt)


def task_prompt(record: dict[str, Any], where: str, task: str, target_language: str | None = None,
                instructions: dict[str, str] | None = None) -> str:
    """The instruction for one record in ``swv eval`` (and ``swv infer --manifest``): its
    ``instruction``/``prompt``, else the default of the record's ``task`` field (or of ``task``)
    in ``instructions`` (the model's table, :func:`saved_instructions`); ``{language}`` comes
    from ``target_language``, the record's ``target_language`` or ``language``."""
    own = record_instruction(record, where)
    if own is not None:
        return own
    record_task = record.get("task")
    key = record_task if isinstance(record_task, str) and record_task.strip() else task
    language = target_language or record.get("target_language") or record.get("language")
    return default_instruction(instructions or instruction_table(), key, language if isinstance(language, str) else None, where)


# ---------------------------------------------------------------------------------------------
# Manifest and output files
# ---------------------------------------------------------------------------------------------
def read_items(
    manifest: str | os.PathLike[str], prompt_for: Callable[[dict[str, Any], str], str] | None,
    task: str | None = None,
) -> list[ManifestItem]:
    """Every manifest record with its id, (when ``prompt_for`` is given) its instruction, and
    its task: the record's ``task`` field, else ``task``.

    Raises :class:`InputError` for an unreadable manifest, an invalid line, a missing prompt
    or a duplicate id (resuming relies on unique ids).
    """
    manifest = Path(manifest)
    items: list[ManifestItem] = []
    seen: dict[str, str] = {}
    for line_no, record in read_manifest(manifest, required=()):
        where = f"{manifest}:{line_no}"
        rid = record.get("id")
        item_id = str(rid) if rid not in (None, "") else f"{manifest.name}:{line_no}"
        if item_id in seen:
            raise InputError(f"{where}: duplicate id {item_id!r} (first at {seen[item_id]})")
        seen[item_id] = where
        own = record.get("task")
        item_task = own if isinstance(own, str) and own.strip() else task
        items.append(ManifestItem(item_id, where, record, prompt_for(record, where) if prompt_for else None, item_task))
    if not items:
        raise InputError(f"{manifest}: manifest has no records")
    return items


def _drop_partial_tail(path: Path) -> None:
    """Truncate a last line left without its newline by an interrupted write."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def read_output(path: str | os.PathLike[str], *, repair: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_no, record)`` of a predictions JSONL (every line needs an ``id``). With
    ``repair``, a half-written last line is removed from the file first."""
    path = Path(path)
    if repair and path.is_file():
        _drop_partial_tail(path)
    for line_no, record in read_manifest(path, required=("id",)):
        yield line_no, record


def done_ids(path: Path, fingerprint: dict[str, str], elsewhere: str = "another output file") -> set[str]:
    """Ids already predicted in an output file by a run with this ``fingerprint`` (empty when the
    file does not exist). Lines of items that failed (with ``error``) are removed from the file,
    atomically, so they are retried. An output with a line of another run, or without a
    fingerprint, is refused (:class:`UsageError` naming what differs; ``elsewhere`` is the other
    way out offered besides ``--overwrite``)."""
    if not path.exists():
        return set()
    records = [record for _, record in read_output(path, repair=True)]
    reason = stale_reason(records, fingerprint)
    if reason is not None:
        raise UsageError(f"{path}: {reason}; not reusing them: rerun with --overwrite to start over, or write to "
                         f"{elsewhere}")
    if any("error" in record for record in records):
        with atomic_file(path) as fh:
            _append(fh, [record for record in records if "error" not in record])
    return {str(record["id"]) for record in records if "error" not in record}


def output_line(
    item: ManifestItem, prediction: str | None, error: str | None, stats: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON object written for one item."""
    out: dict[str, Any] = {"id": item.id}
    if error is not None:
        out["error"] = error
    else:
        out["prediction"] = prediction
    out.update({field: item.record[field] for field in COPIED_FIELDS if field in item.record})
    if stats is not None:
        out["stats"] = stats
    return out


def _append(fh: Any, lines: Sequence[dict[str, Any]]) -> None:
    """Append ``lines`` to the output and fsync; a batch that cannot be written whole (disk
    full, file-size limit) is cut off again and the run stops with one line naming the file."""
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
    fh.flush()
    append_durably(fh.fileno(), data, fh.name, "the predictions")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def _load_item(pipe: Pipeline, manifest: Path, item: ManifestItem, max_duration: float | None) -> Waveform:
    if not isinstance(item.record.get("audio"), str) or not item.record["audio"].strip():
        raise InputError(f"{item.where}: missing or empty 'audio' field")
    path = resolve_audio(manifest, item.record)
    return pipe.load(path, name=str(path), max_duration=max_duration)


def _run_batch(
    pipe: Pipeline, manifest: Path, batch: Sequence[ManifestItem], settings: GenerationSettings,
    max_duration: float | None, with_stats: bool,
) -> list[dict[str, Any]]:
    """Output lines for one batch, in manifest order; bad items carry ``error``."""
    loaded: dict[int, Waveform] = {}
    errors: dict[int, str] = {}
    for i, item in enumerate(batch):
        try:
            loaded[i] = _load_item(pipe, manifest, item, max_duration)
        except InputError as exc:
            errors[i] = " ".join(str(exc).split())
    results = {}
    if loaded:
        order = sorted(loaded)
        prompts = [batch[i].prompt or "" for i in order]
        if any(batch[i].record.get("cot") is True for i in order):  # answers that start with a transcript
            settings = replace(settings, transcript_first=True)
        generated = pipe.generate_batch([loaded[i] for i in order], prompts, settings, [batch[i].task for i in order])
        results = dict(zip(order, generated))
    lines = []
    for i, item in enumerate(batch):
        if i in errors:
            lines.append(output_line(item, None, errors[i], None))
        else:
            result = results[i]
            lines.append(output_line(item, result.text, None, result.stats.as_dict() if with_stats else None))
    return lines


def load_pipeline(model_dir: str | os.PathLike[str], device: str = "cpu", dtype: str | None = None,
                  system: str | None = None, trust_remote_code: bool = False) -> Pipeline:
    """Load the model quietly: no transformers progress bars, and not the deprecation warning
    peft triggers in transformers when it wraps a model with a LoRA (nothing a user can act on)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return Pipeline.from_pretrained(model_dir, device=device, dtype=dtype, system_prompt=system,
                                        trust_remote_code=trust_remote_code)


def run_manifest(
    pipe: Pipeline | Callable[[], Pipeline],
    manifest: str | os.PathLike[str],
    items: Sequence[ManifestItem],
    output: str | os.PathLike[str],
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    with_stats: bool = False,
    show_progress: bool = True,
    fingerprint: Fingerprint,
    overwrite: bool = False,
    elsewhere: str = "another output file",
) -> RunSummary:
    """Generate a prediction for every item whose id is not yet in ``output``.

    ``pipe`` may be a factory, called only when something is left to generate (so a finished
    run does not load the model). Items are processed ``batch_size`` at a time in manifest
    order; each batch is appended to ``output`` and fsynced. ``settings.seed`` seeds the RNG
    once at the start of the run. Every line carries ``fingerprint`` (:func:`manifest_fingerprint`);
    an ``output`` with lines of another run or of an older swv is refused (:func:`done_ids`), or
    with ``overwrite`` emptied first: the run starts over.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    manifest, output = Path(manifest), Path(output)
    if output.is_dir():
        raise UsageError(f"{output}: is a directory; expected a JSONL output file")
    if output.resolve() == manifest.resolve() or (output.exists() and os.path.samefile(output, manifest)):
        raise UsageError(f"--output {output}: is the manifest itself; write the predictions to another file")
    if overwrite and output.exists():
        with atomic_file(output):
            pass  # emptied: the run starts over
    done = done_ids(output, fingerprint.parts, elsewhere)
    todo = [item for item in items if item.id not in done]
    summary = RunSummary(output=output, total=len(items), skipped=len(items) - len(todo))
    if not todo:
        return summary
    try:  # opened first: an unwritable output fails before the model loads
        output.parent.mkdir(parents=True, exist_ok=True)
        fh = open(output, "a", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{output}: cannot write the predictions here ({exc.strerror or exc})") from None
    with fh:
        pipeline = pipe if isinstance(pipe, Pipeline) else pipe()
        if settings.seed is not None:
            import torch

            torch.manual_seed(settings.seed)
        _generate_into(fh, pipeline, manifest, todo, settings, batch_size, max_duration, with_stats, show_progress,
                       summary, fingerprint.parts)
    return summary


def _generate_into(fh: Any, pipeline: Pipeline, manifest: Path, todo: Sequence[ManifestItem],
                   settings: GenerationSettings, batch_size: int, max_duration: float | None, with_stats: bool,
                   show_progress: bool, summary: RunSummary, fingerprint: dict[str, str]) -> None:
    """Generate ``todo`` batch by batch, appending each batch's lines, marked with the run's
    ``fingerprint``, to ``fh``."""
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="infer", unit="item", file=sys.stderr, disable=not show_progress,
              leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            lines = _run_batch(pipeline, manifest, batch, settings, max_duration, with_stats)
            _append(fh, [{**line, FINGERPRINT_FIELD: fingerprint} for line in lines])
            failed = sum("error" in line for line in lines)
            summary.failed += failed
            summary.generated += len(lines) - failed
            bar.update(len(batch))
