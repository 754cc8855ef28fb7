"""`swv data manifest --format NAME`: swv manifests from the standard corpora's own layouts.

Each reader walks one corpus as it is distributed and yields ``(where, audio file, fields)``;
:func:`build_corpus_manifest` then checks the audio, reads its duration from the header and
writes the manifest (audio paths relative to the manifest). Layouts:

``librispeech``
    ``<root>[/<split>]/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with lines
    ``<utt-id> <TRANSCRIPT>`` and ``<utt-id>.flac`` beside it. ``task: asr``, ``language: en``.
``commonvoice``
    ``<root>/<split>.tsv`` (header ``client_id path sentence ... locale ...``) and
    ``<root>/clips/<path>``. ``task: asr``; ``language`` from ``locale`` (or ``--language``).
``covost2``
    SOURCE is a CoVoST 2 table, ``covost_v2.<src>_<tgt>.tsv`` (columns ``path sentence
    translation client_id`` and ``split``) or a per-split ``covost_v2.<src>_<tgt>.<split>.tsv``;
    ``--clips`` is the CommonVoice ``clips`` folder. ``task: st``, ``text`` (source transcript),
    ``target_text``, ``language``, ``target_language``.
``fleurs``
    ``<root>`` is one language folder (``.../en_us``) with ``<split>.tsv`` (no header:
    ``id file_name raw_transcription transcription tokens num_samples gender``) and the audio in
    ``audio/<split>/`` (or ``<split>/``). ``task: asr``; ``language`` from the folder name.
``vocalsound``
    ``<root>/audio_16k/<spk>_<n>_<label>.wav`` (the label is the file name's last part); with
    ``--split te|tr|val`` only the files listed in ``<root>/datafiles/<split>.json``.
    ``task: vocal_sound``, ``label`` (e.g. ``throat clearing``).
``csv`` / ``tsv``
    SOURCE is a table with a header naming an ``audio`` (or ``path``) column and at least one of
    ``text``, ``target_text``, ``response``, ``label``; other known manifest fields are copied.
    Audio paths are relative to the table's folder (or absolute).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, UsageError
from swv.core.progress import progress
from swv.data.manifest import audio_ref, write_manifest
from swv.dataprep.manifest import ManifestReport

#: One corpus entry: where it comes from (for messages), its audio file and its manifest fields.
CorpusEntry = tuple[str, Path, dict[str, Any]]

#: Manifest fields a generic CSV/TSV table may carry besides its audio column.
TABLE_FIELDS = ("id", "text", "instruction", "response", "task", "target_text", "language",
                "target_language", "label", "speaker", "duration")

#: VocalSound's file-name labels and the words used for them in manifests.
VOCALSOUND_LABELS = {
    "laughter": "laughter", "sigh": "sigh", "cough": "cough",
    "throatclearing": "throat clearing", "sneeze": "sneeze", "sniff": "sniff",
}


@dataclass(frozen=True)
class CorpusOptions:
    """What a layout reader may need besides the corpus root."""

    split: str | None = None
    language: str | None = None
    clips: Path | None = None


def _read_tsv(path: Path, *, header: bool = True) -> Iterator[tuple[int, dict[str, str] | list[str]]]:
    """Rows of a tab-separated file without quoting (as the corpora write them)."""
    csv.field_size_limit(1 << 24)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        names: list[str] | None = None
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if header and names is None:
                names = [c.strip() for c in row]
                continue
            if names is None:
                yield reader.line_num, row
                continue
            if len(row) != len(names):
                raise InputError(f"{path}:{reader.line_num}: expected {len(names)} tab-separated columns, got {len(row)}")
            yield reader.line_num, dict(zip(names, row))


def _require_columns(path: Path, row: dict[str, str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in row]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(row)})")


def _split_dir(root: Path, split: str | None) -> Path:
    if split is None:
        return root
    sub = root / split
    if not sub.is_dir():
        raise InputError(f"{sub}: split folder not found")
    return sub


def read_librispeech(root: Path, opts: CorpusOptions) -> Iterator[CorpusEntry]:
    base = _split_dir(root, opts.split)
    tables = sorted(base.rglob("*.trans.txt"))
    if not tables:
        raise InputError(f"{base}: no LibriSpeech *.trans.txt files found")
    for table in tables:
        for line_no, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if not text.strip():
                raise InputError(f"{table}:{line_no}: expected '<utterance id> <transcript>'")
            fields = {"id": utt, "text": " ".join(text.split()), "task": "asr",
                      "language": opts.language or "en", "speaker": utt.split("-")[0]}
            yield f"{table}:{line_no}", table.parent / f"{utt}.flac", fields


def read_commonvoice(root: Path, opts: CorpusOptions) -> Iterator[CorpusEntry]:
    table = root / f"{opts.split or 'test'}.tsv"
    if not table.is_file():
        raise InputError(f"{table}: CommonVoice split table not found (choose it with --split)")
    clips = opts.clips or root / "clips"
    for line_no, row in _read_tsv(table):
        assert isinstance(row, dict)
        _require_columns(table, row, ("path", "sentence"))
        fields: dict[str, Any] = {"id": Path(row["path"]).stem, "text": " ".join(row["sentence"].split()),
                                  "task": "asr"}
        language = opts.language or row.get("locale", "")
        if language:
            fields["language"] = language
        for name, column in (("speaker", "client_id"), ("gender", "gender"), ("age", "age")):
            if row.get(column):
                fields[name] = row[column]
        yield f"{table}:{line_no}", clips / row["path"], fields


_COVOST_NAME = re.compile(r"covost_v2\.(?P<src>[A-Za-z-]+)_(?P<tgt>[A-Za-z-]+)(?:\.(?P<split>\w+))?\.tsv$")


def read_covost2(table: Path, opts: CorpusOptions) -> Iterator[CorpusEntry]:
    match = _COVOST_NAME.search(table.name)
    if match is None:
        raise InputError(f"{table}: expected a CoVoST 2 table named covost_v2.<src>_<tgt>[.<split>].tsv")
    if opts.clips is None:
        raise UsageError("--clips: the CommonVoice clips folder is required for --format covost2")
    split = opts.split or match["split"] or "test"
    for line_no, row in _read_tsv(table):
        assert isinstance(row, dict)
        _require_columns(table, row, ("path", "sentence", "translation"))
        if "split" in row and row["split"] != split:
            continue
        fields: dict[str, Any] = {
            "id": Path(row["path"]).stem, "text": " ".join(row["sentence"].split()),
            "target_text": row["translation"].strip(), "task": "st",
            "language": match["src"], "target_language": match["tgt"],
        }
        if row.get("client_id"):
            fields["speaker"] = row["client_id"]
        yield f"{table}:{line_no}", opts.clips / row["path"], fields


def read_fleurs(root: Path, opts: CorpusOptions) -> Iterator[CorpusEntry]:
    split = opts.split or "test"
    table = root / f"{split}.tsv"
    if not table.is_file():
        raise InputError(f"{table}: FLEURS split table not found (SOURCE is one language folder, e.g. .../en_us)")
    audio_dir = next((d for d in (root / "audio" / split, root / split) if d.is_dir()), root / "audio" / split)
    language = opts.language or root.name.split("_")[0]
    for line_no, row in _read_tsv(table, header=False):
        assert isinstance(row, list)
        if len(row) < 7:
            raise InputError(f"{table}:{line_no}: expected 7 tab-separated columns "
                             f"(id, file_name, raw_transcription, transcription, tokens, num_samples, gender), got {len(row)}")
        fields = {"id": Path(row[1]).stem, "text": " ".join(row[2].split()), "task": "asr",
                  "language": language, "gender": row[6].strip().lower()}
        yield f"{table}:{line_no}", audio_dir / row[1], fields


def read_vocalsound(root: Path, opts: CorpusOptions) -> Iterator[CorpusEntry]:
    audio_dir = root / "audio_16k"
    if not audio_dir.is_dir():
        raise InputError(f"{audio_dir}: VocalSound audio folder not found")
    if opts.split is None:
        names = sorted(p.name for p in audio_dir.glob("*.wav"))
        where = str(audio_dir)
    else:
        listing = root / "datafiles" / f"{opts.split}.json"
        if not listing.is_file():
            raise InputError(f"{listing}: VocalSound split file not found (splits: te, tr, val)")
        try:
            data = json.loads(listing.read_text(encoding="utf-8"))["data"]
            names = [Path(item["wav"]).name for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{listing}: expected {{\"data\": [{{\"wav\": ...}}, ...]}} ({exc})") from None
        where = str(listing)
    for name in names:
        parts = Path(name).stem.split("_")
        if len(parts) != 3 or parts[2] not in VOCALSOUND_LABELS:
            raise InputError(f"{where}: {name}: expected <speaker>_<n>_<label>.wav with a label among "
                             f"{', '.join(VOCALSOUND_LABELS)}")
        fields = {"id": Path(name).stem, "label": VOCALSOUND_LABELS[parts[2]], "task": "vocal_sound",
                  "speaker": parts[0]}
        yield f"{where}: {name}", audio_dir / name, fields


def read_table(table: Path, opts: CorpusOptions) -> Iterator[CorpusEntry]:
    """A generic ``audio,text`` table (CSV, or TSV for ``.tsv`` files), with a header row."""
    if not table.is_file():
        raise InputError(f"{table}: table not found")
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    with open(table, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        names = reader.fieldnames or []
        audio_col = next((c for c in ("audio", "path") if c in names), None)
        if audio_col is None or not any(c in names for c in ("text", "target_text", "response", "label")):
            raise InputError(f"{table}: the header must name an 'audio' (or 'path') column and one of "
                             f"'text', 'target_text', 'response', 'label' (found: {', '.join(names)})")
        for row in reader:
            where = f"{table}:{reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                raise InputError(f"{where}: expected {len(names)} columns")
            fields: dict[str, Any] = {k: row[k].strip() for k in TABLE_FIELDS if row.get(k, "").strip()}
            if "duration" in fields:
                try:
                    fields["duration"] = float(fields["duration"])
                except ValueError:
                    raise InputError(f"{where}: column 'duration' must be a number, got {fields['duration']!r}") from None
            fields.setdefault("task", "asr" if "text" in fields and "target_text" not in fields else "")
            if not fields["task"]:
                del fields["task"]
            if opts.language and "language" not in fields:
                fields["language"] = opts.language
            audio = Path(row[audio_col].strip()).expanduser()
            yield where, audio if audio.is_absolute() else table.parent / audio, fields


#: ``--format`` name -> layout reader (SOURCE path, options).
CORPUS_READERS: dict[str, Callable[[Path, CorpusOptions], Iterator[CorpusEntry]]] = {
    "librispeech": read_librispeech,
    "commonvoice": read_commonvoice,
    "covost2": read_covost2,
    "fleurs": read_fleurs,
    "vocalsound": read_vocalsound,
    "csv": read_table,
    "tsv": read_table,
}


def corpus_entries(fmt: str, source: str | os.PathLike[str], opts: CorpusOptions) -> Iterator[CorpusEntry]:
    """The entries of ``source`` read in layout ``fmt`` (see the module docstring)."""
    reader = CORPUS_READERS.get(fmt)
    if reader is None:
        raise UsageError(f"--format: unknown corpus layout {fmt!r}, expected one of {', '.join(CORPUS_READERS)}")
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: not found")
    return reader(path, opts)


def build_corpus_manifest(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str,
    opts: CorpusOptions = CorpusOptions(),
    *,
    show_progress: bool = True,
) -> ManifestReport:
    """Write a manifest of every usable entry of a corpus in layout ``fmt``.

    Entries whose audio file is missing or unreadable are dropped and reported; a corpus
    with no usable entry is an error. Durations come from the audio headers.
    """
    from swv.core.audio import audio_duration

    out = Path(out)
    report = ManifestReport(command=f"manifest ({fmt})", output=out)
    seen: set[str] = set()
    for where, audio, fields in progress(corpus_entries(fmt, source, opts), total=None, desc="manifest",
                                         enabled=show_progress):
        if not audio.is_file():
            report.drop("audio file not found", f"{where}: {audio}")
            continue
        record = dict(fields)
        if "duration" not in record:
            try:
                record["duration"] = round(audio_duration(audio), 6)
            except InputError as exc:
                report.drop("unreadable audio", f"{where}: {exc}")
                continue
        record["audio"] = audio_ref(audio, out)
        if record.get("id") in seen:
            record["id"] = f"{record['id']}@{audio_ref(audio, out)}"
        seen.add(record.get("id", ""))
        report.records.append(record)
    if not report.records:
        raise InputError(f"{source}: no usable {fmt} entries found" + (f" for split {opts.split!r}" if opts.split else ""))
    report.written = write_manifest(out, report.records)
    hours = sum(r["duration"] for r in report.records) / 3600
    report.notes.append(f"{hours:.3f} h of audio in layout {fmt}")
    return report
