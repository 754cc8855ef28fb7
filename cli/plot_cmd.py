"""``swv plot``: a training run's curves drawn again from its ``metrics.jsonl`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def plot(
    run: Annotated[Path, typer.Argument(help="A training run's output_dir (a folder per stage, each with metrics.jsonl).")],
    stage: Annotated[Optional[str], typer.Option("--stage", help="Draw this stage only.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write one figure (the whole run, or --stage's) to this PNG file instead of "
        "RUN/plots/<stage>.png and RUN/plots/run.png.")] = None,
) -> None:
    """Draw a training run's curves: per stage the training losses with the held-out ones, the
    learning rate and the throughput, against the optimizer step (what `swv train` writes to
    RUN/plots/ at the end of each stage). Needs matplotlib (the plot extra)."""
    from swv.core.plotting import require_plotting
    from swv.train.plots import redraw

    require_plotting("swv plot")
    for path in redraw(run, stage=stage, output=output):
        typer.echo(f"wrote {path}")
