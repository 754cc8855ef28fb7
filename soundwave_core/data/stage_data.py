"""A stage's training data: the recipe's sources concatenated (or streamed, :mod:`swv.data.streaming`),
sampled by the mixture sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from swv.core.errors import UsageError
from swv.data.sampler import MixtureSampler, RowSource
from swv.data.sources import load_source
from swv.data.streaming import StreamingStageData, load_streaming_stage_data
from swv.recipes.schema import DataSection, StageData


@dataclass
class StageDataset(RowSource):
    """The random-access row source: the stage's sources loaded and concatenated; a row is its
    index in the concatenation."""

    dataset: Any  # datasets.Dataset: the concatenation of the sources, in stage order
    names: list[str]
    sizes: list[int]
    random_access: ClassVar[bool] = True

    @cached_property
    def durations(self) -> np.ndarray:
        return np.asarray(self.dataset["duration"], dtype=np.float64)

    def take(self, tasks: np.ndarray, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
        """Each task's rows in a fresh permutation per pass over it (as many passes as its count
        of ``tasks`` needs), then all of them in one permutation."""
        offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        picks: list[np.ndarray] = []
        for k, count in enumerate(np.bincount(tasks, minlength=len(self.sizes)).tolist()):
            if count == 0:
                continue
            reps = math.ceil(count / self.sizes[k])
            perm = np.concatenate([rng.permutation(self.sizes[k]) for _ in range(reps)])[:count]
            picks.append(perm + offsets[k])
        rows = rng.permutation(np.concatenate(picks))
        return rows.tolist(), self.durations[rows]

    def rows(self, indices: list[int]) -> list[dict[str, Any]]:
        batch = self.dataset[indices]
        return [{k: batch[k][i] for k in batch} for i in range(len(indices))]


def load_stage_data(section: DataSection, names: list[str], where: str, cache_dir: str | None = None,
                    *, seed: int = 0, allow_streaming: bool = False) -> StageDataset | StreamingStageData:
    """The stage's sources; streams (:mod:`swv.data.streaming`) when any of them is ``streaming``
    (only where ``allow_streaming``: a stage's training data)."""
    import datasets

    streaming = [name for name in names if section.datasets[name].streaming]
    if streaming and not allow_streaming:
        raise UsageError(f"{where}: data source {streaming[0]!r} is streaming; only a stage's training datasets "
                         "can stream (not eval_datasets, nor cache-features)")
    if streaming:
        return load_streaming_stage_data(section, names, seed)

    parts = []
    sizes = []
    for name in names:
        ds = load_source(name, section.datasets[name], cache_dir=cache_dir)
        if len(ds) == 0:
            raise UsageError(f"{where}: data source {name!r} has no usable rows")
        parts.append(ds)
        sizes.append(len(ds))
    return StageDataset(datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0], list(names), sizes)


def recipe_tags(section: DataSection, cache_dir: str | None = None) -> list[str]:
    """Every tag (``tags`` field, e.g. sound tags from ``swv data sound-insert``) of every data
    source of the recipe, sorted: the special tokens the model's tokenizer must have, decided
    once for all stages so that every stage shares one vocabulary."""
    from swv.data.sources import source_tags

    tags: set[str] = set()
    for name, spec in section.datasets.items():
        if spec.streaming:  # not scanned: a stream is not read ahead of training
            continue
        tags |= source_tags(load_source(name, spec, cache_dir=cache_dir))
    return sorted(tags)


def make_sampler(
    data: RowSource,
    stage_data: StageData,
    batch_size: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
    max_frames_per_batch: int | None,
    frame_rate: float,
) -> MixtureSampler:
    """``batch_size`` is the global batch; ``max_frames_per_batch`` is a per-process budget
    (a global batch may hold ``world_size`` times as many frames)."""
    frames = None if max_frames_per_batch is None else max_frames_per_batch * world_size
    return MixtureSampler(
        data,
        batch_size,
        temperature=stage_data.mixture.temperature,
        temperature_step=stage_data.mixture.temperature_step,
        max_frames_per_batch=frames,
        frame_rate=frame_rate,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
