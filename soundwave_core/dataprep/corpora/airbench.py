"""AIR-Bench (foundation and chat) in its own released layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, json_text, read_json_list

#: AIR-Bench's choice fields, in option order A, B, C, D (C and D are empty for two-way questions).
AIRBENCH_CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


def _track(source: Path, track: str) -> tuple[Path, Path]:
    """The track folder (``<root>/<track>``, or ``source`` itself) and its ``<track>_meta.json``."""
    folder = source if (source / f"{track}_meta.json").is_file() else source / track
    return folder, folder / f"{track}_meta.json"


def _entry(folder: Path, meta: Path, index: int, item: dict[str, Any]) -> tuple[str, Path, dict[str, Any]]:
    """Where an item is listed, its audio (``<track>/<task_name>_<dataset_name>/<path>``) and the
    fields every track has: ``id`` (task, dataset and ``uniq_id``), ``task``, ``question``."""
    where = f"{meta}: item #{index}"
    task, dataset = json_text(item, "task_name", where), json_text(item, "dataset_name", where)
    uid = json_text(item, "uniq_id", where)
    fields = {"id": f"{task}_{dataset}_{uid}", "task": task, "question": json_text(item, "question", where),
              "dataset": dataset}
    audio = corpus_file(folder, folder / f"{task}_{dataset}", json_text(item, "path", where), where)
    return where, audio, fields


class AirBenchFoundationLayout(CorpusLayout):
    """SOURCE is the AIR-Bench release (``<root>/Foundation/Foundation_meta.json``, or the
    ``Foundation`` folder itself): a JSON list of ``path``, ``question``, ``choice_a`` ...
    ``choice_d``, ``answer_gt``, ``task_name``, ``dataset_name``, ``uniq_id``, the audio in
    ``Foundation/<task_name>_<dataset_name>/<path>``. ``task`` (the task name), ``question``,
    ``options`` (the non-empty choices), ``label`` (``answer_gt``, one of them)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        folder, meta = _track(source, "Foundation")
        for index, item in enumerate(read_json_list(meta, "AIR-Bench Foundation_meta.json")):
            where, audio, fields = _entry(folder, meta, index, item)
            options = [str(item[key]).strip() for key in AIRBENCH_CHOICES if str(item.get(key) or "").strip()]
            label = json_text(item, "answer_gt", where)
            if label not in options:
                raise InputError(f"{where}: answer_gt {label!r} is not one of its choices {options}")
            yield where, audio, {**fields, "options": options, "label": label}


class AirBenchChatLayout(CorpusLayout):
    """SOURCE is the AIR-Bench release (``<root>/Chat/Chat_meta.json``, or the ``Chat`` folder
    itself): a JSON list of ``path``, ``question``, ``answer_gt``, ``task_name``,
    ``dataset_name``, ``uniq_id``, the audio in ``Chat/<task_name>_<dataset_name>/<path>``.
    ``task`` (the task name), ``question``, ``response`` (``answer_gt``, the reference answer)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        folder, meta = _track(source, "Chat")
        for index, item in enumerate(read_json_list(meta, "AIR-Bench Chat_meta.json")):
            where, audio, fields = _entry(folder, meta, index, item)
            yield where, audio, {**fields, "response": json_text(item, "answer_gt", where)}
