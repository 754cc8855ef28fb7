"""A recipe's identity: the settings a checkpoint depends on.

Everything in the resolved recipe counts except where the run lives (``output_dir``) and the
settings a run can change without invalidating its checkpoints (:data:`CONTINUABLE`): how long a
stage trains (``max_steps``, ``epochs``), how often it logs, checkpoints (and evaluates, at each
checkpoint) and how many checkpoints it keeps, when it gives up on non-finite losses, the data
loader's worker processes, the batch log, the trackers and the description. Changing one of
those continues the run; a stage whose length changes continues from its latest checkpoint (see
:class:`swv.train.runner.StageRunner`). Any other change is a different recipe, reported as the
list of fields that differ (:func:`identity_diff`).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swv.recipes.schema import StageSettings

#: Top-level settings that do not invalidate a checkpoint (dotted paths).
CONTINUABLE = ("output_dir", "description", "trackers", "data.num_workers", "data.log_batches")
#: Per-stage settings that do not invalidate a checkpoint.
CONTINUABLE_STAGE = ("max_steps", "epochs", "log_every", "save_every", "keep_last", "max_bad_steps")
#: The most differing fields named in one message.
MAX_NAMED_DIFFERENCES = 6


def _without(mapping: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        mapping.pop(head, None)
    elif isinstance(mapping.get(head), dict):
        _without(mapping[head], rest)


def recipe_identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe without the settings in :data:`CONTINUABLE` and, in each stage,
    :data:`CONTINUABLE_STAGE`."""
    identity = json.loads(json.dumps(resolved))  # a deep copy of plain data
    for dotted in CONTINUABLE:
        _without(identity, dotted)
    for stage in identity.get("stages") or []:
        if isinstance(stage, dict):
            for key in CONTINUABLE_STAGE:
                stage.pop(key, None)
    return identity


def recipe_hash(resolved: dict[str, Any]) -> str:
    """A short digest of :func:`recipe_identity` (recorded in checkpoints and ``stage.json``)."""
    return hashlib.sha256(json.dumps(recipe_identity(resolved), sort_keys=True).encode()).hexdigest()[:16]


def stage_length(settings: StageSettings) -> dict[str, int | None]:
    """The settings that set how many steps a stage trains (recorded in its ``stage.json``)."""
    return {"max_steps": settings.max_steps, "epochs": settings.epochs}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}" if prefix else str(index), out)
    else:
        out[prefix] = value


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields in which the identities of two resolved recipes differ, each as
    ``path: old -> new`` (``stages.0.optimizer.lr: 0.003 -> 0.001``), in the new recipe's order."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(recipe_identity(old), "", before)
    _flatten(recipe_identity(new), "", after)
    paths = [*after, *(p for p in before if p not in after)]
    return [
        f"{path}: {_show(before.get(path, _ABSENT))} -> {_show(after.get(path, _ABSENT))}"
        for path in paths
        if before.get(path, _ABSENT) != after.get(path, _ABSENT)
    ]


def describe_differences(differences: list[str]) -> str:
    """The first :data:`MAX_NAMED_DIFFERENCES` differences on one line."""
    shown = "; ".join(differences[:MAX_NAMED_DIFFERENCES])
    more = len(differences) - MAX_NAMED_DIFFERENCES
    return shown + (f"; and {more} more" if more > 0 else "")
