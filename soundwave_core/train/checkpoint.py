"""Training checkpoints through accelerate's ``save_state``/``load_state``: the model and
optimizer as the distributed setup shards them (FSDP, DeepSpeed ZeRO: each process's part;
DDP and one process: the trainable weights only, ``trainable.safetensors``), every process's
RNG states, plus the scheduler, the trainer state (step, sampler position) and the recipe.
All processes write into a temporary directory that the main process completes with
``manifest.json`` (every file's size and sha256, written last), fsyncs and renames into place;
the last ``keep_last`` are kept. Resuming verifies a checkpoint against its manifest first and
falls back to the newest intact one. A write that fails (disk full, file-size limit) leaves no
checkpoint behind, and a run killed while writing leaves temporary directories that the next
run removes (:func:`remove_leftovers`).

Checkpoints written by swv before this layout (no manifest) are not read: resume such a run
from its stage's export instead (``stages.N.init_from``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from swv.core.errors import InputError, unpickling_detail
from swv.core.io import (
    fsync_directory,
    fsync_tree,
    leftover_temporaries,
    write_errors,
    write_failure,
)
from swv.train.sharded import is_sharded, load_weights, trainable_state

if TYPE_CHECKING:
    from accelerate import Accelerator

STEP_DIR = re.compile(r"^step-(\d+)$")
TEMPORARY_DIR = re.compile(r"^\.step-\d+\.(tmp|old)$")  # save_checkpoint's and _replace_directory's names
MANIFEST_FILE = "manifest.json"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
SCHEDULER_FILE = "scheduler.pt"
RECIPE_FILE = "recipe.yaml"


@dataclass
class TrainerState:
    step: int
    sampler: dict[str, int]  # the sampler position after the last consumed batch
    bad_steps: int
    recipe_hash: str
    samples_seen: int = 0
    #: the fingerprint of each file-backed data source of the stage (:mod:`swv.data.fingerprint`)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the stage's length in steps when the checkpoint was written (0: not recorded, older swv)
    total_steps: int = 0


class TrainableWeightsHooks:
    """accelerate save/load pre-hooks of one stage: for models accelerate saves whole (one
    process, DDP), write and read only the trainable weights (a frozen 8B backbone is not
    copied into every checkpoint), gathered whole from sharded parameters
    (:mod:`swv.train.sharded`). Models that accelerate checkpoints itself (its FSDP and
    DeepSpeed types: each process's shard) are left to accelerate."""

    def __init__(self, acc: Accelerator) -> None:
        self.acc = acc
        self.handles = [acc.register_save_state_pre_hook(self.save), acc.register_load_state_pre_hook(self.load)]

    def save(self, models: list[nn.Module], weights: list[dict[str, Any]], output_dir: str) -> None:
        """Every process (gathering sharded weights is a collective); the main process writes."""
        if not weights:  # FSDP / DeepSpeed: accelerate saves the shards itself
            return
        if len(models) != 1 or len(weights) != 1:
            raise InputError(f"{output_dir}: expected one model to checkpoint, got {len(models)}")
        weights.clear()
        model = self.model(models[0])
        if self.acc.is_main_process or is_sharded(model):
            state = trainable_state(model)
            if self.acc.is_main_process:
                save_file(state, str(Path(output_dir) / TRAINABLE_FILE))

    def load(self, models: list[nn.Module], input_dir: str) -> None:
        if not models:
            return
        model = self.model(models.pop())
        weights = load_file(str(Path(input_dir) / TRAINABLE_FILE))
        unknown = load_weights(model, weights)
        if unknown:
            raise InputError(f"{input_dir}: checkpoint has weights this model lacks: {unknown[:3]}")

    def model(self, prepared: nn.Module) -> nn.Module:
        """The module to read and write: sharded, the prepared one (the gathering needs FSDP1's
        wrapper); else the unwrapped model (no DDP ``module.`` prefix on the names)."""
        return prepared if is_sharded(prepared) else self.acc.unwrap_model(prepared)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def save_checkpoint(acc: Accelerator, target: Path, *, scheduler: Any, state: TrainerState, recipe_yaml: str) -> None:
    """Called by every process: ``acc.save_state`` into ``.<name>.tmp`` beside ``target``; the
    main process adds the scheduler, recipe, trainer state and, last, the manifest, fsyncs
    everything and renames the directory to ``target``. A failed write (disk full, file-size
    limit) removes the temporary directory and raises a one-line error naming ``target``."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
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
            write_manifest(tmp)
            _replace_directory(tmp, target)
    except write_errors() as exc:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(target, "the checkpoint", exc) from exc
    acc.wait_for_everyone()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _checkpoint_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST_FILE)


def write_manifest(directory: Path) -> None:
    """fsync every file of the checkpoint in ``directory``, then write ``manifest.json``: each
    file's size and sha256 (written last: a checkpoint without it is incomplete)."""
    fsync_tree(directory)
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _file_digest(p)}
        for p in _checkpoint_files(directory)
    }
    with open(directory / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        json.dump({"files": files}, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_directory(directory)


def verify_checkpoint(directory: Path) -> str | None:
    """Why the checkpoint in ``directory`` cannot be used (a missing, truncated or altered
    file, per its manifest; an unreadable trainer state), or None when it is intact."""
    try:
        files = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
        expected = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except FileNotFoundError:
        return f"no {MANIFEST_FILE} (incomplete, or written by an older swv)"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} is unreadable"
    for name, (size, _) in expected.items():  # sizes first: cheap
        try:
            found = (directory / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if found != size:
            return f"{name} has {found} bytes, expected {size}"
    for name, (_, digest) in expected.items():
        try:
            if _file_digest(directory / name) != digest:
                return f"{name} does not match its sha256 in {MANIFEST_FILE}"
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror})"
    if STATE_FILE not in expected:
        return f"{MANIFEST_FILE} does not list {STATE_FILE}"
    try:
        TrainerState(**json.loads((directory / STATE_FILE).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return f"{STATE_FILE} is unreadable"
    return None


def _replace_directory(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is removed only once replaced."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(acc: Accelerator, directory: Path, *, scheduler: Any) -> TrainerState:
    """Called by every process: restore what :func:`save_checkpoint` wrote (model, optimizer,
    this process's RNG states, scheduler) and return the trainer state. ``directory`` must have
    passed :func:`verify_checkpoint`."""
    try:
        acc.load_state(str(directory))
        scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True, map_location="cpu"))
    except pickle.UnpicklingError as exc:
        raise InputError(f"{directory}: {unpickling_detail(exc)}; this checkpoint was not written by swv") from None
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def list_checkpoints(root: Path) -> list[Path]:
    """The checkpoint directories (``step-N``) under ``root``, oldest first; see
    :func:`verify_checkpoint` for whether one is intact."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = STEP_DIR.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_intact_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under ``root`` that :func:`verify_checkpoint` accepts (None if
    there is none), and the newer ones it skipped, each with the reason."""
    skipped = []
    for candidate in reversed(list_checkpoints(root)):
        reason = verify_checkpoint(candidate)
        if reason is None:
            return candidate, skipped
        skipped.append((candidate, reason))
    return None, skipped


def remove_leftovers(checkpoints: Path, export: Path) -> list[Path]:
    """Remove the temporary directories a killed run left behind: ``.step-N.tmp``/``.old`` in
    ``checkpoints`` and the atomic-write temporaries of ``export``; returns what was removed.
    Call it only while holding the output directory's lock."""
    found = leftover_temporaries(export)
    if checkpoints.is_dir():
        found += sorted(p for p in checkpoints.iterdir() if TEMPORARY_DIR.match(p.name))
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def prune_checkpoints(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_recipe_hash(directory: Path) -> str | None:
    try:
        return json.loads((directory / STATE_FILE).read_text()).get("recipe_hash")
    except (OSError, json.JSONDecodeError):
        return None


def checkpoint_recipe(directory: Path) -> dict[str, Any] | None:
    """The resolved recipe a checkpoint was written with (its ``recipe.yaml``), or None if unreadable."""
    try:
        recipe = yaml.safe_load((directory / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return recipe if isinstance(recipe, dict) else None
