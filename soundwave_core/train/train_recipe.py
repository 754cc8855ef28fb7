"""``swv train``: run a recipe's stages in order, each from the previous stage's export.

A run continues where it stopped: a finished stage is skipped, an unfinished one resumes from its
latest checkpoint. Settings that do not change a recipe's identity (:mod:`swv.train.identity`:
``max_steps``, ``epochs``, logging, checkpoint and evaluation cadence, ``keep_last``, data loader
workers...) can change between runs; a finished stage whose length changed is reopened and
continues from its last checkpoint, its learning-rate schedule rebuilt for the new length from the
step reached. Any other change is refused, naming the fields that differ, unless ``restart``
(``swv train --restart``) removes the selected stages' directories first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from swv.core.config import CONFIG_NAME
from swv.core.errors import UsageError
from swv.core.io import atomic_write_json, atomic_write_text, inside, writable_directory
from swv.registry.plugins import default_registry
from swv.train.checkpoint import remove_leftovers
from swv.train.identity import recipe_hash, stage_length
from swv.train.lock import OutputDirLock
from swv.train.plots import RUN_FILE, plot_finished_stage, plots_enabled
from swv.train.runner import RunContext, StageRunner, stage_done, stage_record
from swv.train.stages import recipe_stages


def select_stages(names: list[str], only: str | None, start: str | None) -> list[int]:
    for value, flag in ((only, "--stage"), (start, "--from-stage")):
        if value is not None and value not in names:
            raise UsageError(f"{flag} {value!r}: no such stage; the recipe has {', '.join(names)}")
    if only is not None and start is not None:
        raise UsageError("use either --stage or --from-stage, not both")
    if only is not None:
        return [names.index(only)]
    first = names.index(start) if start is not None else 0
    return list(range(first, len(names)))


def _accelerator(recipe: Any) -> tuple[Any, Any]:
    """The run's accelerator and its DDP settings (each stage decides ``find_unused_parameters``,
    :meth:`swv.train.runner.StageRunner.configure_ddp`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from swv.train.tracking import check_trackers, tracker_handles

    names = check_trackers(list(recipe.trackers))
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
    acc = Accelerator(
        cpu=launched_without_accelerator(),
        mixed_precision=recipe.precision,
        log_with=tracker_handles(names, Path(recipe.output_dir)) or None,
        project_dir=recipe.output_dir,
        kwargs_handlers=[ddp],
    )
    return acc, ddp


def launched_without_accelerator() -> bool:
    """Several processes (``WORLD_SIZE`` > 1, set by torchrun / ``accelerate launch``) on a
    machine without GPUs: accelerate must be told to use the CPU, or each process sees a world
    of one (DistributedType.NO) instead of joining a gloo group (MULTI_CPU)."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def batch_plan(recipe: Any, world_size: int) -> dict[str, dict[str, int]]:
    """Per stage: the global batch, the per-process micro-batch derived from it, the gradient
    accumulation and the rows per optimizer step. Raises :class:`UsageError` when a global
    batch does not divide over the processes."""
    plan = {}
    for i, settings in enumerate(recipe.stages):
        if settings.batch_size % world_size:
            raise UsageError(
                f"stages[{i}] ({settings.name}).batch_size: the global batch {settings.batch_size} does not divide "
                f"over {world_size} processes; use a multiple of {world_size} or another number of processes"
            )
        plan[settings.name] = {
            "global_batch": settings.batch_size,
            "per_device_batch": settings.batch_size // world_size,
            "grad_accum": settings.grad_accum,
            "rows_per_step": settings.batch_size * settings.grad_accum,
        }
    return plan


def train(loaded: Any, *, stage: str | None = None, from_stage: str | None = None, resume: bool = False,
          accept_data_change: bool = False, restart: bool = False) -> list[Path]:
    """Run the selected stages of a validated recipe; returns the export directories. A stage
    resumed from a checkpoint whose data files changed since is refused unless
    ``accept_data_change``; ``restart`` removes the selected stages' directories (checkpoints,
    export, metrics) first, so they train from the start."""
    recipe = loaded.recipe
    resolved = loaded.resolved()
    digest = recipe_hash(resolved)
    output_dir = Path(recipe.output_dir)
    names = [s.name for s in recipe.stages]
    selected = select_stages(names, stage, from_stage)
    stages = recipe_stages(loaded, default_registry())  # every stage's losses checked up front
    if resume and restart:
        raise UsageError("use either --resume or --restart, not both")
    if resume and not any((output_dir / names[i] / "checkpoints").is_dir() or stage_done(output_dir / names[i], digest) for i in selected):
        raise UsageError(f"--resume: {output_dir} holds no checkpoint of this recipe")

    writable_directory(output_dir, "output_dir")
    acc, ddp = _accelerator(recipe)
    plan = batch_plan(recipe, acc.num_processes)
    with OutputDirLock(output_dir) if acc.is_main_process else contextlib.nullcontext() as lock:
        if lock is not None and lock.took_over is not None:
            print(f"{output_dir}: took over the lock of pid {lock.took_over}, which is no longer running", flush=True)
        if restart and acc.is_main_process:
            _remove_stages(output_dir, {i: names[i] for i in selected})
        acc.wait_for_everyone()
        return _train_locked(loaded, (acc, ddp), plan, selected, stages, digest, accept_data_change)


def _remove_stages(output_dir: Path, names: dict[int, str]) -> None:
    """``--restart``: remove the directory (checkpoints, export, metrics) of each stage, by index."""
    for index, name in names.items():
        stage_dir = inside(output_dir, name, f"stages[{index}].name")
        if stage_dir.is_dir() and not stage_dir.is_symlink():
            shutil.rmtree(stage_dir)
            print(f"removed {stage_dir} (--restart)", flush=True)


def _train_locked(loaded: Any, accelerator: tuple[Any, Any], plan: dict[str, dict[str, int]], selected: list[int],
                  stages: list[Any], digest: str, accept_data_change: bool) -> list[Path]:
    """:func:`train` once the output directory is locked."""
    from accelerate.utils import set_seed

    acc, ddp = accelerator
    recipe = loaded.recipe
    resolved = loaded.resolved()
    output_dir = Path(recipe.output_dir)
    names = [s.name for s in recipe.stages]
    set_seed(recipe.seed)
    if not sys.stderr.isatty():  # keep logs of non-interactive runs readable
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    recipe_yaml = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    ctx = RunContext(loaded, digest, recipe_yaml, output_dir, acc, accept_data_change, ddp)
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "recipe.yaml", recipe_yaml)
        atomic_write_json(output_dir / RUN_FILE, {"stages": names, "recipe_hash": digest, "source": str(loaded.source),
                                                  "world_size": acc.num_processes,
                                                  "distributed_type": str(acc.distributed_type).rsplit(".", 1)[-1],
                                                  "batch": plan})
    for name, entry in plan.items():
        ctx.print(f"{name}: global batch {entry['global_batch']} = {acc.num_processes} process(es) x "
                  f"{entry['per_device_batch']}, x {entry['grad_accum']} accumulation = {entry['rows_per_step']} rows per step")
    if recipe.trackers:
        from swv.train.tracking import start_trackers

        start_trackers(acc, Path(recipe.output_dir).name, list(recipe.trackers), resolved)
    exports = _run_stages(ctx, stages, selected)
    if recipe.trackers:
        acc.end_training()
    return exports


def _run_stages(ctx: RunContext, stages: list[Any], selected: list[int]) -> list[Path]:
    """Each selected stage in order: skipped when done, reopened when done with another length,
    else trained (or resumed); returns the export directories."""
    recipe, output_dir = ctx.recipe, ctx.output_dir
    exports = []
    draw = ctx.accelerator.is_main_process and plots_enabled(ctx.print)
    for i in selected:
        settings = recipe.stages[i]
        stage_dir = output_dir / settings.name
        if ctx.accelerator.is_main_process:
            for leftover in remove_leftovers(stage_dir / "checkpoints", stage_dir / "export"):
                ctx.print(f"removed {leftover}, left behind by an interrupted run")
        record = stage_record(stage_dir)
        _warn_if_stale(ctx, i, record)
        reopened = stage_done(stage_dir, ctx.recipe_hash) and record.get("length") != stage_length(settings)
        if stage_done(stage_dir, ctx.recipe_hash) and not reopened:
            ctx.print(f"stage {settings.name} already done ({stage_dir / 'export'}); skipping")
            exports.append(stage_dir / "export")
            continue
        if reopened:
            ctx.print(f"stage {settings.name} finished at step {record.get('step')}; its length changed "
                      f"({record.get('length')} -> {stage_length(settings)}): continuing it from its last checkpoint")
        exports.append(StageRunner(ctx, stages[i], _init_dir(recipe, i, output_dir), reopened=reopened).run())
        if draw:
            plot_finished_stage(output_dir, [s.name for s in recipe.stages], settings.name, ctx.print)
    return exports


def _warn_if_stale(ctx: RunContext, index: int, record: dict[str, Any]) -> None:
    """Warn when stage ``index`` was trained from the previous stage's export at another step
    than that stage has reached now (it was continued since)."""
    if index == 0 or ctx.recipe.stages[index].init_from is not None or record.get("init_step") is None:
        return
    prev = ctx.recipe.stages[index - 1].name
    now = stage_record(ctx.output_dir / prev).get("step")
    if now is not None and now != record["init_step"]:
        name = ctx.recipe.stages[index].name
        ctx.print(f"warning: stage {name} was trained from stage {prev}'s export at step {record['init_step']}; "
                  f"{prev} has been continued to step {now} since: pass --from-stage {name} --restart to retrain {name}")


def _init_dir(recipe: Any, index: int, output_dir: Path) -> Path | None:
    settings = recipe.stages[index]
    if settings.init_from is not None:
        path = Path(settings.init_from)
        if not (path / CONFIG_NAME).is_file():
            raise UsageError(f"stages[{index}].init_from: {path} is not an exported swv model (no {CONFIG_NAME})")
        return path
    if index == 0:
        return None
    prev = recipe.stages[index - 1].name
    path = output_dir / prev / "export"
    if not (path / CONFIG_NAME).is_file():
        raise UsageError(
            f"stage {settings.name!r} starts from stage {prev!r}'s export at {path}, which does not exist: "
            f"run that stage first or set stages[{index}].init_from"
        )
    return path


def cache_stage_features(loaded: Any, stage: str, *, batch_size: int = 8, device: str = "cpu") -> tuple[Path, int, int]:
    """Run the stage's frozen encoder once over its audio and store the outputs.

    Returns ``(cache_dir, newly_cached, already_cached)``.
    """
    from swv.core.devices import resolve_device
    from swv.data.feature_cache import build_cache
    from swv.data.hf_sources import EMBEDDED_AUDIO_PREFIX
    from swv.data.shards import SHARD_AUDIO_PREFIX
    from swv.data.stage_data import load_stage_data
    from swv.train.runner import build_model, feature_cache_dir

    recipe = loaded.recipe
    names = [s.name for s in recipe.stages]
    index = select_stages(names, stage, None)[0]
    model = build_model(loaded, _init_dir(recipe, index, Path(recipe.output_dir)))
    if not model.encoder.frozen:
        raise UsageError(f"stages[{index}] ({stage}): the encoder is not frozen, so its outputs cannot be cached")
    settings = recipe.stages[index]
    data = load_stage_data(recipe.data, list(dict.fromkeys(settings.data.datasets + settings.data.eval_datasets)), f"stages[{index}]")
    paths = [p for p in data.dataset["audio"] if p and not p.startswith((EMBEDDED_AUDIO_PREFIX, SHARD_AUDIO_PREFIX))]
    target = feature_cache_dir(recipe)
    new, old = build_cache(target, model.encoder, paths, batch_size=batch_size, device=str(resolve_device(device)))
    return target, new, old
