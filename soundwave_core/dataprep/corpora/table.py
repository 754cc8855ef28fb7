"""Generic ``audio,text`` tables (``--format csv`` and ``--format tsv``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, csv_rows, finite_duration, text_lines

#: Manifest fields a generic CSV/TSV table may carry besides its audio column.
TABLE_FIELDS = ("id", "text", "instruction", "response", "task", "target_text", "language",
                "target_language", "label", "speaker", "duration")


class TableLayout(CorpusLayout):
    """SOURCE is a table (CSV, or TSV for ``.tsv`` files) with a header naming an ``audio`` (or
    ``path``) column and at least one of ``text``, ``target_text``, ``response``, ``label``; other
    known manifest fields are copied. Audio paths are relative to the table's folder (or absolute)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        if not source.exists():
            raise InputError(f"{source}: table not found")
        reader = csv.reader(text_lines(source), delimiter="\t" if source.suffix.lower() == ".tsv" else ",")
        rows = csv_rows(reader, source)
        names = next(rows, [])
        audio_col = next((c for c in ("audio", "path") if c in names), None)
        if audio_col is None or not any(c in names for c in ("text", "target_text", "response", "label")):
            raise InputError(f"{source}: the header must name an 'audio' (or 'path') column and one of "
                             f"'text', 'target_text', 'response', 'label' (found: {', '.join(names)})")
        for values in rows:
            if not values:
                continue
            where = f"{source}:{reader.line_num}"
            if len(values) != len(names):
                raise InputError(f"{where}: expected {len(names)} columns")
            row = dict(zip(names, values))
            audio = Path(row[audio_col].strip()).expanduser()
            yield where, audio if audio.is_absolute() else source.parent / audio, self._fields(row, where)

    def _fields(self, row: dict[str, str], where: str) -> dict[str, Any]:
        fields: dict[str, Any] = {k: row[k].strip() for k in TABLE_FIELDS if row.get(k, "").strip()}
        if "duration" in fields:
            fields["duration"] = finite_duration(fields["duration"], where)
        fields.setdefault("task", "asr" if "text" in fields and "target_text" not in fields else "")
        if not fields["task"]:
            del fields["task"]
        if self.config.language and "language" not in fields:
            fields["language"] = self.config.language
        return fields
