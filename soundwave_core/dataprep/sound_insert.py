"""`swv data sound-insert`: embed labelled non-speech sounds between two speech segments.

Each output sample is ``speech A + sound + speech B`` and its transcript is
``"<text A> <label> <text B>"``, so the model learns to transcribe speech and sound
events together (paper section 3.1). Two ways to get A and B:

* ``concat`` (default): two different speech utterances; the tag position in the
  transcript is exact.
* ``split``: one utterance cut at a pause near its middle, namely the centre of the
  lowest-energy 25 ms frame (10 ms hop) whose centre lies in the middle third of the
  audio. Without a word alignment the transcript is cut at the word boundary whose
  share of the transcript's characters is closest to the cut's share of the audio
  duration, which is an approximation.

Sounds are standardised to ``sound_seconds`` (3 s) based on energy
(:func:`standardize_sound`): a longer clip keeps its highest-energy window (largest
sum of squared samples), a shorter one is padded with silence equally on both sides,
and the clip (before padding) is scaled to an RMS of ``sound_dbfs`` (-25 dBFS), then
scaled down if needed so the peak stays below 0.999. Sounds are used round-robin in
a seeded random order, so every sound is used about equally often.

A sound's ``label`` becomes the tag ``<label>``: lower-cased, with spaces and hyphens
turned into underscores (``Throat clearing`` -> ``<throat_clearing>``); only letters,
digits and underscores may remain. The tags used are reported (the training pipeline
adds them to the tokenizer as special tokens) and can be written to ``tags_out``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from swv.core.errors import InputError, UsageError
from swv.core.progress import Report, progress
from swv.data.manifest import (
    audio_ref,
    read_manifest,
    record_label,
    resolve_audio,
    write_manifest,
)

MODES = ("concat", "split")
_TAG_OK = re.compile(r"^\w+$")


def label_to_tag(label: str) -> str:
    """``"Throat clearing"`` -> ``"<throat_clearing>"``; raises :class:`ValueError` for unusable labels."""
    name = re.sub(r"[\s\-]+", "_", label.strip().lower())
    if not name or not _TAG_OK.match(name):
        raise ValueError(f"label {label!r} cannot be a tag (letters, digits, spaces, '-' and '_' only)")
    return f"<{name}>"


def standardize_sound(wav: np.ndarray, sample_rate: int, *, seconds: float = 3.0,
                      target_dbfs: float = -25.0) -> np.ndarray:
    """Return exactly ``round(seconds * sample_rate)`` samples: the highest-energy window of a
    long clip, or a short clip padded symmetrically with silence; the clip is scaled to RMS
    ``target_dbfs`` (peak limited to 0.999). Raises :class:`ValueError` for a silent clip."""
    n = int(round(seconds * sample_rate))
    if n <= 0:
        raise ValueError("sound length must be positive")
    x = np.asarray(wav, dtype=np.float64)
    if len(x) > n:
        energy = np.concatenate([[0.0], np.cumsum(x * x)])
        start = int(np.argmax(energy[n:] - energy[:-n]))
        x = x[start:start + n]
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    if rms < 1e-6:
        raise ValueError("sound is silent")
    x = x * (10 ** (target_dbfs / 20) / rms)
    peak = float(np.max(np.abs(x)))
    if peak > 0.999:
        x = x * (0.999 / peak)
    if len(x) < n:
        left = (n - len(x)) // 2
        x = np.pad(x, (left, n - len(x) - left))
    return x.astype(np.float32)


def find_pause(wav: np.ndarray, sample_rate: int, *, frame_ms: float = 25.0, hop_ms: float = 10.0) -> int:
    """Sample index of the centre of the lowest-energy frame centred in the middle third of ``wav``
    (ties go to the frame nearest the middle). Audio too short for frames is cut in the middle."""
    n = len(wav)
    frame, hop = max(1, int(sample_rate * frame_ms / 1000)), max(1, int(sample_rate * hop_ms / 1000))
    lo, hi, mid = n / 3, 2 * n / 3, n / 2
    x = np.asarray(wav, dtype=np.float64)
    best: tuple[float, float, int] | None = None
    for start in range(0, max(0, n - frame) + 1, hop):
        centre = start + frame // 2
        if centre < lo or centre > hi:
            continue
        seg = x[start:start + frame]
        key = (float(np.mean(seg * seg)), abs(centre - mid), centre)
        if best is None or key < best:
            best = key
    return best[2] if best is not None and 0 < best[2] < n else n // 2


def split_text(text: str, fraction: float) -> tuple[str, str]:
    """Cut ``text`` at the word boundary whose character share is closest to ``fraction``."""
    words = text.split()
    total = sum(len(w) for w in words) + max(0, len(words) - 1)
    best_k, best_err, chars = 0, abs(fraction), 0
    for k in range(1, len(words) + 1):
        chars += len(words[k - 1]) + (1 if k > 1 else 0)
        err = abs(chars / total - fraction) if total else 0.0
        if err < best_err:
            best_k, best_err = k, err
    return " ".join(words[:best_k]), " ".join(words[best_k:])


def tagged_text(left: str, tag: str, right: str) -> str:
    """``"left <tag> right"`` with single spaces."""
    return " ".join(p for p in (left.strip(), tag, right.strip()) if p)


@dataclass
class SoundInsertReport(Report):
    """Result of :func:`sound_insert`; ``tags`` are the special tokens used (with brackets)."""

    tags: set[str] = field(default_factory=set)
    tag_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Speech:
    label: str
    rid: str
    audio: Path
    text: str


@dataclass
class _Sound:
    label: str
    rid: str
    audio: Path
    tag: str


class _SoundPool:
    """Round-robin over the sounds in seeded random order; bad sounds leave the rotation."""

    def __init__(self, sounds: list[_Sound], rng: random.Random, sample_rate: int, seconds: float,
                 dbfs: float, report: SoundInsertReport) -> None:
        self.sounds, self.rng, self.report = list(sounds), rng, report
        self.sample_rate, self.seconds, self.dbfs = sample_rate, seconds, dbfs
        self.order: list[_Sound] = []

    def next(self) -> tuple[_Sound, np.ndarray]:
        from swv.core.audio import load_audio

        while self.sounds:
            if not self.order:
                self.order = list(self.sounds)
                self.rng.shuffle(self.order)
            s = self.order.pop()
            try:
                wav = standardize_sound(load_audio(s.audio, self.sample_rate), self.sample_rate,
                                        seconds=self.seconds, target_dbfs=self.dbfs)
                return s, wav
            except InputError as exc:
                self.report.drop("unreadable sound", str(exc))
            except ValueError as exc:
                self.report.drop("unusable sound", f"{s.label}: {exc}")
            self.sounds.remove(s)
            self.order = [o for o in self.order if o is not s]
        raise InputError("no usable sound left: every sound in the sounds manifest was unreadable or silent")


def _read_speech(manifest: Path, report: SoundInsertReport) -> list[_Speech]:
    out = []
    for line_no, rec in read_manifest(manifest):
        label = record_label(manifest, line_no, rec)
        text = rec.get("text")
        if not isinstance(text, str) or not text.strip():
            report.drop("speech without transcript", label)
            continue
        rid = str(rec["id"]) if rec.get("id") is not None else f"{manifest.name}:{line_no}"
        out.append(_Speech(label, rid, resolve_audio(manifest, rec), " ".join(text.split())))
    return out


def _read_sounds(manifest: Path, report: SoundInsertReport) -> list[_Sound]:
    out = []
    for line_no, rec in read_manifest(manifest):
        label = record_label(manifest, line_no, rec)
        raw = rec.get("label")
        if not isinstance(raw, str) or not raw.strip():
            report.drop("sound without label", label)
            continue
        try:
            tag = label_to_tag(raw)
        except ValueError as exc:
            report.drop("invalid sound label", f"{label}: {exc}")
            continue
        rid = str(rec["id"]) if rec.get("id") is not None else f"{manifest.name}:{line_no}"
        out.append(_Sound(label, rid, resolve_audio(manifest, rec), tag))
    return out


def _check_options(mode: str, sound_seconds: float, sample_rate: int, sound_dbfs: float) -> None:
    if mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if sound_seconds <= 0:
        raise UsageError(f"--sound-seconds must be > 0, got {sound_seconds}")
    if sample_rate <= 0:
        raise UsageError(f"--sample-rate must be > 0, got {sample_rate}")
    if sound_dbfs >= 0:
        raise UsageError(f"--sound-dbfs must be below 0 dBFS, got {sound_dbfs}")


def _speech_groups(speech_rows: list[_Speech], mode: str, rng: random.Random,
                   report: SoundInsertReport) -> list[list[_Speech]]:
    """Pairs of speech rows in seeded random order (``concat``) or one row per group (``split``)."""
    if mode != "concat":
        return [[s] for s in speech_rows]
    order = list(speech_rows)
    rng.shuffle(order)
    groups = [order[i:i + 2] for i in range(0, len(order) - 1, 2)]
    if len(order) % 2:
        report.drop("odd speech row left without a partner", order[-1].label)
    return groups


@dataclass
class _Inserter:
    """Builds one output sample (audio file + manifest record) per speech group."""

    mode: str
    sample_rate: int
    task: str
    out: Path
    audio_dir: Path
    pool: _SoundPool
    report: SoundInsertReport

    def halves(self, group: list[_Speech], wavs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, str, str]:
        """Left and right audio and transcripts around the inserted sound."""
        if self.mode == "concat":
            return wavs[0], wavs[1], group[0].text, group[1].text
        cut = find_pause(wavs[0], self.sample_rate)
        left_text, right_text = split_text(group[0].text, cut / len(wavs[0]))
        return wavs[0][:cut], wavs[0][cut:], left_text, right_text

    def record(self, i: int, group: list[_Speech]) -> dict[str, Any] | None:
        """Write sample ``i`` and return its record; ``None`` (reported) when the speech is unreadable."""
        from swv.core.audio import load_audio, write_audio

        try:
            wavs = [load_audio(s.audio, self.sample_rate) for s in group]
        except InputError as exc:
            self.report.drop("unreadable speech", str(exc))
            return None
        left_wav, right_wav, left_text, right_text = self.halves(group, wavs)
        sound, sound_wav = self.pool.next()
        wav = np.concatenate([left_wav, sound_wav, right_wav])
        rid = f"sound-{i:06d}"
        path = self.audio_dir / f"{rid}.wav"
        write_audio(path, wav, self.sample_rate)
        self.report.tags.add(sound.tag)
        self.report.tag_counts[sound.tag] = self.report.tag_counts.get(sound.tag, 0) + 1
        return {
            "id": rid,
            "audio": audio_ref(path, self.out),
            "text": tagged_text(left_text, sound.tag, right_text),
            "task": self.task,
            "duration": round(len(wav) / self.sample_rate, 6),
            "label": sound.tag[1:-1],
            "tags": [sound.tag],
            "sources": [s.rid for s in group] + [sound.rid],
        }

    def records(self, groups: list[list[_Speech]], show_progress: bool) -> Iterator[dict[str, Any]]:
        for i, group in enumerate(progress(groups, total=len(groups), desc="sound-insert", enabled=show_progress), 1):
            rec = self.record(i, group)
            if rec is not None:
                yield rec


def _note_tags(report: SoundInsertReport, mode: str, sound_seconds: float, sound_dbfs: float,
               audio_dir: Path, tags_out: str | os.PathLike[str] | None) -> None:
    """Add the summary notes to ``report`` and write the tag list to ``tags_out`` if given."""
    from swv.core.io import atomic_write_text

    tags = sorted(report.tags)
    report.notes.append(f"mode {mode}; sounds standardised to {sound_seconds:g} s at {sound_dbfs:g} dBFS RMS; "
                        f"audio -> {audio_dir}")
    report.notes.append("tags (add as special tokens): "
                        + (", ".join(f"{t} x{report.tag_counts[t]}" for t in tags) or "none"))
    if tags_out is not None:
        atomic_write_text(tags_out, "".join(f"{t}\n" for t in tags))
        report.notes.append(f"tags -> {tags_out}")


def sound_insert(
    speech: str | os.PathLike[str],
    sounds: str | os.PathLike[str],
    out: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    mode: str = "concat",
    sound_seconds: float = 3.0,
    sound_dbfs: float = -25.0,
    sample_rate: int = 16000,
    task: str = "asr",
    seed: int = 0,
    tags_out: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
) -> SoundInsertReport:
    """Write speech+sound samples to ``audio_dir`` and the manifest ``out``.

    Output records carry ``id`` (``sound-000001``...), ``audio``, ``text`` (with the tag),
    ``task``, ``duration``, ``label`` (the tag name without brackets), ``tags`` (``[tag]``: training
    adds the tags of its manifests to the tokenizer as special tokens) and ``sources``.
    In ``concat`` mode speech rows are paired in a seeded random order (an odd one out is
    reported). Unreadable speech or sound files are skipped and reported.
    """
    _check_options(mode, sound_seconds, sample_rate, sound_dbfs)
    speech, sounds, out, audio_dir = Path(speech), Path(sounds), Path(out), Path(audio_dir)
    report = SoundInsertReport(command="sound-insert", output=out)
    rng = random.Random(seed)

    speech_rows = _read_speech(speech, report)
    sound_rows = _read_sounds(sounds, report)
    if not sound_rows:
        raise InputError(f"{sounds}: no sound with a usable 'label'")
    need = 2 if mode == "concat" else 1
    if len(speech_rows) < need:
        raise InputError(f"{speech}: {mode} mode needs at least {need} speech row(s) with a transcript, "
                         f"found {len(speech_rows)}")
    pool = _SoundPool(sound_rows, rng, sample_rate, sound_seconds, sound_dbfs, report)
    groups = _speech_groups(speech_rows, mode, rng, report)
    inserter = _Inserter(mode, sample_rate, task, out, audio_dir, pool, report)
    report.written = write_manifest(out, inserter.records(groups, show_progress))
    _note_tags(report, mode, sound_seconds, sound_dbfs, audio_dir, tags_out)
    return report
