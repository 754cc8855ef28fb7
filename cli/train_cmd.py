"""``swv train``."""

from __future__ import annotations

from typing import Annotated

import typer


def train(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Shipped recipe name or YAML path.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        metavar="OVERRIDES", help="key.path=value overrides, e.g. stages.0.max_steps=10 or stages.alignment.max_steps=10")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Run only this stage.")] = None,
    from_stage: Annotated[str | None, typer.Option("--from-stage", help="Run this stage and the ones after it.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Require a checkpoint of this recipe in output_dir and continue it (resuming also happens automatically when one exists).")] = False,
    accept_data_change: Annotated[bool, typer.Option("--accept-data-change", help="Resume even if a manifest or shard folder changed since the checkpoint was written (otherwise an error: the checkpoint's sampler position refers to the old rows).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Remove the selected stages' directories in output_dir (checkpoints, export, metrics) and train them from the start.")] = False,
) -> None:
    """Train every stage of a recipe in order (single process, or under `accelerate launch`).

    A run continues where it stopped. max_steps, epochs, log_every, save_every, keep_last, max_bad_steps, data.num_workers, data.log_batches and trackers may change between runs: a finished stage given more steps continues from its last checkpoint, its learning-rate schedule rebuilt for the new length from the step reached. Other changes are refused, naming the fields that differ; --restart starts the selected stages over.
    """
    from accelerate import PartialState

    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train as run

    loaded = load_recipe(recipe, overrides or [], default_registry())
    exports = run(loaded, stage=stage, from_stage=from_stage, resume=resume, accept_data_change=accept_data_change,
                  restart=restart)
    if exports and PartialState().is_main_process:  # once, not once per process
        typer.echo(f"done: final export at {exports[-1]}")
