"""FLEURS in its own layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, read_tsv


class FleursLayout(CorpusLayout):
    """``<root>`` is one language folder (``.../en_us``) with ``<split>.tsv`` (no header:
    ``id file_name raw_transcription transcription tokens num_samples gender``) and the audio in
    ``audio/<split>/`` (or ``<split>/``). ``task: asr``; ``language`` from the folder name."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        split = self.config.split or "test"
        table = source / f"{split}.tsv"
        if not table.is_file():
            raise InputError(f"{table}: FLEURS split table not found (SOURCE is one language folder, e.g. .../en_us)")
        audio_dir = next((d for d in (source / "audio" / split, source / split) if d.is_dir()), source / "audio" / split)
        language = self.config.language or source.name.split("_")[0]
        for line_no, row in read_tsv(table, header=False):
            assert isinstance(row, list)
            if len(row) < 7:
                raise InputError(f"{table}:{line_no}: expected 7 tab-separated columns "
                                 f"(id, file_name, raw_transcription, transcription, tokens, num_samples, gender), "
                                 f"got {len(row)}")
            fields = {"id": Path(row[1]).stem, "text": " ".join(row[2].split()), "task": "asr",
                      "language": language, "gender": row[6].strip().lower()}
            where = f"{table}:{line_no}"
            yield where, corpus_file(audio_dir, audio_dir, row[1], where), fields
