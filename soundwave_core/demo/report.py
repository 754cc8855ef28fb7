"""The demo's outputs: ``results.json`` (every measured number) and ``plot.png`` (each stage's
training losses, read from its ``metrics.jsonl``). Both are written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from swv.core.io import atomic_write_bytes, atomic_write_json

LOSS_KEYS = ("loss", "lm_loss", "ctc_loss")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The step records of a stage's ``metrics.jsonl`` (mixture events and blank lines skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "event" not in record and any(k in record for k in LOSS_KEYS):
            rows.append(record)
    return rows


def stage_curves(run_dir: Path, stages: list[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{stage: {loss key: [(step, value), ...]}}`` for the keys each stage logged."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for stage in stages:
        rows = read_metrics(run_dir / stage / "metrics.jsonl")
        curves[stage] = {
            key: [(int(r["step"]), float(r[key])) for r in rows if key in r]
            for key in LOSS_KEYS
            if any(key in r for r in rows)
        }
    return curves


def plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path, title: str = "") -> Path:
    """One panel per stage, its losses against the optimizer step; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(curves) or ["(no stage)"]
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for key, points in curves.get(stage, {}).items():
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker=".", label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if curves.get(stage):
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no metrics", ha="center", va="center", transform=ax.transAxes)
    axes[0][0].set_ylabel("loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def write_results(run_dir: Path, results: dict[str, Any], stages: list[str]) -> tuple[Path, Path]:
    """``results.json`` and ``plot.png`` in ``run_dir``; returns their paths."""
    curves = stage_curves(run_dir, stages)
    results = {**results, "loss_curves": {s: {k: [list(p) for p in v] for k, v in c.items()} for s, c in curves.items()}}
    json_path = atomic_write_json(run_dir / "results.json", results)
    png_path = plot_curves(curves, run_dir / "plot.png", title="swv demo: training losses")
    return json_path, png_path
