"""MuST-C in its own released layout (one ``en-xx`` folder)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from swv.core.errors import InputError, UsageError
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, corpus_file, text_lines

_PAIR = re.compile(r"^en-(?P<tgt>[a-z]{2})$")
#: MuST-C's common test set, the split read without ``--split``.
MUSTC_TEST_SPLIT = "tst-COMMON"


class MuSTCLayout(CorpusLayout):
    """SOURCE is one language pair of MuST-C, ``en-xx`` (e.g. ``MUSTC_v1.0/en-nl``): the split's
    segment list ``data/<split>/txt/<split>.yaml`` (``wav``, ``offset``, ``duration`` per
    segment), its line-aligned ``<split>.en`` and ``<split>.xx`` texts and the talks in
    ``data/<split>/wav/`` (``--split``, default ``tst-COMMON``). The segments are cut from the
    talks into ``--clips`` (required; a segment already there is kept). ``task: st``, ``text``,
    ``target_text``, ``language: en``, ``target_language``, ``speaker``."""

    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        match = _PAIR.match(source.name)
        if match is None:
            raise InputError(f"{source}: expected a MuST-C language-pair folder named en-xx (e.g. en-de)")
        if self.config.clips is None:
            raise UsageError("--clips: the folder MuST-C's segments are cut into is required for --format mustc")
        split = self.config.split or MUSTC_TEST_SPLIT
        txt = source / "data" / split / "txt"
        segments = self._segments(txt / f"{split}.yaml")
        english, target = (list(text_lines(txt / f"{split}.{lang}", "MuST-C text")) for lang in ("en", match["tgt"]))
        if not len(segments) == len(english) == len(target):
            raise InputError(f"{txt}: {split}.yaml lists {len(segments)} segments but {split}.en has {len(english)} "
                             f"lines and {split}.{match['tgt']} {len(target)}")
        talks, counts = source / "data" / split / "wav", dict[str, int]()
        for index, segment in enumerate(segments):
            where = f"{txt / split}.yaml: segment #{index}"
            talk = corpus_file(talks, talks, str(segment.get("wav", "")), where)
            counts[talk.stem] = counts.get(talk.stem, 0) + 1
            stem = f"{talk.stem}_{counts[talk.stem] - 1}"
            fields: dict[str, Any] = {"id": stem, "task": "st", "text": english[index].strip(),
                                      "target_text": target[index].strip(), "language": "en",
                                      "target_language": match["tgt"]}
            if segment.get("speaker_id"):
                fields["speaker"] = str(segment["speaker_id"])
            yield where, _cut(talk, self.config.clips / f"{stem}.wav", _span(segment, where), where), fields

    @staticmethod
    def _segments(path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            raise InputError(f"{path}: MuST-C segment list not found")
        try:
            segments = yaml.safe_load("".join(text_lines(path, "MuST-C segment list")))
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
            raise InputError(f"{path}: expected a YAML list of segments ({{wav, offset, duration}})")
        return segments


def _span(segment: dict[str, Any], where: str) -> tuple[float, float]:
    """A segment's ``offset`` and ``duration`` in seconds (finite, >= 0; duration > 0)."""
    try:
        offset, duration = float(segment["offset"]), float(segment["duration"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: expected numbers 'offset' and 'duration' (seconds)") from None
    if not (math.isfinite(offset) and math.isfinite(duration)) or offset < 0 or duration <= 0:
        raise InputError(f"{where}: offset {offset} / duration {duration} is not a span of the talk")
    return offset, duration


def _cut(talk: Path, clip: Path, span: tuple[float, float], where: str) -> Path:
    """``clip``: the span of ``talk`` (cut once; a clip already there is kept). A talk that is
    missing is returned as is (the run's ``--on-missing`` policy decides)."""
    import soundfile as sf

    from swv.core.audio import write_audio

    if clip.is_file() or not talk.is_file():
        return clip if clip.is_file() else talk
    try:
        rate = sf.info(str(talk)).samplerate
        wav, _ = sf.read(str(talk), start=round(span[0] * rate), frames=round(span[1] * rate), dtype="float32")
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError
        raise InputError(f"{where}: {talk}: not a readable audio file ({str(exc).splitlines()[0]})") from None
    if wav.shape[0] == 0:
        raise InputError(f"{where}: the segment lies past the end of {talk}")
    clip.parent.mkdir(parents=True, exist_ok=True)
    write_audio(clip, wav, rate)
    return clip
