"""The training data loader: each process's share of every global batch of the mixture
sampler, read and collated (audio decoding, resampling, features, SpecAugment, prompts) by a
``torch.utils.data.DataLoader``, in worker processes when ``num_workers > 0``.

The loader prefetches, so the sampler runs ahead of training; every loaded batch therefore
carries the sampler position after it (``position``), and a checkpoint records the position of
the last batch the training loop consumed: resume is exact with any number of workers.
SpecAugment masks are seeded per row from (stage seed, epoch, global batch, row in the global
batch), so they do not depend on which worker, how many processes, or whether the run resumed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from swv.core.errors import SwvError
from swv.data.collate import AUGMENT_SEED
from swv.data.sampler import MixtureSampler, RowSource, Share

if TYPE_CHECKING:
    from swv.data.collate import SpeechCollator


def default_num_workers(world_size: int) -> int:
    """Workers per training process when the recipe does not say: the CPU cores left per
    process after the training process itself, at most 4 (0 on a machine with one core per
    process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, world_size) - 1))


def augment_seed(seed: int, epoch: int, batch: int, row: int) -> int:
    """The SpecAugment seed of row ``row`` of global batch ``batch`` of ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, batch, row]).generate_state(1)[0])


class ShareSampler:
    """The DataLoader's batch sampler: this process's :class:`Share` of each global batch,
    from the mixture sampler's current position on (endless)."""

    def __init__(self, sampler: MixtureSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[Share]:
        return self.sampler.shares()


class ShareDataset(torch.utils.data.Dataset):
    """The stage's rows as the DataLoader fetches them: ``__getitems__`` receives a whole
    :class:`Share` and returns it with its rows (each with its SpecAugment seed)."""

    def __init__(self, data: RowSource, seed: int) -> None:
        self.data = data
        self.seed = seed

    def __len__(self) -> int:
        return sum(self.data.sizes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data.rows([index])[0]

    def __getitems__(self, share: Share) -> tuple[Share, list[dict[str, Any]]]:
        rows = self.data.rows(share.indices) if share.indices else []
        for i, row in enumerate(rows):
            row[AUGMENT_SEED] = augment_seed(self.seed, share.epoch, share.batch, share.offset + i)
        return share, rows


class CollateShare:
    """``(share, rows)`` -> ``{"inputs": collated batch, "indices", "rows", "global_rows",
    "epoch", "position"}``. A user error (e.g. unreadable audio) is returned as ``"error"`` and raised
    by the training process, so that it stays one line (a worker's exception would come back
    wrapped in a traceback)."""

    def __init__(self, collate: SpeechCollator) -> None:
        self.collate = collate

    def __call__(self, fetched: tuple[Share, list[dict[str, Any]]]) -> dict[str, Any]:
        share, rows = fetched
        out: dict[str, Any] = {
            "indices": share.indices,
            "rows": len(share.indices),
            "global_rows": share.global_rows,
            "epoch": share.epoch,
            "position": dict(share.after),
        }
        try:
            out["inputs"] = self.collate(rows) if rows else {}
        except SwvError as exc:
            out["error"] = (type(exc), str(exc))
        return out


def training_loader(
    data: RowSource,
    sampler: MixtureSampler,
    collate: SpeechCollator,
    *,
    seed: int,
    num_workers: int,
    pin_memory: bool,
) -> torch.utils.data.DataLoader:
    """The stage's endless loader from the sampler's current position (set it first)."""
    return torch.utils.data.DataLoader(
        ShareDataset(data, seed),
        batch_sampler=ShareSampler(sampler),
        collate_fn=CollateShare(collate),
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
        # the loader's own seed generator, so that creating it leaves the global RNG alone
        generator=torch.Generator().manual_seed(seed),
    )


class BatchLog:
    """``batches-rank<N>.jsonl``: the rows one process trained on, one line per micro-batch
    (``data.log_batches``)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # drop lines past the step we resume from
            kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(k + "\n" for k in kept))

    def write(self, step: int, micro: int, indices: list[int]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "micro": micro, "rows": indices}) + "\n")


def next_batch(batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The next loaded batch; re-raises a user error a worker reported."""
    batch = next(batches)
    if "error" in batch:
        kind, message = batch["error"]
        raise kind(message)
    return batch
