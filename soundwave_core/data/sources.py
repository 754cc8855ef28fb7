"""Loading the recipe's named data sources as memory-mapped Hugging Face datasets.

Every source becomes a ``datasets.Dataset`` with the same string/number columns (missing
fields are empty strings, unknown durations -1), so sources can be mixed freely. JSONL
manifests are parsed line by line first: a malformed line or a missing audio file is an
error naming the manifest and line, or, with ``on_error: skip``, a counted skip.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from swv.errors import InputError, UsageError
from swv.recipes.loader import ASSET_PREFIX
from swv.recipes.schema import DatasetSpec

log = logging.getLogger(__name__)

TEXT_FIELDS = ("id", "text", "instruction", "response", "task", "target_text", "language", "target_language", "label")

#: Longest text field a training record may have (characters). The paper's transcripts are at
#: most 200 tokens; a runaway field (a whole book in ``text``) would make a huge CTC target.
MAX_FIELD_CHARS = 20_000


def resolve_data_path(text: str) -> Path:
    """``asset:tiny_speech/x.jsonl`` for files shipped with swv, else a path (relative to the CWD)."""
    if text.startswith(ASSET_PREFIX):
        from swv.assets import asset_path

        try:
            return asset_path(text[len(ASSET_PREFIX) :])
        except FileNotFoundError as exc:
            raise InputError(str(exc)) from None
    return Path(text).expanduser()


#: Bump when the normalised columns change, so ``datasets`` does not reuse an older cache.
ROW_SCHEMA = 3


def _manifest_rows(manifest: str, name: str, task: str, instruction: str, on_error: str, max_samples: int | None, mtime: float, schema: int) -> Any:
    """Generator for ``Dataset.from_generator`` (``mtime`` and ``schema`` only key the cache)."""
    from swv.audio import audio_duration
    from swv.dataprep.manifest import read_manifest, resolve_audio

    del mtime, schema
    emitted = 0
    for line_no, record in read_manifest(manifest, required=()):
        try:
            row = _normalise(record, manifest, line_no, task, instruction, resolve_audio, audio_duration)
        except InputError:
            if on_error == "skip":
                continue
            raise
        row["source"] = name
        row["audio_bytes"] = b""
        yield row
        emitted += 1
        if max_samples is not None and emitted >= max_samples:
            break


def _normalise(record: dict[str, Any], manifest: str, line_no: int, task: str, instruction: str, resolve_audio: Any,
               audio_duration: Any, embedded: tuple[str, float] | None = None) -> dict[str, Any]:
    """One source record as a row of the shared columns. ``embedded`` is ``(name, duration)`` of
    audio whose bytes travel with the row (Hugging Face datasets), instead of an ``audio`` path."""
    where = f"{manifest}:{line_no}"
    row: dict[str, Any] = {}
    for key in TEXT_FIELDS:
        value = record.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)):
            raise InputError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
        row[key] = str(value)
        if len(row[key]) > MAX_FIELD_CHARS:
            raise InputError(
                f"{where}: field '{key}' has {len(row[key])} characters, more than the {MAX_FIELD_CHARS} a training "
                "record may have (split or filter the record)"
            )
    row["task"] = task or row["task"] or ("asr" if row["text"] and not row["response"] else "")
    row["instruction"] = row["instruction"] or instruction
    if not row["id"]:
        row["id"] = f"{Path(manifest).name}:{line_no}"
    audio = record.get("audio")
    if embedded is not None:
        row["audio"], row["duration"] = embedded
    elif audio not in (None, ""):
        path = resolve_audio(manifest, record)
        if not path.is_file():
            raise InputError(f"{where}: audio file not found: {path}")
        row["audio"] = str(path.resolve())
        duration = record.get("duration")
        if duration is not None:
            row["duration"] = _duration(duration, where)
        else:
            try:
                row["duration"] = audio_duration(path)
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
    else:
        row["audio"] = ""
        row["duration"] = -1.0
    if not (row["text"] or row["response"] or row["target_text"]):
        raise InputError(f"{where}: needs a target: 'text', 'response' or 'target_text'")
    if not row["audio"] and not row["instruction"]:
        raise InputError(f"{where}: a text-only record needs an 'instruction'")
    row["tags"] = _tags(record.get("tags"), where)
    row["line"] = line_no
    row["manifest"] = str(manifest)
    return row


def _duration(value: Any, where: str) -> float:
    """A record's ``duration``: a finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: field 'duration' must be a positive number of seconds, got {value!r}")
    return float(value)


def _tags(value: Any, where: str) -> str:
    """A record's ``tags`` (special tokens its text uses, e.g. ``["<cough>"]`` from
    ``swv data sound-insert``) as one space-separated string column."""
    if value in (None, "", []):
        return ""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in items):
        raise InputError(f"{where}: field 'tags' must be a list of tokens without spaces, got {value!r}")
    return " ".join(items)


def source_tags(ds: Any) -> set[str]:
    """Every tag of a loaded source (its ``tags`` column)."""
    if "tags" not in ds.column_names:
        return set()
    return {tag for joined in ds.unique("tags") for tag in joined.split()}


def load_source(name: str, spec: DatasetSpec, cache_dir: str | None = None) -> Any:
    """One recipe data source as a ``datasets.Dataset``."""
    import datasets

    datasets.disable_progress_bars()
    if spec.manifest is not None:
        path = resolve_data_path(spec.manifest)
        if not path.is_file():
            raise InputError(f"data.datasets.{name}.manifest: {path}: manifest not found")
        manifest = str(path.resolve())
        try:
            ds = datasets.Dataset.from_generator(
                _manifest_rows,
                gen_kwargs={
                    "manifest": manifest,
                    "name": name,
                    "task": spec.task or "",
                    "instruction": spec.instruction or "",
                    "on_error": spec.on_error,
                    "max_samples": spec.max_samples,
                    "mtime": os.stat(manifest).st_mtime,
                    "schema": ROW_SCHEMA,
                },
                cache_dir=cache_dir,
            )
        except datasets.exceptions.DatasetGenerationError as exc:
            from datasets.arrow_writer import SchemaInferenceError

            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, InputError):
                raise cause from None
            if isinstance(cause, SchemaInferenceError):  # the generator yielded no row
                raise InputError(
                    f"data.datasets.{name}.manifest: {manifest}: no usable records"
                    + (" (every line was skipped: on_error: skip)" if spec.on_error == "skip" else "")
                ) from None
            raise
        if spec.on_error == "skip" and spec.max_samples is None:
            from swv.dataprep._common import count_lines

            skipped = count_lines(manifest) - len(ds)
            if skipped:
                log.warning("data source %s: skipped %d bad record(s) of %s (on_error: skip)", name, skipped, manifest)
        return ds
    if spec.shards is not None:
        return _load_shards(name, spec, cache_dir)
    from swv.data.hf_sources import load_hf_source

    if spec.streaming:
        raise UsageError(f"data.datasets.{name}: a streaming source can only be a training stage's dataset "
                         "(not an eval dataset, nor for cache-features or tags)")
    return load_hf_source(name, spec)


def _load_shards(name: str, spec: DatasetSpec, cache_dir: str | None) -> Any:
    """A ``shards:`` source (:mod:`swv.data.shards`), read shard by shard into an Arrow table."""
    import datasets

    from swv.data.shards import shard_files, shard_rows

    assert spec.shards is not None
    try:
        files = shard_files(resolve_data_path(spec.shards))
    except InputError as exc:
        raise InputError(f"data.datasets.{name}.shards: {exc}") from None
    try:
        return datasets.Dataset.from_generator(
            shard_rows,
            gen_kwargs={
                "files": [str(f.resolve()) for f in files], "name": name, "task": spec.task or "",
                "instruction": spec.instruction or "", "on_error": spec.on_error, "max_samples": spec.max_samples,
                "stamps": [os.stat(f).st_mtime for f in files], "schema": ROW_SCHEMA,
            },
            cache_dir=cache_dir,
        )
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, InputError):
            raise cause from None
        raise
