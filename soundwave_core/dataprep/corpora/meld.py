"""MELD in its own released layout."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from swv.core.errors import InputError, UsageError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, csv_rows, require_columns, text_lines

#: MELD's emotion labels, in the order its paper lists them.
MELD_EMOTIONS = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
#: The folder each split's clips are released in (``MELD.Raw``).
MELD_CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
#: Audio files read for a clip, first found wins (MELD releases mp4 videos: extract their audio).
MELD_AUDIO_SUFFIXES = (".wav", ".flac")


class MeldLayout(CorpusLayout):
    """SOURCE is ``MELD.Raw``: ``<split>_sent_emo.csv`` (columns ``Utterance``, ``Speaker``,
    ``Emotion``, ``Dialogue_ID``, ``Utterance_ID``; ``--split train|dev|test``, default test) and
    the clips ``dia<D>_utt<U>.wav`` (or ``.flac``) in the split's release folder
    (``output_repeated_splits_test`` ...; ``--clips`` names another). The release's clips are mp4
    videos: their audio must be extracted first (e.g. ``ffmpeg -i X.mp4 -ac 1 -ar 16000 X.wav``).
    ``task: emotion``, ``label`` (the emotion), ``text`` (the utterance), ``speaker``."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        split = self.config.split or "test"
        if split not in MELD_CLIP_FOLDERS:
            raise UsageError(f"--split: MELD has no split {split!r} (expected one of {', '.join(MELD_CLIP_FOLDERS)})")
        table = source / f"{split}_sent_emo.csv"
        if not table.is_file():
            raise InputError(f"{table}: MELD table not found (SOURCE is the MELD.Raw folder)")
        clips = self.config.clips or source / MELD_CLIP_FOLDERS[split]
        reader = csv.reader(text_lines(table))
        rows = csv_rows(reader, table)
        names = [name.strip() for name in next(rows, [])]
        require_columns(table, dict.fromkeys(names, ""), ("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"))
        for values in rows:
            where = f"{table}:{reader.line_num}"
            row = dict(zip(names, (value.strip() for value in values)))
            if len(values) != len(names):
                raise InputError(f"{where}: expected {len(names)} columns, got {len(values)}")
            if row["Emotion"] not in MELD_EMOTIONS:
                raise InputError(f"{where}: emotion {row['Emotion']!r} is not one of {', '.join(MELD_EMOTIONS)}")
            stem = f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
            fields = {"id": stem, "task": "emotion", "label": row["Emotion"], "text": " ".join(row["Utterance"].split())}
            if row.get("Speaker"):
                fields["speaker"] = row["Speaker"]
            yield where, self._clip(clips, stem, where), fields

    @staticmethod
    def _clip(clips: Path, stem: str, where: str) -> Path:
        """The clip's audio file; an mp4 video alone is one line saying to extract its audio."""
        for suffix in MELD_AUDIO_SUFFIXES:
            path = corpus_file(clips, clips, stem + suffix, where)
            if path.is_file():
                return path
        if (clips / f"{stem}.mp4").is_file():
            raise InputError(f"{clips / stem}.mp4: MELD's clips are mp4 videos; extract their audio to "
                             f"{stem}.wav first (ffmpeg -i {stem}.mp4 -ac 1 -ar 16000 {stem}.wav)")
        return clips / f"{stem}{MELD_AUDIO_SUFFIXES[0]}"
