"""Helpers shared by the `swv data` commands: progress bars and run summaries."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: How many examples of each drop reason a summary lists.
MAX_EXAMPLES = 5


def progress(iterable: Iterable[T], *, total: int | None, desc: str, enabled: bool = True) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm progress bar written to stderr (no-op when ``enabled`` is false)."""
    from tqdm import tqdm

    yield from tqdm(
        iterable,
        total=total,
        desc=desc,
        file=sys.stderr,
        disable=not enabled,
        unit="rec",
        dynamic_ncols=True,
        leave=True,  # the bar's last state stays: the number of records read, not the throttled "0rec"
    )


def format_duration(seconds: float) -> str:
    """A duration for log lines: ``8s``, ``1m15s``, ``1h02m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def count_lines(path: str | Path) -> int:
    """Number of non-blank lines of a text file (for progress-bar totals)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@dataclass
class Report:
    """What a data command wrote, changed and dropped, and why.

    ``dropped`` counts rows per reason key; ``examples`` keeps the first few
    descriptions for each reason so the summary can show them.
    """

    command: str
    output: Path | None = None
    written: int = 0
    changed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    #: Words used in the summary for written and dropped rows.
    written_verb = "wrote"
    dropped_verb = "dropped"

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, example: str) -> None:
        """Count one dropped row under ``reason`` and remember ``example`` if it is among the first few."""
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    def format(self) -> str:
        """A human-readable multi-line summary."""
        where = f" -> {self.output}" if self.output is not None else ""
        lines = [f"{self.command}: {self.written_verb} {self.written} record(s){where}"]
        for key, n in sorted(self.changed.items()):
            lines.append(f"  changed: {key}: {n}")
        if self.dropped:
            lines.append(f"  {self.dropped_verb} {self.total_dropped} record(s):")
            for reason, n in self.dropped.most_common():
                lines.append(f"    {reason}: {n}")
                for ex in self.examples.get(reason, []):
                    lines.append(f"      e.g. {ex}")
                if n > len(self.examples.get(reason, [])):
                    lines.append(f"      ... and {n - len(self.examples.get(reason, []))} more")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)
