"""A training run's plots: ``<output_dir>/plots/<stage>.png`` for each stage and
``plots/run.png`` for every stage so far, drawn from the stages' ``metrics.jsonl`` by
:mod:`swv.core.plotting` at the end of each stage (``swv train``) or on demand (``swv plot``).

Light on purpose (no torch): ``swv plot`` imports it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from swv.core.errors import InputError, SwvError, UsageError, first_line
from swv.core.io import inside
from swv.core.metrics_log import METRICS_FILE

#: the run's description in its output directory (stage names in training order, ...)
RUN_FILE = "run.json"
PLOTS_DIR = "plots"
RUN_PLOT = "run.png"


def run_stages(output_dir: str | os.PathLike[str]) -> list[str]:
    """The stages of the run in ``output_dir``, in training order (its ``run.json``), else its
    folders holding a ``metrics.jsonl``, by name."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise InputError(f"{output_dir}: not a directory (expected a training run's output_dir)")
    try:
        stages = json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8"))["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        stages = None
    if isinstance(stages, list) and all(isinstance(s, str) for s in stages):
        return stages
    return sorted(p.parent.name for p in output_dir.glob(f"*/{METRICS_FILE}"))


def stage_plot_path(output_dir: str | os.PathLike[str], stage: str) -> Path:
    return inside(Path(output_dir) / PLOTS_DIR, f"{stage}.png", f"stage {stage!r}")


def write_training_plots(output_dir: str | os.PathLike[str], stages: Sequence[str],
                         only: Sequence[str] | None = None) -> list[Path]:
    """Draw ``plots/<stage>.png`` for each of ``only`` (default: every stage of ``stages`` with
    metrics) and ``plots/run.png`` for every stage of ``stages`` with metrics; returns the paths,
    the run's last."""
    from swv.core.plotting import plot_curves, run_curves

    output_dir = Path(output_dir)
    curves = run_curves(output_dir, stages)
    logged = {stage: c for stage, c in curves.items() if c}
    if not logged:
        raise InputError(f"{output_dir}: no stage has a {METRICS_FILE} with metrics (not a training run's output_dir?)")
    written = [plot_curves({s: curves[s]}, stage_plot_path(output_dir, s), title=f"{output_dir.name}: {s}")
               for s in (only if only is not None else logged)]
    written.append(plot_curves(logged, output_dir / PLOTS_DIR / RUN_PLOT, title=f"{output_dir.name}: training"))
    return written


def redraw(output_dir: str | os.PathLike[str], stage: str | None = None, output: str | os.PathLike[str] | None = None) -> list[Path]:
    """``swv plot``: the run's plots drawn again from its ``metrics.jsonl`` files (``stage``: that
    stage's only; ``output``: one figure, the run's or ``stage``'s, to that file instead)."""
    from swv.core.plotting import plot_curves, run_curves

    output_dir = Path(output_dir)
    stages = run_stages(output_dir)
    if stage is not None and stage not in stages:
        raise UsageError(f"--stage {stage!r}: no such stage in {output_dir} (stages: {', '.join(stages) or 'none'})")
    curves = {s: c for s, c in run_curves(output_dir, [stage] if stage is not None else stages).items() if c}
    if not curves:
        where = f"for stage {stage!r}" if stage is not None else "in any stage folder (not a training run's output_dir?)"
        raise InputError(f"{output_dir}: no {METRICS_FILE} with metrics {where}")
    if output is None:
        return write_training_plots(output_dir, stages, only=[stage] if stage is not None else None)
    title = f"{output_dir.name}: {stage}" if stage is not None else f"{output_dir.name}: training"
    return [plot_curves(curves, output, title=title)]


def plots_enabled(say: Callable[[str], None]) -> bool:
    """Whether training can draw its plots; if not, says so in one line."""
    from swv.core.plotting import PLOT_HINT, plotting_available

    if plotting_available():
        return True
    say(f"note: no training plots: {PLOT_HINT} (metrics.jsonl is written either way; `swv plot` draws them later)")
    return False


def plot_finished_stage(output_dir: Path, stages: Sequence[str], stage: str, say: Callable[[str], None]) -> None:
    """The plots after ``stage`` finished; a plot that cannot be written is a warning (the
    stage's export is done), not an error."""
    try:
        paths = write_training_plots(output_dir, stages, only=[stage])
    except (SwvError, OSError, ValueError) as exc:
        say(f"warning: {stage}: plots not written ({first_line(exc)})")
        return
    say(f"[{stage}] plots -> {', '.join(str(p) for p in paths)}")
