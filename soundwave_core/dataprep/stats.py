"""`swv data stats`: counts, hours and histograms of a manifest, overall, per task and per language.

Durations come from the ``duration`` field, or from the audio header when it is
missing (rows whose audio cannot be read then have no duration and are counted as
such). Text length is the number of whitespace-separated words of ``text``; rows
without a ``text`` are counted separately.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from swv.core.errors import InputError
from swv.core.progress import count_lines, progress
from swv.data.manifest import read_manifest, resolve_audio

#: Histogram bin edges; each bin is ``[lo, hi)``.
DURATION_BINS: tuple[float, ...] = (0, 1, 3, 5, 10, 15, 20, 25, 30, math.inf)
TEXT_BINS: tuple[float, ...] = (0, 1, 5, 10, 20, 50, 100, 200, math.inf)
NONE = "(none)"


@dataclass
class GroupStats:
    """Totals of one group of rows (all rows, one task or one language)."""

    rows: int = 0
    seconds: float = 0.0
    timed_rows: int = 0
    text_rows: int = 0
    words: int = 0

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def mean_duration(self) -> float:
        return self.seconds / self.timed_rows if self.timed_rows else 0.0

    @property
    def mean_words(self) -> float:
        return self.words / self.text_rows if self.text_rows else 0.0

    def add(self, duration: float | None, words: int | None) -> None:
        self.rows += 1
        if duration is not None:
            self.timed_rows += 1
            self.seconds += duration
        if words is not None:
            self.text_rows += 1
            self.words += words


@dataclass
class ManifestStats:
    """Everything :func:`format_stats` and :func:`plot_stats` show."""

    manifest: Path
    total: GroupStats = field(default_factory=GroupStats)
    by_task: dict[str, GroupStats] = field(default_factory=dict)
    by_language: dict[str, GroupStats] = field(default_factory=dict)
    durations: list[float] = field(default_factory=list)
    text_lengths: list[int] = field(default_factory=list)
    unreadable: int = 0

    @property
    def duration_hist(self) -> list[int]:
        return histogram(self.durations, DURATION_BINS)

    @property
    def text_hist(self) -> list[int]:
        return histogram(self.text_lengths, TEXT_BINS)


def histogram(values: list[float] | list[int], edges: tuple[float, ...]) -> list[int]:
    """Counts of ``values`` in the bins ``[edges[i], edges[i+1])``; values below ``edges[0]`` go to bin 0."""
    import bisect

    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min(max(bisect.bisect_right(edges, v) - 1, 0), len(counts) - 1)] += 1
    return counts


def compute_stats(manifest: str | os.PathLike[str], *, show_progress: bool = True) -> ManifestStats:
    """Read ``manifest`` once and gather :class:`ManifestStats`."""
    from swv.core.audio import audio_duration

    manifest = Path(manifest)
    stats = ManifestStats(manifest=manifest)
    total = count_lines(manifest) if manifest.is_file() else None
    for _, rec in progress(read_manifest(manifest), total=total, desc="stats", enabled=show_progress):
        duration = rec.get("duration")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            try:
                duration = audio_duration(resolve_audio(manifest, rec))
            except InputError:
                duration = None
                stats.unreadable += 1
        duration = float(duration) if duration is not None else None
        text = rec.get("text")
        words = len(text.split()) if isinstance(text, str) else None
        task = str(rec.get("task") or NONE)
        lang = str(rec.get("language") or NONE)
        for group in (stats.total, stats.by_task.setdefault(task, GroupStats()),
                      stats.by_language.setdefault(lang, GroupStats())):
            group.add(duration, words)
        if duration is not None:
            stats.durations.append(duration)
        if words is not None:
            stats.text_lengths.append(words)
    if stats.total.rows == 0:
        raise InputError(f"{manifest}: manifest has no rows")
    return stats


def _bin_label(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g})" if math.isfinite(hi) else f">= {lo:g}"


def _table(title: str, groups: dict[str, GroupStats]) -> list[str]:
    width = max([len(title)] + [len(k) for k in groups])
    lines = [f"{title:<{width}}  {'rows':>8}  {'hours':>9}  {'mean s':>7}  {'mean words':>10}"]
    for key, g in sorted(groups.items(), key=lambda kv: (-kv[1].rows, kv[0])):
        lines.append(f"{key:<{width}}  {g.rows:>8}  {g.hours:>9.3f}  {g.mean_duration:>7.2f}  {g.mean_words:>10.1f}")
    return lines


def _hist_lines(title: str, counts: list[int], edges: tuple[float, ...]) -> list[str]:
    peak = max(counts) if counts and max(counts) else 1
    lines = [title]
    for i, n in enumerate(counts):
        lines.append(f"  {_bin_label(edges[i], edges[i + 1]):>11}  {n:>8}  {'#' * round(40 * n / peak)}")
    return lines


def format_stats(stats: ManifestStats) -> str:
    """A plain-text report: totals, per-task and per-language tables, and both histograms."""
    t = stats.total
    lines = [
        f"{stats.manifest}: {t.rows} rows, {t.hours:.3f} hours, mean duration {t.mean_duration:.2f} s, "
        f"mean text length {t.mean_words:.1f} words",
    ]
    if t.rows - t.timed_rows:
        lines.append(f"rows without a duration (unreadable audio): {t.rows - t.timed_rows}")
    if t.rows - t.text_rows:
        lines.append(f"rows without 'text': {t.rows - t.text_rows}")
    lines += ["", *_table("task", stats.by_task), "", *_table("language", stats.by_language), ""]
    lines += _hist_lines("duration (seconds)", stats.duration_hist, DURATION_BINS)
    lines += ["", *_hist_lines("text length (words)", stats.text_hist, TEXT_BINS)]
    return "\n".join(lines)


def plot_stats(stats: ManifestStats, path: str | os.PathLike[str]) -> Path:
    """Write the duration and text-length histograms as an image (format from the extension)."""
    from swv.core.plotting import Histogram, histograms

    return histograms([Histogram(stats.durations, "duration (s)", f"Duration ({stats.total.hours:.2f} h)"),
                       Histogram(stats.text_lengths, "text length (words)", f"Text length ({stats.total.text_rows} rows)")],
                      path, title=stats.manifest.name)
