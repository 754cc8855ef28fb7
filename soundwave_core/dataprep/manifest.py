"""`swv data manifest`: build a JSONL manifest (:mod:`swv.data.manifest`) from a folder of audio
with sidecar transcripts or a transcript table."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, UsageError
from swv.core.progress import Report, progress
from swv.data.manifest import (
    SIDECAR_EXTENSIONS,
    audio_extensions,
    audio_ref,
    write_manifest,
)
from swv.data.missing_audio import DEFAULT_ON_MISSING, MissingAudio

# --------------------------------------------------------------------------- building


@dataclass
class ManifestReport(Report):
    """Result of :func:`build_manifest`."""

    records: list[dict[str, Any]] = field(default_factory=list)


def _clean_text(text: str) -> str:
    return " ".join(text.split())


def _table_dialect(path: Path, sample: str) -> tuple[str, int]:
    suffix = path.suffix.lower()
    if suffix == ".tsv" or (suffix != ".csv" and "\t" in sample):
        return "\t", csv.QUOTE_NONE
    return ",", csv.QUOTE_MINIMAL


def text_lines(path: Path, what: str = "table") -> Iterator[str]:
    """The lines of text file ``path`` (a regular file), line endings kept (CRLF as written):
    UTF-8, a byte-order mark on the first line dropped; an undecodable line is a one-line
    :class:`InputError` naming the file and line."""
    from swv.core.io import open_regular

    with open_regular(path, what) as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                 "re-encode the file as UTF-8") from None


def csv_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The rows of ``csv`` ``reader`` over ``path``; a malformed row (a field over the csv
    module's size limit, a stray quote or NUL) is one line naming the file and line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed table row ({exc})") from None
        yield row


def read_transcript_table(path: str | os.PathLike[str]) -> dict[str, tuple[int, str]]:
    """Read a ``path,text`` table (CSV, or TSV for ``.tsv`` / tab-separated files).

    A header row is used when it names ``path`` and ``text`` columns (other columns are
    ignored); otherwise every row must have exactly two columns. Returns
    ``{path: (line_no, text)}``; duplicate paths and malformed rows raise :class:`InputError`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: transcript table not found")
    lines = list(text_lines(path, "transcript table"))
    delimiter, quoting = _table_dialect(path, "".join(lines)[:4096])
    sep = "<TAB>" if delimiter == "\t" else ","
    rows = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    table: dict[str, tuple[int, str]] = {}
    cols: tuple[int, int] | None = None
    width = 2
    for row in csv_rows(rows, path):
        line_no = rows.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if cols is None:
            names = [c.strip().lower() for c in row]
            cols = (0, 1)
            if "path" in names and "text" in names:
                cols = (names.index("path"), names.index("text"))
                width = len(row)
                continue
        if len(row) != width:
            raise InputError(
                f"{path}:{line_no}: expected {width} columns (path{sep}text), got {len(row)}"
                + (" (quote texts that contain commas)" if delimiter == "," and len(row) > width else "")
            )
        key, text = row[cols[0]].strip(), _clean_text(row[cols[1]])
        if not key:
            raise InputError(f"{path}:{line_no}: empty path")
        key = Path(key).as_posix()
        if key in table:
            raise InputError(f"{path}:{line_no}: duplicate path {key!r} (first on line {table[key][0]})")
        table[key] = (line_no, text)
    return table


def _find_audio(root: Path) -> list[Path]:
    exts = audio_extensions()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _sidecar_text(audio: Path) -> str | None:
    for ext in SIDECAR_EXTENSIONS:
        side = audio.with_suffix(ext)
        if side.is_file():
            try:
                return _clean_text(side.read_text(encoding="utf-8-sig"))
            except UnicodeDecodeError as exc:
                raise InputError(f"{side}: transcript is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return None


def _stem_counts(root: Path, files: list[Path]) -> dict[str, int]:
    """How many of ``files`` share each relative path without extension."""
    stems: dict[str, int] = {}
    for f in files:
        stem = f.relative_to(root).with_suffix("").as_posix()
        stems[stem] = stems.get(stem, 0) + 1
    return stems


@dataclass
class _RecordBuilder:
    """Turns one audio file of the folder into a manifest record, or reports why it cannot."""

    root: Path
    out: Path
    task: str
    language: str | None
    stems: dict[str, int]
    table: dict[str, tuple[int, str]] | None
    report: ManifestReport
    used_keys: set[str] = field(default_factory=set)

    def table_text(self, table: dict[str, tuple[int, str]], f: Path, rel: str, stem: str) -> str | None:
        """The table's transcript of ``f`` (looked up by relative path, stem or absolute path)."""
        key = next((k for k in (rel, stem, str(f.absolute())) if k in table), None)
        if key is None:
            return None
        self.used_keys.add(key)
        return table[key][1]

    def record(self, f: Path) -> dict[str, Any] | None:
        from swv.core.audio import audio_duration

        rel = f.relative_to(self.root).as_posix()
        stem = f.relative_to(self.root).with_suffix("").as_posix()
        if self.table is not None:
            text = self.table_text(self.table, f, rel, stem)
        else:
            try:
                text = _sidecar_text(f)
            except InputError as exc:
                self.report.drop("unreadable transcript", str(exc))
                return None
        if text is None:
            self.report.drop("no transcript", rel)
            return None
        if not text:
            self.report.drop("empty transcript", rel)
            return None
        try:
            duration = audio_duration(f)
        except InputError as exc:
            self.report.drop("unreadable audio", str(exc))
            return None
        record: dict[str, Any] = {
            "id": stem if self.stems[stem] == 1 else rel,
            "audio": audio_ref(f, self.out),
            "text": text,
            "task": self.task,
            "duration": round(duration, 6),
        }
        if self.language:
            record["language"] = self.language
        return record


def _check_inputs(root: Path, task: str) -> None:
    if not root.is_dir():
        raise InputError(f"{root}: audio folder not found" if not root.exists() else f"{root}: not a folder")
    if not task.strip():
        raise UsageError("--task must not be empty")


def build_manifest(
    audio_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    task: str = "asr",
    transcripts: str | os.PathLike[str] | None = None,
    language: str | None = None,
    show_progress: bool = True,
    on_missing: str = DEFAULT_ON_MISSING,
) -> ManifestReport:
    """Build a manifest from a folder of audio files (searched recursively).

    Transcripts come from a sidecar ``.txt`` (preferred) or ``.lab`` file with the same
    stem, or, when ``transcripts`` is given, from a CSV/TSV ``path,text`` table whose
    paths are relative to ``audio_dir`` (or absolute), with or without the audio
    extension. Durations come from audio headers. The ``id`` is the relative path
    without extension (with the extension when two files share a stem). Files
    without a transcript, with an empty one, or with an unreadable header are
    skipped and reported; table rows naming no audio file are missing clips, handled by
    ``on_missing`` (:mod:`swv.data.missing_audio`: ``fail`` stops, ``skip`` drops and reports them).
    """
    root = Path(audio_dir)
    _check_inputs(root, task)
    out = Path(out)
    report = ManifestReport(command="manifest", output=out)
    table = read_transcript_table(transcripts) if transcripts is not None else None

    files = _find_audio(root)
    if not files:
        raise InputError(f"{root}: no audio files found (looked for {', '.join(sorted(audio_extensions()))})")
    builder = _RecordBuilder(root, out, task, language, _stem_counts(root, files), table, report)
    for f in progress(files, total=len(files), desc="manifest", enabled=show_progress):
        record = builder.record(f)
        if record is not None:
            report.records.append(record)

    if table is not None:
        missing = MissingAudio(on_missing)
        for key, (line_no, _) in table.items():
            if key not in builder.used_keys:
                missing.add(f"{Path(transcripts).name}:{line_no}: {key}")  # type: ignore[arg-type]
                report.drop("table row without audio file", missing.found[-1])
        missing.enforce(len(table), "table row(s)")
    if not report.records:
        raise InputError(f"{root}: none of the {len(files)} audio file(s) has a usable transcript"
                         + (f" in {transcripts}" if transcripts is not None else " (.txt or .lab sidecar)"))
    report.written = write_manifest(out, report.records)
    hours = sum(r["duration"] for r in report.records) / 3600
    report.notes.append(f"{len(files)} audio file(s) found, {hours:.3f} h kept; "
                        f"transcripts from {'table ' + str(transcripts) if table is not None else 'sidecar .txt/.lab files'}")
    return report
