"""The demo's outputs: ``results.json`` (every measured number, with each stage's loss curves)
and ``plot.png`` (each stage's training curves, drawn by :mod:`swv.core.plotting` from its
``metrics.jsonl``). Both are written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swv.core.io import atomic_write_json
from swv.core.metrics_log import is_loss
from swv.core.plotting import Curve, plot_curves, run_curves


def loss_curves(run_dir: Path, stages: list[str]) -> dict[str, dict[str, Curve]]:
    """``{stage: {loss: [(step, value), ...]}}``: the training and held-out losses each stage logged."""
    return {stage: {k: v for k, v in curves.items() if is_loss(k)} for stage, curves in run_curves(run_dir, stages).items()}


def write_results(run_dir: Path, results: dict[str, Any], stages: list[str]) -> tuple[Path, Path]:
    """``results.json`` and ``plot.png`` in ``run_dir``; returns their paths."""
    losses = loss_curves(run_dir, stages)
    results = {**results, "loss_curves": {s: {k: [list(p) for p in v] for k, v in c.items()} for s, c in losses.items()}}
    json_path = atomic_write_json(run_dir / "results.json", results)
    png_path = plot_curves(run_curves(run_dir, stages), run_dir / "plot.png", title="swv demo: training curves")
    return json_path, png_path
