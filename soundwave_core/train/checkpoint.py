"""Training checkpoints: trainable weights, optimizer, scheduler, sampler position and RNG
states, written to a temporary directory and renamed into place; the last K are kept."""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from swv.errors import InputError
from swv.io import atomic_directory, atomic_write_json

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int
    sampler: dict[str, int]
    bad_steps: int
    recipe_hash: str
    samples_seen: int = 0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
    }
    return state


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (tuple, list)):
        return [_jsonable(o) for o in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict) and "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if isinstance(obj, list):
        return tuple(_from_json(o) for o in obj)
    return obj


def save_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    recipe_yaml: str,
    rank: int,
    is_main: bool,
) -> None:
    """Main process writes the shared files; every rank writes its own RNG state."""
    if is_main:
        with atomic_directory(directory) as tmp:
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "recipe.yaml").write_text(recipe_yaml)
            (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=2))
            _save_rng(tmp, rank)
    else:
        _save_rng(directory, rank)


def _save_rng(directory: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    save_file(tensors, str(directory / f"rng_rank{rank}.safetensors"))
    atomic_write_json(directory / f"rng_rank{rank}.json", rng_state())


def load_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
) -> TrainerState:
    weights = load_file(str(directory / "trainable.safetensors"))
    params = dict(model.named_parameters())
    unknown = [k for k in weights if k not in params]
    if unknown:
        raise InputError(f"{directory}: checkpoint has weights this model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True, map_location="cpu"))
    rng_file = directory / f"rng_rank{rank}.safetensors"
    if rng_file.is_file():
        tensors = load_file(str(rng_file))
        torch.set_rng_state(tensors["torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
        py = json.loads((directory / f"rng_rank{rank}.json").read_text())
        random.setstate(_from_json(py["python"]))
        np.random.set_state(_from_json(py["numpy"]))
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
