"""Generic ``audio,text`` tables (``--format csv`` and ``--format tsv``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout

#: Manifest fields a generic CSV/TSV table may carry besides its audio column.
TABLE_FIELDS = ("id", "text", "instruction", "response", "task", "target_text", "language",
                "target_language", "label", "speaker", "duration")


class TableLayout(CorpusLayout):
    """SOURCE is a table (CSV, or TSV for ``.tsv`` files) with a header naming an ``audio`` (or
    ``path``) column and at least one of ``text``, ``target_text``, ``response``, ``label``; other
    known manifest fields are copied. Audio paths are relative to the table's folder (or absolute)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        if not source.is_file():
            raise InputError(f"{source}: table not found")
        delimiter = "\t" if source.suffix.lower() == ".tsv" else ","
        with open(source, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            names = reader.fieldnames or []
            audio_col = next((c for c in ("audio", "path") if c in names), None)
            if audio_col is None or not any(c in names for c in ("text", "target_text", "response", "label")):
                raise InputError(f"{source}: the header must name an 'audio' (or 'path') column and one of "
                                 f"'text', 'target_text', 'response', 'label' (found: {', '.join(names)})")
            for row in reader:
                where = f"{source}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    raise InputError(f"{where}: expected {len(names)} columns")
                audio = Path(row[audio_col].strip()).expanduser()
                yield where, audio if audio.is_absolute() else source.parent / audio, self._fields(row, where)

    def _fields(self, row: dict[str, str], where: str) -> dict[str, Any]:
        fields: dict[str, Any] = {k: row[k].strip() for k in TABLE_FIELDS if row.get(k, "").strip()}
        if "duration" in fields:
            try:
                fields["duration"] = float(fields["duration"])
            except ValueError:
                raise InputError(f"{where}: column 'duration' must be a number, got {fields['duration']!r}") from None
        fields.setdefault("task", "asr" if "text" in fields and "target_text" not in fields else "")
        if not fields["task"]:
            del fields["task"]
        if self.config.language and "language" not in fields:
            fields["language"] = self.config.language
        return fields
