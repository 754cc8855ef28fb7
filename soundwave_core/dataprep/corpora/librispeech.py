"""LibriSpeech in its own layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, split_dir, text_lines


class LibriSpeechLayout(CorpusLayout):
    """``<root>[/<split>]/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with lines
    ``<utt-id> <TRANSCRIPT>`` and ``<utt-id>.flac`` beside it. ``task: asr``, ``language: en``."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        base = split_dir(source, self.config.split)
        tables = sorted(base.rglob("*.trans.txt"))
        if not tables:
            raise InputError(f"{base}: no LibriSpeech *.trans.txt files found")
        for table in tables:
            for line_no, line in enumerate(text_lines(table, "transcript table"), start=1):
                if not line.strip():
                    continue
                utt, _, text = line.strip().partition(" ")
                if not text.strip():
                    raise InputError(f"{table}:{line_no}: expected '<utterance id> <transcript>'")
                fields = {"id": utt, "text": " ".join(text.split()), "task": "asr",
                          "language": self.config.language or "en", "speaker": utt.split("-")[0]}
                where = f"{table}:{line_no}"
                yield where, corpus_file(base, table.parent, f"{utt}.flac", where), fields
