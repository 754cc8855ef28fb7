"""Training on sources too large to hold: ``streaming: true`` Hugging Face datasets.

A stage with a streaming source reads its rows through :class:`StreamingStageData`, the
sequential row source of :class:`swv.data.sampler.MixtureSampler` (whose module docstring has
the mixture, the pools and the sharding); what a stream changes:

* **Sizes.** ``n_k`` of a streaming source is its ``num_rows`` or the size its metadata records
  (one of them is required).
* **Order.** Each source is read pass after pass; pass p of a streaming source is the dataset
  shuffled by ``datasets`` with seed ``seed + p`` in a buffer of ``shuffle_buffer`` rows (so
  rows far apart in the files rarely meet in one batch: shuffling is local to the buffer);
  a non-streaming source in the same stage is read in a fresh random permutation per pass.
* **Draws.** The sampler draws a pool (``pool_batches x batch_size`` rows) at a time, so length
  bucketing and the batch shuffle happen within a pool, not over the whole epoch.
* **Exact resume.** The source's position is, per source, its pass and the rows it had
  delivered; the sampler records it as the pool begins. Resuming reopens each stream at that
  point (reading and discarding the rows before it, without decoding audio) and redraws the
  pool: the batches that follow are the ones an uninterrupted run would have produced.
* ``batches_per_epoch`` (used for ``epochs:``) assumes every batch is full (Σ n / batch_size).

A row of this source is the row itself (:meth:`StreamingStageData.rows` returns a batch as is).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from swv.core.errors import InputError, UsageError
from swv.data.rows import resolve_data_path
from swv.data.sampler import RowSource
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
            SourceNames,
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
        names = SourceNames.recipe(self.name)
        stream = open_hf_dataset(self.spec.hf_dataset, self.spec.split, streaming=True, names=names)
        stream = undecoded_audio(stream)
        check_columns(stream, self.spec.columns, names)
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
class StreamingStageData(RowSource):
    """The sequential row source: a stage's sources as streams (a source that does not stream is
    read in memory, pass after pass, like one)."""

    streams: list[SourceStream]
    names: list[str]
    sizes: list[int]
    random_access: ClassVar[bool] = False

    def take(self, tasks: np.ndarray, rng: np.random.Generator) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The next row of each task's stream, in the order of ``tasks``."""
        rows = [self.streams[k].next_row() for k in tasks.tolist()]
        return rows, np.asarray([row["duration"] for row in rows], dtype=np.float64)

    def rows(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A streaming batch already holds its rows."""
        return batch

    def tell(self) -> dict[str, int]:
        """``<source>.pass`` and ``<source>.offset`` of every stream."""
        state: dict[str, int] = {}
        for stream in self.streams:
            state[f"{stream.name}.pass"] = stream.pass_
            state[f"{stream.name}.offset"] = stream.offset
        return state

    def seek(self, state: Mapping[str, int]) -> None:
        for stream in self.streams:
            stream.seek(int(state.get(f"{stream.name}.pass", 0)), int(state.get(f"{stream.name}.offset", 0)))


def load_streaming_stage_data(section: DataSection, names: Sequence[str], seed: int) -> StreamingStageData:
    streams = [SourceStream(name, section.datasets[name], seed + 7919 * k) for k, name in enumerate(names)]
    return StreamingStageData(streams, list(names), [s.size for s in streams])
