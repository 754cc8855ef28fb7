"""Training on sources too large to hold: ``streaming: true`` Hugging Face datasets.

A stage with a streaming source draws its batches with :class:`StreamingMixtureSampler`
instead of :class:`swv.data.sampler.MixtureBatchSampler`; the rules are the same where a
stream allows them:

* **Mixture.** Task k is drawn with ``p_k ∝ (n_k / Σ n)^(1/T)`` and T grows by
  ``temperature_step`` per epoch (an epoch = Σ n rows drawn). ``n_k`` of a streaming source is
  its ``num_rows`` or the size its metadata records (one of them is required).
* **Order.** Each source is read pass after pass; pass p of a streaming source is the dataset
  shuffled by ``datasets`` with seed ``seed + p`` in a buffer of ``shuffle_buffer`` rows (so
  rows far apart in the files rarely meet in one batch: shuffling is local to the buffer);
  a non-streaming source in the same stage is read in a fresh random permutation per pass.
* **Length bucketing** happens within a *pool* of ``pool_batches x batch_size`` drawn rows
  (sorted by duration, split by ``batch_size`` and the frame budget, batches shuffled), not
  over the whole source.
* **Exact resume.** The state is the epoch, the pool, the batches of that pool already taken
  and, per source, its pass and the rows it had delivered when the pool began. Resuming
  reopens each stream at that point (reading and discarding the rows before it, without
  decoding audio) and redraws the pool: the batches that follow are the ones an
  uninterrupted run would have produced.
* ``batches_per_epoch`` (used for ``epochs:``) assumes every batch is full (Σ n / batch_size).

A batch of this sampler is its list of rows already (``StreamingStageData.rows`` returns it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swv.core.errors import InputError, UsageError
from swv.data.rows import resolve_data_path
from swv.data.sampler import (
    SamplerPosition,
    Share,
    mixture_probabilities,
    rank_share,
    split_by_budget,
)
from swv.recipes.schema import DataSection, DatasetSpec


class SourceStream:
    """One source read pass after pass in a seeded order; ``pass_``/``offset`` locate the next row."""

    def __init__(self, name: str, spec: DatasetSpec, seed: int) -> None:
        self.name = name
        self.spec = spec
        self.seed = seed
        self.pass_ = 0
        self.offset = 0
        self._rows: Iterator[dict[str, Any]] | None = None
        self._open()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        from swv.data.hf_sources import (
            check_columns,
            class_label_names,
            open_hf_dataset,
            undecoded_audio,
        )
        from swv.data.sources import load_source

        where = f"data.datasets.{self.name}"
        if not self.spec.streaming:
            self.table = load_source(self.name, self.spec)
            self.size = len(self.table)
            return
        assert self.spec.hf_dataset is not None
        stream = open_hf_dataset(self.spec.hf_dataset, self.spec.split, streaming=True, where=where)
        stream = undecoded_audio(stream)
        check_columns(stream, self.spec.columns, where)
        size = self.spec.num_rows or _recorded_size(stream, self.spec.split)
        if size is None:
            raise UsageError(f"{where}: a streaming source needs 'num_rows' (its size is not in the dataset's metadata)")
        if self.spec.max_samples is not None:
            stream, size = stream.take(self.spec.max_samples), min(size, self.spec.max_samples)
        self.stream, self.size = stream, size
        source = resolve_data_path(self.spec.hf_dataset)
        self.row_kwargs = {"source": self.spec.hf_dataset, "base": str(source if source.is_dir() else source.parent),
                           "name": self.name, "task": self.spec.task or "", "instruction": self.spec.instruction or "",
                           "labels": class_label_names(stream), "columns": dict(self.spec.columns)}

    def _pass_rows(self, pass_: int, start: int) -> Iterator[dict[str, Any]]:
        """Rows of pass ``pass_`` from position ``start`` on."""
        if not self.spec.streaming:
            order = np.random.default_rng([self.seed, pass_]).permutation(self.size)
            for i in order[start:].tolist():
                yield self.table[i]
            return
        from swv.data.hf_sources import hf_row

        shuffled = self.stream.shuffle(seed=self.seed + pass_, buffer_size=self.spec.shuffle_buffer)
        for position, record in enumerate(shuffled):
            if position < start:
                continue  # replaying up to the resume point: records are not decoded
            yield hf_row(record, position, **self.row_kwargs)

    # -- reading -------------------------------------------------------------------------------
    def seek(self, pass_: int, offset: int) -> None:
        """Continue from row ``offset`` of pass ``pass_`` (a no-op when already there)."""
        if (pass_, offset) != (self.pass_, self.offset) or self._rows is None:
            self.pass_, self.offset, self._rows = pass_, offset, None

    def next_row(self) -> dict[str, Any]:
        for _ in range(2):
            if self._rows is None:
                self._rows = self._pass_rows(self.pass_, self.offset)
            row = next(self._rows, None)
            if row is not None:
                self.offset += 1
                return row
            self.pass_, self.offset, self._rows = self.pass_ + 1, 0, None
        raise InputError(f"data.datasets.{self.name}: the source yielded no rows")


def _recorded_size(stream: Any, split: str) -> int | None:
    """The split's row count from the dataset's metadata (``DatasetInfo.splits``), if recorded."""
    info = (stream.info.splits or {}).get(split)
    return int(info.num_examples) if info is not None and info.num_examples else None


@dataclass
class StreamingStageData:
    """A stage's sources as streams (the counterpart of :class:`swv.data.stage_data.StageDataset`)."""

    streams: list[SourceStream]
    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def rows(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A streaming batch already holds its rows."""
        return batch


def load_streaming_stage_data(section: DataSection, names: Sequence[str], seed: int) -> StreamingStageData:
    streams = [SourceStream(name, section.datasets[name], seed + 7919 * k) for k, name in enumerate(names)]
    return StreamingStageData(streams, list(names), [s.size for s in streams])


class StreamingMixtureSampler:
    """Batches of rows drawn from streams with the temperature mixture (see the module docstring).

    Same schedule arguments as :class:`swv.data.sampler.MixtureBatchSampler`: ``batch_size`` is
    the global batch, and process ``rank`` of ``world_size`` takes the ``rank``-th contiguous
    share of each.
    """

    def __init__(
        self,
        data: StreamingStageData,
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
        self.data = data
        self.sizes = list(data.sizes)
        self.batch_size = batch_size
        self.temperature = temperature
        self.temperature_step = temperature_step
        self.max_frames = max_frames_per_batch
        self.frame_rate = frame_rate
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pool_rows = pool_batches * batch_size
        self.position = SamplerPosition()
        self.pool = 0
        self.starts = [(0, 0) for _ in data.streams]  # (pass, offset) of every stream when the pool began

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def temperature_at(self, epoch: int) -> float:
        return self.temperature + self.temperature_step * epoch

    def probabilities(self, epoch: int) -> np.ndarray:
        return mixture_probabilities(self.sizes, self.temperature_at(epoch))

    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.total / self.batch_size))

    def pool_batches_of(self, epoch: int, pool: int) -> list[list[dict[str, Any]]]:
        """The global batches of one pool, reading its rows from the streams' current positions."""
        count = min(self.pool_rows, self.total - pool * self.pool_rows)
        rng = np.random.default_rng([self.seed, epoch, pool])
        tasks = rng.choice(len(self.sizes), size=count, p=self.probabilities(epoch))
        rows = [self.data.streams[k].next_row() for k in tasks.tolist()]
        order = np.argsort([r["duration"] for r in rows], kind="stable")
        ordered = [rows[i] for i in order.tolist()]
        groups = split_by_budget([r["duration"] for r in ordered], self.batch_size, self.max_frames, self.frame_rate)
        batches = [[ordered[i] for i in group] for group in groups]
        return [batches[i] for i in rng.permutation(len(batches)).tolist()]

    def shares(self) -> Iterator[Share]:
        """Endless: this process's :class:`Share` of each global batch (its ``indices`` are the
        rows themselves) from the current position; ``after`` is the state right after it, and
        ``state_dict()`` taken between two shares resumes right after the last one."""
        pools_per_epoch = math.ceil(self.total / self.pool_rows)
        while True:
            for stream, (pass_, offset) in zip(self.data.streams, self.starts):
                stream.seek(pass_, offset)
            epoch = self.position.epoch
            batches = self.pool_batches_of(epoch, self.pool)
            read = [(s.pass_, s.offset) for s in self.data.streams]  # the pool's rows are all read
            last_pool = self.pool + 1 >= pools_per_epoch
            while self.position.batch < len(batches):
                index = self.position.batch
                rows = batches[index]
                start, stop = rank_share(len(rows), self.rank, self.world_size)
                self.position = SamplerPosition(epoch, index + 1)
                if index + 1 < len(batches):
                    after = self._state(epoch, index + 1, self.pool, self.starts)
                else:
                    after = self._state(epoch + 1 if last_pool else epoch, 0, 0 if last_pool else self.pool + 1, read)
                yield Share(rows[start:stop], len(rows), start, epoch, index, after)
            self.starts = read
            self.pool = 0 if last_pool else self.pool + 1
            self.position = SamplerPosition(epoch + 1 if last_pool else epoch, 0)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        """Endless: the rows of this process's share of each global batch (see :meth:`shares`)."""
        for share in self.shares():
            yield share.indices

    def _state(self, epoch: int, batch: int, pool: int, starts: Sequence[tuple[int, int]]) -> dict[str, int]:
        state = {"epoch": epoch, "batch": batch, "pool": pool}
        for stream, (pass_, offset) in zip(self.data.streams, starts):
            state[f"{stream.name}.pass"] = pass_
            state[f"{stream.name}.offset"] = offset
        return state

    def state_dict(self) -> dict[str, int]:
        return self._state(self.position.epoch, self.position.batch, self.pool, self.starts)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = SamplerPosition(int(state["epoch"]), int(state["batch"]))
        self.pool = int(state.get("pool", 0))
        self.starts = [(int(state.get(f"{s.name}.pass", 0)), int(state.get(f"{s.name}.offset", 0)))
                       for s in self.data.streams]
