"""Training curves, score charts and histograms as image files.

Drawing needs matplotlib (the ``plot`` extra): :func:`plotting_available` says whether it is
installed, :func:`require_plotting` refuses with the install line when it is not. Figures are
built on :class:`matplotlib.figure.Figure` directly (no pyplot: no global state, no backend
switch in a caller's process), laid out by matplotlib's constrained layout.

- :func:`plot_curves`: one row per stage of a training run, three panels each: the losses
  (training solid, held-out dashed in the same colour), the learning rate and the throughput,
  against the optimizer step; the curves come from each stage's ``metrics.jsonl``
  (:func:`run_curves`, keys as in :mod:`swv.core.metrics_log`).
- :func:`bar_chart`: grouped bars, one group per row of a score table (``swv eval --plot``).
- :func:`histograms`: histogram panels side by side (``swv data stats --plot``).

Each is written atomically, in the format of the file's extension (PNG without one).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from swv.core.errors import UsageError, first_line
from swv.core.io import atomic_write_bytes
from swv.core.metrics_log import (
    EPOCH,
    EVAL_PREFIX,
    LEARNING_RATE,
    METRICS_FILE,
    STEP,
    THROUGHPUT,
    is_held_out,
    is_loss,
    step_records,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: what to install for plots (the extra in pyproject.toml)
PLOT_HINT = "plots need matplotlib: pip install 'swv[plot]'"
#: a metric's points: (optimizer step, value)
Curve = list[tuple[int, float]]
_DPI = 110
_PANEL_WIDTH = 4.2
_PANEL_HEIGHT = 3.2


def plotting_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_plotting(what: str) -> None:
    """A :class:`UsageError` naming ``what`` and the install line when matplotlib is missing."""
    if not plotting_available():
        raise UsageError(f"{what}: {PLOT_HINT}")


def metric_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, Curve]:
    """``{metric: [(step, value), ...]}`` for every numeric metric of the step records (the
    epoch is not a curve), in the order the metrics first appear."""
    curves: dict[str, Curve] = {}
    for record in records:
        step = record.get(STEP)
        if not _number(step):
            continue
        for key, value in record.items():
            if key not in (STEP, EPOCH) and _number(value) and math.isfinite(value):
                curves.setdefault(key, []).append((int(step), float(value)))
    return curves


def run_curves(run_dir: str | os.PathLike[str], stages: Sequence[str]) -> dict[str, dict[str, Curve]]:
    """``{stage: curves}`` from ``run_dir/<stage>/metrics.jsonl`` (empty for a stage without one)."""
    return {stage: metric_curves(step_records(Path(run_dir) / stage / METRICS_FILE)) for stage in stages}


def plot_curves(curves: Mapping[str, Mapping[str, Curve]], path: str | os.PathLike[str], title: str = "") -> Path:
    """One row per stage of ``curves`` (losses, learning rate, throughput), written to ``path``."""
    from matplotlib.figure import Figure

    stages = list(curves) or ["(no stage)"]
    fig = Figure(figsize=(3 * _PANEL_WIDTH, _PANEL_HEIGHT * len(stages)), layout="constrained")
    grid = fig.subplots(len(stages), 3, squeeze=False)
    for row, stage in zip(grid, stages):
        _draw_stage(row, stage, curves.get(stage, {}))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bar_chart(groups: Mapping[str, Mapping[str, float | None]], path: str | os.PathLike[str], *, title: str = "",
              ylabel: str = "") -> Path:
    """Grouped bars: one group per key of ``groups``, one bar per metric (``None``: no bar, "n/a"),
    each bar labelled with its value; written to ``path``."""
    from matplotlib.figure import Figure

    names = list(groups)
    metrics = list(dict.fromkeys(m for scores in groups.values() for m in scores))
    width = 0.8 / max(1, len(metrics))
    fig = Figure(figsize=(max(4.0, 1.5 + 0.5 * len(names) * max(1, len(metrics))), 3.8), layout="constrained")
    ax = fig.subplots()
    for i, metric in enumerate(metrics):
        values = [groups[name].get(metric) for name in names]
        offsets = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(offsets, [v if v is not None else 0.0 for v in values], width, label=metric, color=f"C{i % 10}")
        ax.bar_label(bars, labels=[f"{v:.1f}" if v is not None else "n/a" for v in values], fontsize=8)
    ax.set_xticks(list(range(len(names))), names, rotation=30 if len(names) > 6 else 0)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if metrics:
        ax.legend()
    else:
        _empty(ax, "no scores")
    if title:
        ax.set_title(title)
    return _save(fig, path)


class Histogram(NamedTuple):
    """One histogram panel: the values, the x-axis label and the panel's title."""

    values: Sequence[float]
    xlabel: str
    title: str


def histograms(panels: Sequence[Histogram], path: str | os.PathLike[str], *, title: str = "", bins: int = 50) -> Path:
    """The histograms side by side (rows counted on the y-axis); written as an image (the format
    from the file's extension, PNG without one)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * max(1, len(panels)), 4.0), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        ax.hist(list(panel.values), bins=bins, color=f"C{i % 10}")
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel("rows")
        ax.set_title(panel.title)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _draw_stage(axes: Sequence[Axes], stage: str, curves: Mapping[str, Curve]) -> None:
    """A stage's three panels: losses (held-out dashed, in the colour of the training loss of
    the same name), learning rate, throughput."""
    loss_ax, lr_ax, speed_ax = axes
    losses = [key for key in curves if is_loss(key)]
    names = list(dict.fromkeys(key.removeprefix(EVAL_PREFIX) for key in losses))
    for key in losses:
        held_out = is_held_out(key)
        colour = f"C{names.index(key.removeprefix(EVAL_PREFIX)) % 10}"
        _line(loss_ax, curves[key], key, colour, dashed=held_out)
    values = [v for key in losses for _, v in curves[key]]
    if values and min(values) > 0:
        loss_ax.set_yscale("log")
    _finish(loss_ax, f"{stage}: loss", bool(losses), legend=True)
    for ax, key, label in ((lr_ax, LEARNING_RATE, "learning rate"), (speed_ax, THROUGHPUT, "samples/s")):
        if key in curves:
            _line(ax, curves[key], key, "C0", dashed=False)
        _finish(ax, f"{stage}: {label}", key in curves, legend=False)


def _line(ax: Axes, points: Curve, label: str, colour: str, *, dashed: bool) -> None:
    steps, values = zip(*points)
    ax.plot(steps, values, color=colour, label=label, linestyle="--" if dashed else "-", marker="o" if dashed else ".",
            markersize=5 if dashed else 3)


def _finish(ax: Axes, title: str, drawn: bool, *, legend: bool) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if not drawn:
        _empty(ax, "not logged")
    elif legend:
        ax.legend(fontsize=8)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """``fig`` written atomically to ``path``, in the format of its extension (PNG without one)."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=_DPI)
    except ValueError as exc:  # matplotlib's refusal of an unknown format
        raise UsageError(f"{path}: unsupported image format ({first_line(exc)})") from None
    return atomic_write_bytes(path, buffer.getvalue())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
