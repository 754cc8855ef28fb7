"""``metrics.jsonl``: what a training stage logs, one JSON object per line, and a reader that
survives a line torn by a kill or a full disk.

A record is either a step record (``step`` and numbers: the training window's ``loss`` and
each ``<name>_loss``, ``lr``, ``epoch``, ``samples_per_s``; or the held-out losses
``eval_loss`` and ``eval_<name>_loss``) or an event (it has an ``event`` key, e.g. the task
mixture of an epoch), which is not a curve.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

#: the file each stage logs to, in its folder of the run's output directory
METRICS_FILE = "metrics.jsonl"
STEP = "step"
EPOCH = "epoch"
EVENT = "event"
#: the weighted training loss; the unweighted losses are ``<name>_loss``
TOTAL_LOSS = "loss"
LOSS_SUFFIX = "_loss"
#: held-out losses: the training names behind this prefix
EVAL_PREFIX = "eval_"
LEARNING_RATE = "lr"
THROUGHPUT = "samples_per_s"
#: the trainable parameters' gradient norm before clipping (the optimizer step's)
GRAD_NORM = "grad_norm"


def is_loss(key: str) -> bool:
    """Whether ``key`` names a loss (training or held-out)."""
    name = key.removeprefix(EVAL_PREFIX)
    return name == TOTAL_LOSS or name.endswith(LOSS_SUFFIX)


def is_held_out(key: str) -> bool:
    return key.startswith(EVAL_PREFIX)


def read_metrics_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a ``metrics.jsonl``; lines that are not one (a record torn by a kill
    or a full disk) are dropped with a warning naming the file and line."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            print(f"warning: {path}:{number}: dropped a torn or invalid metrics record", file=sys.stderr)
            continue
        records.append(record)
    return records


def step_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The step records of a ``metrics.jsonl`` (events skipped); none when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    return [r for r in read_metrics_records(path) if EVENT not in r and STEP in r]
