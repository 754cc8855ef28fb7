"""The shared columns every data source's rows have, and turning one source record into such a
row (manifests, Hugging Face datasets and tar shards alike)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from swv.assets import ASSET_PREFIX
from swv.core.errors import InputError

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


def normalise_row(record: dict[str, Any], manifest: str, line_no: int, task: str, instruction: str, resolve_audio: Any,
               audio_duration: Any, embedded: tuple[str, float] | None = None, missing_ok: bool = False) -> dict[str, Any]:
    """One source record as a row of the shared columns. ``embedded`` is ``(name, duration)`` of
    audio whose bytes travel with the row (Hugging Face datasets), instead of an ``audio`` path.
    An audio path that names no file is an error unless ``missing_ok`` (the row then keeps the
    path, duration -1, for a later ``--on-missing`` check to count)."""
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
        row["audio"], row["duration"] = path_audio(record, resolve_audio(manifest, record), where, audio_duration, missing_ok)
    else:
        row["audio"] = ""
        row["duration"] = -1.0
    if not (row["text"] or row["response"] or row["target_text"]):
        raise InputError(f"{where}: needs a target: 'text', 'response' or 'target_text'")
    if not row["audio"] and not row["instruction"]:
        raise InputError(f"{where}: a text-only record needs an 'instruction'")
    row["tags"] = record_tags(record.get("tags"), where)
    row["line"] = line_no
    row["manifest"] = str(manifest)
    return row


def path_audio(record: dict[str, Any], path: Path, where: str, audio_duration: Any, missing_ok: bool) -> tuple[str, float]:
    """``(absolute path, duration)`` of a record's audio file (the record's ``duration`` when it
    gives one); a missing file is an error, or ``(path, -1.0)`` with ``missing_ok``."""
    if not path.is_file():
        if missing_ok:
            return str(path), -1.0
        raise InputError(f"{where}: audio file not found: {path}")
    duration = record.get("duration")
    if duration is not None:
        return str(path.resolve()), record_duration(duration, where)
    try:
        return str(path.resolve()), audio_duration(path)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def record_duration(value: Any, where: str) -> float:
    """A record's ``duration``: a finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: field 'duration' must be a positive number of seconds, got {value!r}")
    return float(value)


def record_tags(value: Any, where: str) -> str:
    """A record's ``tags`` (special tokens its text uses, e.g. ``["<cough>"]`` from
    ``swv data sound-insert``) as one space-separated string column."""
    if value in (None, "", []):
        return ""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in items):
        raise InputError(f"{where}: field 'tags' must be a list of tokens without spaces, got {value!r}")
    return " ".join(items)
