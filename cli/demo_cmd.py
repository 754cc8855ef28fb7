"""``swv demo``: train a real Soundwave on CPU, then test it on speech it has never heard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def demo(
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="Recipe overrides, key.path=value (e.g. stages.0.max_steps=100).", show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="The short demo (6-10 minutes on 2 cores) instead of the full one (20-30).")] = False,
    long: Annotated[bool, typer.Option(
        "--long", help="The demo-long recipe on the full data: an utterance token and a label phase for pitch, sex and rate "
        "(longer than the full demo; docs/demo.md has its time and results).")] = False,
    workdir: Annotated[Path, typer.Option("--workdir", help="Where weights, data, the run and results.json go.")] = Path("runs/demo"),
    recipe: Annotated[Optional[str], typer.Option(
        "--recipe", help="Recipe to train (default: demo; demo-quick with --quick, demo-long with --long).",
        show_default=False)] = None,
    eval_limit: Annotated[Optional[int], typer.Option(
        "--eval-limit", min=1, help="Evaluate at most this many held-out items per task.", show_default=False)] = None,
) -> None:
    """Train a real Soundwave on CPU (Whisper tiny.en + SmolLM2-135M) and test it on held-out speech.

    Converts the packaged weights, synthesizes speech (espeak-ng and Piper train; Pico speaks
    the out-of-engine dev split) with noise and reverberation, trains the three stages and
    measures the model on voices, engines and conditions it never trained on, beside Whisper
    tiny.en's own decoder. Needs the engines and the weight packages (scripts/demo.sh installs
    everything). Writes <workdir>/run/results.json and
    <workdir>/run/plot.png (run-quick/, run-long/ for the other modes); a rerun reuses finished work.
    """
    from swv.demo.run import DemoOptions, run_demo

    run_demo(DemoOptions(workdir=workdir, quick=quick, long=long, recipe=recipe, overrides=list(overrides or []), eval_limit=eval_limit))
