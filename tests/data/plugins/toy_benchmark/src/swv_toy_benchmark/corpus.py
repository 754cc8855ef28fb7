"""A corpus layout: one folder per split, a prompts.txt table and the audio files beside it."""

from pathlib import Path

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusLayout, CorpusOptions, split_dir


class ToyFolderOptions(CorpusOptions):
    """The shared options plus one of the layout's own (with a default)."""

    table: str = "prompts.txt"


class ToyFolder(CorpusLayout):
    def entries(self, source: Path):
        table = split_dir(source, self.config.split) / self.config.table
        if not table.is_file():
            raise InputError(f"{table}: toy prompts table not found")
        for line_no, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
            stem, sep, text = line.partition("|")
            if not sep:
                raise InputError(f"{table}:{line_no}: expected '<stem>|<text>'")
            fields = {"id": stem, "text": text.strip(), "task": "asr", "language": self.config.language or "en"}
            yield f"{table}:{line_no}", table.parent / f"{stem}.wav", fields
