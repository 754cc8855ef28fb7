"""Experiment trackers: any tracker accelerate supports, checked up front, and the resolved
recipe flattened into the scalar hyperparameters trackers accept.

One tracker run covers every stage of a ``swv train`` invocation (scalars tagged
``<stage>/<name>``); TensorBoard writes it to ``<output_dir>/tensorboard``
(``tensorboard --logdir <output_dir>/tensorboard``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swv.core.errors import SwvError, UsageError, first_line

#: accelerate's pseudo-tracker meaning "every installed tracker" (swv asks for explicit names)
_ALL = "all"
#: TensorBoard's folder under the recipe's ``output_dir``
TENSORBOARD_DIR = "tensorboard"


def supported_trackers() -> list[str]:
    """Every tracker name accelerate knows (installed or not), e.g. tensorboard, wandb, mlflow."""
    from accelerate.utils import LoggerType

    return [t.value for t in LoggerType if t.value != _ALL]


def check_trackers(names: list[str], field: str = "trackers", *, installed_only: bool = True) -> list[str]:
    """``names`` if each is a tracker accelerate supports and (with ``installed_only``) finds
    installed; else a :class:`UsageError` naming the tracker and what is known or installed."""
    from accelerate.tracking import get_available_trackers

    known = supported_trackers()
    installed = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in known:
            raise UsageError(f"{field}: unknown tracker {name!r}; accelerate supports {', '.join(known)}")
        if installed_only and name not in installed:
            found = ", ".join(sorted(installed)) or "none"
            raise UsageError(f"{field}: tracker {name!r} is not installed (pip install {name}); installed: {found}")
    if len(set(names)) != len(names):
        raise UsageError(f"{field}: a tracker is listed twice ({', '.join(names)})")
    return list(names)


def tracker_handles(names: list[str], output_dir: Path) -> list[Any]:
    """accelerate's ``log_with`` for the tracker ``names``: the names themselves, except
    TensorBoard, built here to write to ``<output_dir>/tensorboard`` (accelerate's own would
    write to ``<output_dir>/<name of output_dir>``, named after the tracker project)."""
    from accelerate.tracking import TensorBoardTracker

    return [TensorBoardTracker(TENSORBOARD_DIR, output_dir) if name == TensorBoardTracker.name else name for name in names]


def flatten_hparams(values: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested mappings -> ``{"a.b.c": scalar}``: what tensorboard's hparams and mlflow's params
    accept. Lists of mappings are numbered (``stages.0.optimizer.lr``); other lists and ``None``
    become their JSON text."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
            value = {str(i): item for i, item in enumerate(value)}
        if isinstance(value, Mapping):
            out.update(flatten_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def numeric(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric entries of ``record`` (nested mappings flattened with ``/``) under ``prefix/``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(numeric(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out


def start_trackers(accelerator: Any, project: str, names: list[str], config: Mapping[str, Any]) -> None:
    """``accelerator.init_trackers`` with ``config`` as hyperparameters; a tracker library that
    refuses to start (a bad tracking URI, a store it will not use, missing credentials) is one
    :class:`SwvError` naming the trackers and the library's reason, not a traceback."""
    try:
        accelerator.init_trackers(project, config=flatten_hparams(config))
    except Exception as exc:  # each tracker library raises its own errors
        raise SwvError(
            f"trackers: could not start {', '.join(names)} ({type(exc).__name__}: {first_line(exc)}); "
            "check the tracker's settings (environment variables such as MLFLOW_TRACKING_URI or WANDB_API_KEY)"
        ) from exc
