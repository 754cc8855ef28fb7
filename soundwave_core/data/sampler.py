"""Batch sampling: one temperature mixture sampler over a row-source protocol, for the rows of a
stage held in memory and for streamed ones; length bucketing, sharding and exact resume.

Task k is drawn with probability ``p_k ∝ (n_k / Σ n)^(1/T)``. T = 1 samples in proportion to
the data (sample-level uniform); large T approaches a uniform mix of tasks. T starts at
``temperature`` and grows by ``temperature_step`` at every epoch (an epoch = Σ n rows drawn).

Rows are taken from a :class:`RowSource` in *draws*: a random-access source
(:class:`swv.data.stage_data.StageDataset`) is drawn a whole epoch at once, a sequential one
(:class:`swv.data.streaming.StreamingStageData`) a pool at a time, since a stream's rows must be
read to know their durations. A draw's tasks, and whatever the source randomises, come from the
seed, the epoch and (sequential sources) the pool. The draw's rows are sorted by duration in
pools of ``pool_batches`` batches' worth of rows (so similar lengths share a batch), split by
``batch_size`` and an optional frame budget, and the draw's batches are shuffled.

``batch_size`` is the global batch: each batch is split across the ``world_size`` processes
(process r takes the r-th contiguous share), so every process count sees the same examples in
the same order per global step, and an epoch (the unit of the temperature schedule) is the
same number of examples seen whatever the number of processes.

Exact resume: the state is the epoch, the batches of the current draw already consumed and, for
a sequential source, the draw (``pool``) and the source's position when it began
(:meth:`RowSource.tell`). Resuming takes the draw again from there: the batches that follow are
the ones an uninterrupted run would have produced.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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


def scheduled_temperature(temperature: float, temperature_step: float, epoch: int) -> float:
    """The mixture's temperature in ``epoch``: ``temperature``, grown by ``temperature_step`` per epoch."""
    return temperature + temperature_step * epoch


def full_batches(total: int, batch_size: int) -> int:
    """Global batches in an epoch of ``total`` rows when every batch is full but the last (no
    frame budget: the count a random-access epoch has, and what a sequential source assumes)."""
    return max(1, math.ceil(total / batch_size))


@dataclass
class SamplerPosition:
    epoch: int = 0
    batch: int = 0  # global batches of the current draw already consumed


@dataclass
class Share:
    """One process's share of a global batch, and where the sampler is after it."""

    indices: list[Any]  # this process's share of the rows (see :meth:`RowSource.take`)
    global_rows: int  # rows of the whole global batch (all processes)
    offset: int  # position of ``indices[0]`` inside the global batch
    epoch: int  # the epoch the batch belongs to
    batch: int  # its index in its draw (the epoch, or a sequential source's pool)
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


def sequential_batches(total: int, batch_size: int) -> list[list[int]]:
    """Rows ``0 .. total - 1`` in order, in batches of ``batch_size`` (held-out evaluation)."""
    return [list(range(start, min(start + batch_size, total))) for start in range(0, total, batch_size)]


class RowSource(ABC):
    """What :class:`MixtureSampler` draws from: the rows of a stage's tasks (sources), in stage order.

    A *random-access* source (:class:`swv.data.stage_data.StageDataset`) has every row at hand:
    the sampler lays out a whole epoch at once, and the source has no position to record. A
    *sequential* source (:class:`swv.data.streaming.StreamingStageData`) is read row after row:
    the sampler draws it pool by pool, and its position (:meth:`tell`) is part of the sampler state.
    """

    names: list[str]  # the tasks, in stage order
    sizes: list[int]  # rows per task (``n_k`` of the mixture)
    random_access: ClassVar[bool]

    @abstractmethod
    def take(self, tasks: np.ndarray, rng: np.random.Generator) -> tuple[list[Any], np.ndarray]:
        """A row of task ``tasks[i]`` for every i (in the order the source chooses, drawing any
        randomness from ``rng``) and the rows' durations in seconds (-1 for text-only rows). A row
        is what :meth:`rows` turns into dataset rows: an index, or the row itself."""

    @abstractmethod
    def rows(self, batch: list[Any]) -> list[dict[str, Any]]:
        """The dataset rows of a batch of taken rows."""

    def tell(self) -> dict[str, int]:
        """Where the next :meth:`take` reads, as sampler-state entries (none for random access)."""
        return {}

    def seek(self, state: Mapping[str, int]) -> None:
        """Continue from what :meth:`tell` returned (missing entries: the start); random access
        has no position."""


class MixtureSampler:
    """This process's share of every global batch of the temperature mixture over a
    :class:`RowSource` (see the module docstring).

    Args:
        source: the stage's rows.
        batch_size: rows per global batch (split across processes).
        temperature, temperature_step: the mixture schedule.
        max_frames_per_batch: optional budget on ``batch rows x longest duration x frame_rate``.
        frame_rate: frames per second for that budget.
        seed: base seed of every draw.
        rank, world_size: process ``rank`` takes the ``rank``-th of ``world_size`` contiguous
            shares of every global batch.
        pool_batches: batches' worth of rows sorted by duration together.
    """

    def __init__(
        self,
        source: RowSource,
        batch_size: int,
        *,
        temperature: float = 1.0,
        temperature_step: float = 0.0,
        max_frames_per_batch: int | None = None,
        frame_rate: float = 100.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pool_batches: int = 50,
    ) -> None:
        self.source = source
        self.sizes = list(source.sizes)
        self.batch_size = batch_size
        self.temperature = temperature
        self.temperature_step = temperature_step
        self.max_frames = max_frames_per_batch
        self.frame_rate = frame_rate
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pool_rows = pool_batches * batch_size
        #: rows drawn at once: the epoch from a random-access source, a pool from a sequential one
        self.draw_rows = self.total if source.random_access else self.pool_rows
        self.position = SamplerPosition()  # ``batch``: the batches of the current draw consumed
        self.draw = 0  # the current draw of the epoch
        source.seek({})
        self.start = source.tell()  # the source's position when the current draw began

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def temperature_at(self, epoch: int) -> float:
        return scheduled_temperature(self.temperature, self.temperature_step, epoch)

    def probabilities(self, epoch: int) -> np.ndarray:
        return mixture_probabilities(self.sizes, self.temperature_at(epoch))

    def draws_per_epoch(self) -> int:
        return math.ceil(self.total / self.draw_rows)

    def draw_batches(self, epoch: int, draw: int) -> list[list[Any]]:
        """The global batches of draw ``draw`` of ``epoch``, taken from the source's current
        position: the draw's rows, sorted by duration pool by pool, split by ``batch_size`` and
        the frame budget, and shuffled."""
        count = min(self.draw_rows, self.total - draw * self.draw_rows)
        rng = np.random.default_rng([self.seed, epoch] if self.source.random_access else [self.seed, epoch, draw])
        tasks = rng.choice(len(self.sizes), size=count, p=self.probabilities(epoch))
        rows, durations = self.source.take(tasks, rng)
        batches: list[list[Any]] = []
        for start in range(0, count, self.pool_rows):
            order = start + np.argsort(durations[start : start + self.pool_rows], kind="stable")
            for group in split_by_budget(durations[order].tolist(), self.batch_size, self.max_frames, self.frame_rate):
                batches.append([rows[i] for i in order[group].tolist()])
        return [batches[i] for i in rng.permutation(len(batches)).tolist()]

    def epoch_batches(self, epoch: int) -> list[list[Any]]:
        """All global batches of ``epoch`` (before sharding), taken from the source's current position."""
        return [batch for draw in range(self.draws_per_epoch()) for batch in self.draw_batches(epoch, draw)]

    def batches_per_epoch(self) -> int:
        """Global batches in epoch 0 (the same for every number of processes); a sequential
        source is not read ahead to count them: every batch is assumed full."""
        if self.source.random_access:
            return max(1, len(self.epoch_batches(0)))
        return full_batches(self.total, self.batch_size)

    def shares(self) -> Iterator[Share]:
        """Endless: this process's :class:`Share` of each global batch from the current position
        (updated as it goes); ``after`` is the state right after it, and ``state_dict()`` taken
        between two shares resumes right after the last one."""
        while True:
            self.source.seek(self.start)
            epoch, draw = self.position.epoch, self.draw
            batches = self.draw_batches(epoch, draw)
            read = self.source.tell()  # the draw's rows are all taken: where the next draw begins
            following = (epoch + 1, 0) if draw + 1 >= self.draws_per_epoch() else (epoch, draw + 1)
            while self.position.batch < len(batches):
                index = self.position.batch
                rows = batches[index]
                start, stop = rank_share(len(rows), self.rank, self.world_size)
                self.position = SamplerPosition(epoch, index + 1)
                if index + 1 < len(batches):
                    after = self._state(epoch, draw, index + 1, self.start)
                else:
                    after = self._state(*following, 0, read)
                yield Share(rows[start:stop], len(rows), start, epoch, index, after)
            self.start, self.draw = read, following[1]
            self.position = SamplerPosition(following[0], 0)

    def __iter__(self) -> Iterator[list[Any]]:
        """Endless: this process's share of each global batch (see :meth:`shares`)."""
        for share in self.shares():
            yield share.indices

    def _state(self, epoch: int, draw: int, batch: int, at: Mapping[str, int]) -> dict[str, int]:
        state = {"epoch": epoch, "batch": batch}
        if not self.source.random_access:  # a random-access source has one draw per epoch
            state["pool"] = draw
        return {**state, **at}

    def state_dict(self) -> dict[str, int]:
        return self._state(self.position.epoch, self.draw, self.position.batch, self.start)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.position = SamplerPosition(int(state["epoch"]), int(state["batch"]))
        self.draw = int(state.get("pool", 0))
        self.source.seek(state)
        self.start = self.source.tell()
