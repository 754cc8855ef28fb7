"""`swv data splice`: multi-speaker samples made by concatenating utterances of different speakers.

Speakers are told apart by the ``speaker`` field; a row without one counts as its own
speaker, keyed by its audio file, so without speaker labels any two different source
files count as different speakers (this can pair two files of the same real speaker).

Each sample takes one utterance from each of ``speakers`` different speakers. The
planner always starts from the speakers with the most utterances left, so as many
utterances as possible are used, each at most once; ``max_duration`` (30 s, Whisper's
window) caps the spliced length. The transcript is ``"<prefix 1> <text 1> <prefix 2>
<text 2> ..."`` with prefixes "The first speaker says", "The second speaker says", ...
(from ``template``, or given one per position in ``phrases``). The written audio is the
parts resampled to ``sample_rate`` and joined with ``gap`` seconds of silence, so its
length is exactly the sum of the parts plus ``(speakers - 1)`` gaps.
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swv.core.errors import InputError, UsageError
from swv.core.progress import Report, count_lines, progress
from swv.data.manifest import (
    audio_ref,
    read_manifest,
    record_label,
    resolve_audio,
    write_manifest,
)

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
DEFAULT_TEMPLATE = "The {ordinal} speaker says"


def speaker_prefixes(n: int, *, template: str = DEFAULT_TEMPLATE, phrases: list[str] | None = None) -> list[str]:
    """The transcript prefix of each speaker position: ``phrases`` if given, else ``template``
    with ``{ordinal}`` (first, second, ...) and/or ``{n}`` (1, 2, ...) filled in."""
    if phrases:
        if len(phrases) != n:
            raise UsageError(f"--phrase given {len(phrases)} time(s) but --speakers is {n}: give one phrase per speaker")
        return [p.strip() for p in phrases]
    if n > len(ORDINALS) and "{ordinal}" in template:
        raise UsageError(f"--template with {{ordinal}} supports up to {len(ORDINALS)} speakers; use {{n}} or --phrase")
    try:
        return [template.format(ordinal=ORDINALS[i] if i < len(ORDINALS) else "", n=i + 1).strip() for i in range(n)]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"--template {template!r}: only {{ordinal}} and {{n}} can be filled in ({exc})") from None


@dataclass
class _Utt:
    label: str
    rid: str
    audio: Path
    text: str
    speaker: str
    duration: float


@dataclass
class SpliceReport(Report):
    """Result of :func:`splice_manifest`."""

    utterances_used: int = 0
    speakers_found: int = 0


class _SpeakerQueues:
    """Each speaker's unused utterances (seeded shuffle), in a heap that yields the speaker
    with the most utterances left (ties broken by a seeded random key)."""

    def __init__(self, utts: list[_Utt], rng: random.Random) -> None:
        self.queues: dict[str, list[_Utt]] = {}
        for u in utts:
            self.queues.setdefault(u.speaker, []).append(u)
        self.tie = {k: rng.random() for k in self.queues}
        for q in self.queues.values():
            rng.shuffle(q)
        self.heap = [(-len(q), self.tie[k], k) for k, q in self.queues.items()]
        heapq.heapify(self.heap)

    def pop_largest(self) -> str | None:
        """Remove and return the speaker with the most utterances left (``None`` when all are used)."""
        while self.heap:
            neg, _, k = heapq.heappop(self.heap)
            if self.queues[k] and -neg == len(self.queues[k]):
                return k
        return None

    def push(self, keys: list[str]) -> None:
        """Put popped speakers that still have utterances back into the heap."""
        for k in keys:
            if self.queues[k]:
                heapq.heappush(self.heap, (-len(self.queues[k]), self.tie[k], k))

    def take_fitting(self, k: str, budget: float) -> _Utt | None:
        """Remove and return speaker ``k``'s last queued utterance no longer than ``budget``."""
        q = self.queues[k]
        idx = next((i for i in range(len(q) - 1, -1, -1) if q[i].duration <= budget), None)
        return None if idx is None else q.pop(idx)

    def put_back(self, utts: list[_Utt]) -> None:
        for u in utts:
            self.queues[u.speaker].append(u)

    def leftover(self) -> int:
        return sum(len(q) for q in self.queues.values())


def _fill(qs: _SpeakerQueues, first: str, speakers: int, limit: float) -> tuple[list[_Utt], list[str], bool]:
    """One utterance of ``first`` plus partners of other speakers within ``limit`` seconds of audio.

    Returns the chosen utterances, the speakers popped from the heap and whether a partner
    speaker was skipped because none of its utterances fit."""
    u1 = qs.queues[first].pop()
    chosen, taken, popped = [u1], {first}, [first]
    budget = limit - u1.duration
    misfit = False
    while len(chosen) < speakers:
        k = qs.pop_largest()
        if k is None:
            break
        if k in taken:
            continue
        taken.add(k)
        popped.append(k)
        u = qs.take_fitting(k, budget)
        if u is None:
            misfit = True
        else:
            chosen.append(u)
            budget -= u.duration
    return chosen, popped, misfit


def _plan(utts: list[_Utt], speakers: int, max_duration: float | None, gap: float, num_samples: int | None,
          rng: random.Random, report: SpliceReport) -> list[list[_Utt]]:
    qs = _SpeakerQueues(utts, rng)
    plans: list[list[_Utt]] = []
    total_gap = gap * (speakers - 1)
    limit = (max_duration - total_gap) if max_duration is not None else float("inf")
    while num_samples is None or len(plans) < num_samples:
        first = qs.pop_largest()
        if first is None:
            break
        chosen, popped, misfit = _fill(qs, first, speakers, limit)
        u1 = chosen[0]
        if len(chosen) < speakers:
            qs.put_back(chosen[1:])
            if misfit:
                report.drop("no partner fits --max-duration", f"{u1.label} ({u1.duration:.2f} s)")
            else:
                report.drop("no other speaker left to pair with", u1.label)
        else:
            rng.shuffle(chosen)
            plans.append(chosen)
        qs.push(popped)
    leftover = qs.leftover()
    if leftover:
        report.notes.append(f"{leftover} utterance(s) left unused after {len(plans)} sample(s) (--num-samples reached)")
    return plans


def _check_options(speakers: int, gap: float, sample_rate: int, num_samples: int | None,
                   max_duration: float | None) -> None:
    if speakers < 2:
        raise UsageError(f"--speakers must be at least 2, got {speakers}")
    if gap < 0:
        raise UsageError(f"--gap must be >= 0 seconds, got {gap}")
    if sample_rate <= 0:
        raise UsageError(f"--sample-rate must be > 0, got {sample_rate}")
    if num_samples is not None and num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    if max_duration is not None and max_duration <= 0:
        raise UsageError(f"--max-duration must be > 0, got {max_duration}")


def _scan(manifest: Path, report: SpliceReport, show_progress: bool) -> list[_Utt]:
    """The usable utterances of ``manifest``; rows without text or readable audio are reported."""
    from swv.core.audio import audio_duration

    total = count_lines(manifest) if manifest.is_file() else None
    utts: list[_Utt] = []
    for line_no, rec in progress(read_manifest(manifest), total=total, desc="splice: scan", enabled=show_progress):
        label = record_label(manifest, line_no, rec)
        text = rec.get("text")
        if not isinstance(text, str) or not text.strip():
            report.drop("no transcript", label)
            continue
        path = resolve_audio(manifest, rec)
        try:
            duration = audio_duration(path)
        except InputError as exc:
            report.drop("unreadable audio", str(exc))
            continue
        spk = rec.get("speaker")
        key = f"speaker:{spk}" if spk not in (None, "") else f"file:{path.absolute()}"
        rid = str(rec["id"]) if rec.get("id") is not None else f"{manifest.name}:{line_no}"
        utts.append(_Utt(label, rid, path, " ".join(text.split()), key, duration))
    return utts


@dataclass
class _Splicer:
    """Writes one spliced sample (audio file + manifest record) per plan."""

    prefixes: list[str]
    gap_wav: np.ndarray
    sample_rate: int
    task: str
    out: Path
    audio_dir: Path
    report: SpliceReport

    def record(self, i: int, parts: list[_Utt]) -> dict[str, Any] | None:
        """Write sample ``i`` and return its record; ``None`` (reported) when a part is unreadable."""
        from swv.core.audio import load_audio, write_audio

        try:
            wavs = [load_audio(u.audio, self.sample_rate) for u in parts]
        except InputError as exc:
            self.report.drop("unreadable audio", str(exc))
            return None
        pieces: list[np.ndarray] = []
        for j, w in enumerate(wavs):
            if j:
                pieces.append(self.gap_wav)
            pieces.append(w)
        wav = np.concatenate(pieces)
        rid = f"splice-{i:06d}"
        path = self.audio_dir / f"{rid}.wav"
        write_audio(path, wav, self.sample_rate)
        self.report.utterances_used += len(parts)
        return {
            "id": rid,
            "audio": audio_ref(path, self.out),
            "text": " ".join(f"{p} {u.text}" for p, u in zip(self.prefixes, parts)),
            "task": self.task,
            "duration": round(len(wav) / self.sample_rate, 6),
            "num_speakers": len(parts),
            "sources": [u.rid for u in parts],
        }

    def records(self, plans: list[list[_Utt]], show_progress: bool) -> Iterator[dict[str, Any]]:
        for i, parts in enumerate(progress(plans, total=len(plans), desc="splice: write", enabled=show_progress), 1):
            rec = self.record(i, parts)
            if rec is not None:
                yield rec


def splice_manifest(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    *,
    speakers: int = 2,
    template: str = DEFAULT_TEMPLATE,
    phrases: list[str] | None = None,
    gap: float = 0.0,
    max_duration: float | None = 30.0,
    num_samples: int | None = None,
    sample_rate: int = 16000,
    task: str = "asr",
    seed: int = 0,
    show_progress: bool = True,
) -> SpliceReport:
    """Write multi-speaker samples of ``manifest`` to ``audio_dir`` and the manifest ``out``.

    Rows without a ``text`` or with an unreadable audio header are dropped and reported.
    Output records carry ``id`` (``splice-000001``...), ``audio``, ``text``, ``task``,
    ``duration``, ``num_speakers`` and ``sources`` (the ids, or file:line, of the parts).
    """
    _check_options(speakers, gap, sample_rate, num_samples, max_duration)
    prefixes = speaker_prefixes(speakers, template=template, phrases=phrases)
    manifest, out, audio_dir = Path(manifest), Path(out), Path(audio_dir)
    report = SpliceReport(command="splice", output=out)
    utts = _scan(manifest, report, show_progress)
    report.speakers_found = len({u.speaker for u in utts})
    if report.speakers_found < speakers:
        raise InputError(f"{manifest}: need utterances of at least {speakers} different speakers, "
                         f"found {report.speakers_found}")

    plans = _plan(utts, speakers, max_duration, gap, num_samples, random.Random(seed), report)
    gap_wav = np.zeros(int(round(gap * sample_rate)), dtype=np.float32)
    splicer = _Splicer(prefixes, gap_wav, sample_rate, task, out, audio_dir, report)
    report.written = write_manifest(out, splicer.records(plans, show_progress))
    report.notes.append(f"{report.speakers_found} speaker(s) found (rows without 'speaker' count one per file); "
                        f"{report.utterances_used} utterance(s) used; gap {gap:g} s; audio -> {audio_dir}")
    return report
