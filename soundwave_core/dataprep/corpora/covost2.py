"""CoVoST 2 in its own layout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, UsageError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, read_tsv, require_columns

_COVOST_NAME = re.compile(r"covost_v2\.(?P<src>[A-Za-z-]+)_(?P<tgt>[A-Za-z-]+)(?:\.(?P<split>\w+))?\.tsv$")


class CoVoST2Layout(CorpusLayout):
    """SOURCE is a CoVoST 2 table, ``covost_v2.<src>_<tgt>.tsv`` (columns ``path sentence
    translation client_id`` and ``split``) or a per-split ``covost_v2.<src>_<tgt>.<split>.tsv``;
    ``--clips`` is the CommonVoice ``clips`` folder. ``task: st``, ``text`` (source transcript),
    ``target_text``, ``language``, ``target_language``."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        match = _COVOST_NAME.search(source.name)
        if match is None:
            raise InputError(f"{source}: expected a CoVoST 2 table named covost_v2.<src>_<tgt>[.<split>].tsv")
        clips = self.config.clips
        if clips is None:
            raise UsageError("--clips: the CommonVoice clips folder is required for --format covost2")
        split = self.config.split or match["split"] or "test"
        for line_no, row in read_tsv(source):
            assert isinstance(row, dict)
            require_columns(source, row, ("path", "sentence", "translation"))
            if "split" in row and row["split"] != split:
                continue
            fields: dict[str, Any] = {
                "id": Path(row["path"]).stem, "text": " ".join(row["sentence"].split()),
                "target_text": row["translation"].strip(), "task": "st",
                "language": match["src"], "target_language": match["tgt"],
            }
            if row.get("client_id"):
                fields["speaker"] = row["client_id"]
            where = f"{source}:{line_no}"
            yield where, corpus_file(clips, clips, row["path"], where), fields
