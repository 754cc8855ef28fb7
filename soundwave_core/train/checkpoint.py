"""Training checkpoints through accelerate's ``save_state``/``load_state``: the model and
optimizer as the distributed setup shards them (FSDP, DeepSpeed ZeRO: each process's part;
DDP and one process: the trainable weights only, ``trainable.safetensors``), every process's
RNG states, plus the scheduler, the trainer state (step, sampler position) and the recipe.
All processes write into a temporary directory that the main process renames into place once
complete; the last ``keep_last`` are kept.

Checkpoints written by swv before this layout (``optimizer.pt``, ``rng_rank*.json``) are not
read: resume such a run from its stage's export instead (``stages.N.init_from``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from swv.errors import InputError

if TYPE_CHECKING:
    from accelerate import Accelerator

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
SCHEDULER_FILE = "scheduler.pt"
RECIPE_FILE = "recipe.yaml"
RNG_FILE = "random_states_{rank}.pkl"  # accelerate's name for a process's RNG states


@dataclass
class TrainerState:
    step: int
    sampler: dict[str, int]  # the sampler position after the last consumed batch
    bad_steps: int
    recipe_hash: str
    samples_seen: int = 0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


class TrainableWeightsHooks:
    """accelerate save/load pre-hooks of one stage: for models accelerate saves whole (one
    process, DDP), write and read only the trainable weights (a frozen 8B backbone is not
    copied into every checkpoint). FSDP and DeepSpeed models are left to accelerate."""

    def __init__(self, acc: Accelerator) -> None:
        self.acc = acc
        self.handles = [acc.register_save_state_pre_hook(self.save), acc.register_load_state_pre_hook(self.load)]

    def save(self, models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        if not weights:  # FSDP / DeepSpeed: accelerate saves the shards itself
            return
        if len(models) != 1 or len(weights) != 1:
            raise InputError(f"{output_dir}: expected one model to checkpoint, got {len(models)}")
        weights.clear()
        if self.acc.is_main_process:
            save_file(trainable_state(self.acc.unwrap_model(models[0])), str(Path(output_dir) / TRAINABLE_FILE))

    def load(self, models: list[nn.Module], input_dir: str) -> None:
        if not models:
            return
        model = self.acc.unwrap_model(models.pop())
        weights = load_file(str(Path(input_dir) / TRAINABLE_FILE))
        params = dict(model.named_parameters())
        unknown = [k for k in weights if k not in params]
        if unknown:
            raise InputError(f"{input_dir}: checkpoint has weights this model lacks: {unknown[:3]}")
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def save_checkpoint(acc: Accelerator, target: Path, *, scheduler: Any, state: TrainerState, recipe_yaml: str) -> None:
    """Called by every process: ``acc.save_state`` into ``.<name>.tmp`` beside ``target``; the
    main process adds the scheduler, recipe and trainer state (last: it marks the checkpoint
    complete) and renames the directory to ``target``."""
    tmp = target.with_name(f".{target.name}.tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        (tmp / RECIPE_FILE).write_text(recipe_yaml)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        _replace_directory(tmp, target)
    acc.wait_for_everyone()


def _replace_directory(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is removed only once replaced."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(acc: Accelerator, directory: Path, *, scheduler: Any) -> TrainerState:
    """Called by every process: restore what :func:`save_checkpoint` wrote (model, optimizer,
    this process's RNG states, scheduler) and return the trainer state."""
    if not (directory / RNG_FILE.format(rank=0)).is_file():
        raise InputError(
            f"{directory}: not a checkpoint of this swv version (no {RNG_FILE.format(rank=0)}); start the "
            "stage again in a new output_dir, or continue from an export with stages.N.init_from"
        )
    acc.load_state(str(directory))
    scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True, map_location="cpu"))
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = STEP_DIR.match(child.name)
        if m and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_recipe_hash(directory: Path) -> str | None:
    try:
        return json.loads((directory / STATE_FILE).read_text()).get("recipe_hash")
    except (OSError, json.JSONDecodeError):
        return None
