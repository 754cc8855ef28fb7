"""Batch sampling: temperature-based task mixture, length bucketing, sharding and resume.

Task k is drawn with probability ``p_k ∝ (n_k / Σ n)^(1/T)``. T = 1 samples in proportion to
the data (sample-level uniform); large T approaches a uniform mix of tasks. T starts at
``temperature`` and grows by ``temperature_step`` at every epoch (an epoch = Σ n samples).

Batches are built from pools of ``pool_batches`` batches' worth of samples, sorted by duration
inside the pool (so similar lengths share a batch), split by ``batch_size`` and an optional
frame budget, and shuffled. Everything derives from (seed, epoch), so the position
``(epoch, batch)`` is the whole resumable state.

``batch_size`` is the global batch: each batch is split across the ``world_size`` processes
(process r takes the r-th contiguous share), so every process count sees the same examples in
the same order per global step, and an epoch (the unit of the temperature schedule) is the
same number of examples seen whatever the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def mixture_probabilities(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """``p_k ∝ (n_k / Σ n)^(1/T)``, normalised."""
    sizes_arr = np.asarray(sizes, dtype=np.float64)
    if (sizes_arr <= 0).any():
        raise ValueError("every task needs at least one sample")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    p = (sizes_arr / sizes_arr.sum()) ** (1.0 / temperature)
    return p / p.sum()


@dataclass
class SamplerPosition:
    epoch: int = 0
    batch: int = 0  # global batches of this epoch already consumed


@dataclass
class Share:
    """One process's share of a global batch, and where the sampler is after it."""

    indices: list[int]  # global row indices of this process's share
    global_rows: int  # rows of the whole global batch (all processes)
    offset: int  # position of ``indices[0]`` inside the global batch
    epoch: int  # the epoch the batch belongs to
    batch: int  # its index in that epoch
    after: dict[str, int]  # the sampler's state after this batch (what a checkpoint records)


def split_by_budget(durations: Sequence[float], batch_size: int, max_frames: int | None, frame_rate: float) -> list[list[int]]:
    """Consecutive positions of duration-sorted rows grouped into batches of at most
    ``batch_size`` rows and ``rows x longest x frame_rate <= max_frames`` (text-only rows have
    duration -1, counted as 0)."""
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i, dur in enumerate(durations):
        dur = max(dur, 0.0)
        frames = max(longest, dur) * frame_rate * (len(current) + 1)
        if current and (len(current) >= batch_size or (max_frames is not None and frames > max_frames)):
            out.append(current)
            current, longest = [], 0.0
        current.append(i)
        longest = max(longest, dur)
    if current:
        out.append(current)
    return out


def rank_share(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of process ``rank``'s contiguous share of a global batch of ``rows``."""
    return rows * rank // world_size, rows * (rank + 1) // world_size


class MixtureBatchSampler:
    """Yields lists of global row indices into the concatenation of ``sizes`` groups.

    Args:
        sizes: rows per task (in the order of concatenation).
        durations: per-row durations in seconds (``-1`` for text-only rows), concatenated.
        batch_size: rows per global batch (split across processes).
        temperature, temperature_step: the mixture schedule.
        max_frames_per_batch: optional budget on ``batch rows x longest duration x frame_rate``.
        frame_rate: frames per second for that budget.
        seed: base seed; epoch e uses ``seed + e``.
        rank, world_size: process ``rank`` takes the ``rank``-th of ``world_size`` contiguous
            shares of every global batch.
        shuffle: False gives a fixed, sequential, unmixed order (for evaluation).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        durations: Sequence[float],
        batch_size: int,
        *,
        temperature: float = 1.0,
        temperature_step: float = 0.0,
        max_frames_per_batch: int | None = None,
        frame_rate: float = 100.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        pool_batches: int = 50,
    ) -> None:
        self.sizes = list(sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) != self.offsets[-1]:
            raise ValueError("durations must cover every row")
        self.batch_size = batch_size
        self.temperature = temperature
        self.temperature_step = temperature_step
        self.max_frames = max_frames_per_batch
        self.frame_rate = frame_rate
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.pool_batches = pool_batches
        self.position = SamplerPosition()

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def temperature_at(self, epoch: int) -> float:
        return self.temperature + self.temperature_step * epoch

    def probabilities(self, epoch: int) -> np.ndarray:
        return mixture_probabilities(self.sizes, self.temperature_at(epoch))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of ``epoch`` (before sharding)."""
        if not self.shuffle:
            order = np.arange(self.total)
            return [order[i : i + self.batch_size].tolist() for i in range(0, self.total, self.batch_size)]
        rng = np.random.default_rng([self.seed, epoch])
        probs = self.probabilities(epoch)
        tasks = rng.choice(len(self.sizes), size=self.total, p=probs)
        counts = np.bincount(tasks, minlength=len(self.sizes))
        picks: list[np.ndarray] = []
        for k, count in enumerate(counts):
            if count == 0:
                continue
            reps = math.ceil(count / self.sizes[k])
            perm = np.concatenate([rng.permutation(self.sizes[k]) for _ in range(reps)])[:count]
            picks.append(perm + self.offsets[k])
        rows = rng.permutation(np.concatenate(picks))
        batches: list[list[int]] = []
        pool = self.pool_batches * self.batch_size
        for start in range(0, len(rows), pool):
            chunk = rows[start : start + pool]
            chunk = chunk[np.argsort(self.durations[chunk], kind="stable")]
            batches.extend(self._split(chunk))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def _split(self, rows: np.ndarray) -> list[list[int]]:
        groups = split_by_budget(self.durations[rows].tolist(), self.batch_size, self.max_frames, self.frame_rate)
        return [[int(rows[i]) for i in group] for group in groups]

    def __iter__(self) -> Iterator[list[int]]:
        """Endless iterator of this process's shares from the current position."""
        for share in self.shares():
            yield share.indices

    def shares(self) -> Iterator[Share]:
        """Endless iterator (one pass without shuffle) of this process's :class:`Share` of each
        global batch from the current position; updates ``position`` as it goes."""
        while True:
            epoch = self.position.epoch
            batches = self.epoch_batches(epoch)
            while self.position.batch < len(batches):
                index = self.position.batch
                rows = batches[index]
                start, stop = rank_share(len(rows), self.rank, self.world_size)
                self.position = SamplerPosition(epoch, index + 1)
                after = SamplerPosition(epoch, index + 1) if index + 1 < len(batches) else SamplerPosition(epoch + 1, 0)
                yield Share(rows[start:stop], len(rows), start, epoch, index, {"epoch": after.epoch, "batch": after.batch})
            self.position = SamplerPosition(epoch + 1, 0)
            if not self.shuffle:
                return

    def batches_per_epoch(self) -> int:
        """Global batches in epoch 0 (the same for every number of processes)."""
        return max(1, len(self.epoch_batches(0)))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "batch": self.position.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = SamplerPosition(int(state["epoch"]), int(state["batch"]))
