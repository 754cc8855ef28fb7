"""Common Voice in its own layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, read_tsv, require_columns


class CommonVoiceLayout(CorpusLayout):
    """``<root>/<split>.tsv`` (header ``client_id path sentence ... locale ...``) and
    ``<root>/clips/<path>``. ``task: asr``; ``language`` from ``locale`` (or ``--language``)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        opts = self.config
        table = source / f"{opts.split or 'test'}.tsv"
        if not table.is_file():
            raise InputError(f"{table}: CommonVoice split table not found (choose it with --split)")
        clips = opts.clips or source / "clips"
        for line_no, row in read_tsv(table):
            assert isinstance(row, dict)
            require_columns(table, row, ("path", "sentence"))
            fields: dict[str, Any] = {"id": Path(row["path"]).stem, "text": " ".join(row["sentence"].split()),
                                      "task": "asr"}
            language = opts.language or row.get("locale", "")
            if language:
                fields["language"] = language
            for name, column in (("speaker", "client_id"), ("gender", "gender"), ("age", "age")):
                if row.get(column):
                    fields[name] = row[column]
            where = f"{table}:{line_no}"
            yield where, corpus_file(clips, clips, row["path"], where), fields
