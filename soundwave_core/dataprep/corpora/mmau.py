"""MMAU (test-mini) in its own released layout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from swv.core.errors import InputError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, json_text, read_json_list


class MMAULayout(CorpusLayout):
    """SOURCE is MMAU's JSON list (``mmau-test-mini.json``): ``id``, ``audio_id`` (the clip,
    relative to the JSON's folder, e.g. ``./test-mini-audios/<id>.wav``), ``question``,
    ``choices``, ``answer`` (one of them) and ``task`` (``sound``, ``music`` or ``speech``).
    ``--clips`` names the folder of the clips when it is elsewhere (looked up by file name).
    ``task``, ``question``, ``options`` (the choices), ``label`` (the answer)."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        for index, item in enumerate(read_json_list(source, "MMAU JSON list (e.g. mmau-test-mini.json)")):
            where = f"{source}: item #{index}"
            choices = item.get("choices")
            if not isinstance(choices, list) or len(choices) < 2:
                raise InputError(f"{where}: field 'choices' must be a list of two or more answers")
            options = [str(choice).strip() for choice in choices]
            label = json_text(item, "answer", where)
            if label not in options:
                raise InputError(f"{where}: answer {label!r} is not one of its choices {options}")
            fields = {"id": json_text(item, "id", where), "task": json_text(item, "task", where),
                      "question": json_text(item, "question", where), "options": options, "label": label}
            name = json_text(item, "audio_id", where)
            clips = self.config.clips
            audio = (corpus_file(source.parent, source.parent, name, where) if clips is None
                     else corpus_file(clips, clips, Path(name).name, where))
            yield where, audio, fields
