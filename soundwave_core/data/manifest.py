"""JSONL manifests: the format and its reader and writer.

A manifest has one JSON object per line. ``audio`` is a path relative to the
manifest's own directory (or absolute); the other fields are ``text`` and/or
``instruction``/``response``, ``task``, and optionally ``id``, ``duration``
(seconds), ``language``, ``target_text``, ``speaker``, ``label`` and ``options``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError

#: File extensions recognised as audio, with the libsndfile format that decodes them.
_EXTENSION_FORMATS = {
    ".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG",
    ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".au": "AU", ".snd": "AU",
    ".caf": "CAF", ".w64": "W64", ".rf64": "RF64", ".sph": "NIST", ".nist": "NIST", ".voc": "VOC",
    ".htk": "HTK", ".paf": "PAF", ".svx": "SVX", ".avr": "AVR", ".wve": "WVE", ".sd2": "SD2",
    ".pvf": "PVF", ".sds": "SDS",
}

#: Sidecar transcript extensions, in order of preference.
SIDECAR_EXTENSIONS = (".txt", ".lab")


def audio_extensions() -> frozenset[str]:
    """Extensions (lower case, with dot) of the audio formats the installed libsndfile can read."""
    import soundfile as sf

    available = set(sf.available_formats())
    return frozenset(ext for ext, fmt in _EXTENSION_FORMATS.items() if fmt in available)


# --------------------------------------------------------------------------- reading


def read_manifest(
    path: str | os.PathLike[str], *, required: Iterable[str] = ("audio",)
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_no, record)`` for every non-blank line of a JSONL manifest.

    Raises :class:`InputError` naming the file and line for invalid JSON, a line
    that is not a JSON object, or a missing/empty ``required`` field.
    """
    from swv.core.io import open_regular

    path = Path(path)
    with open_regular(path, "manifest") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            for name in required:
                if name not in record:
                    raise InputError(f"{path}:{line_no}: missing field '{name}'")
                if name == "audio" and (not isinstance(record["audio"], str) or not record["audio"].strip()):
                    raise InputError(f"{path}:{line_no}: field 'audio' must be a non-empty path string")
            yield line_no, record


def resolve_audio(manifest_path: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """The audio file of ``record``: absolute as written, or relative to the manifest's directory."""
    audio = record.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise InputError(f"{manifest_path}: record {record.get('id', '?')!r} has no 'audio' path")
    p = Path(audio).expanduser()
    return p if p.is_absolute() else Path(manifest_path).parent / p


def audio_ref(audio_path: str | os.PathLike[str], manifest_path: str | os.PathLike[str]) -> str:
    """How a manifest at ``manifest_path`` should refer to ``audio_path``: relative to its directory."""
    base = Path(manifest_path).absolute().parent
    return Path(os.path.relpath(Path(audio_path).absolute(), base)).as_posix()


def rebase_record(record: dict[str, Any], src_manifest: str | os.PathLike[str],
                  dst_manifest: str | os.PathLike[str]) -> dict[str, Any]:
    """A copy of ``record`` whose relative ``audio`` path is valid from ``dst_manifest``'s directory."""
    out = dict(record)
    if isinstance(out.get("audio"), str) and not Path(out["audio"]).expanduser().is_absolute():
        out["audio"] = audio_ref(resolve_audio(src_manifest, out), dst_manifest)
    return out


def record_label(path: str | os.PathLike[str], line_no: int, record: dict[str, Any]) -> str:
    """A short name for a record in messages: ``m.jsonl:7 (id)``."""
    rid = record.get("id")
    return f"{Path(path).name}:{line_no}" + (f" ({rid})" if rid is not None else "")


def dump_record(record: dict[str, Any]) -> str:
    """One manifest line (with the trailing newline): strict JSON, so a NaN or infinite number
    is refused (one line naming the record) rather than written as ``NaN``/``Infinity``."""
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
        raise InputError(f"record {record.get('id', '?')!r}: field(s) {', '.join(bad) or '?'} are not finite "
                         "numbers; a manifest is strict JSON") from None


def write_manifest(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` atomically as JSONL; returns the number written."""
    from swv.core.io import atomic_file

    n = 0
    with atomic_file(path) as fh:
        for record in records:
            fh.write(dump_record(record))
            n += 1
    return n
