"""The in-memory mixture sampler, pinned: the same seed gives the same batches in the same order,
the same per-process shares and the same positions (what a checkpoint records), and resuming
from any recorded position continues with the batch an uninterrupted run gives next.
(The streaming counterpart is pinned in test_streaming.py.)"""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from swv.data.sampler import MixtureSampler

SIZES = [23, 9, 14]


def durations() -> list[float]:
    values = np.random.default_rng(42).uniform(0.5, 6.0, sum(SIZES)).round(2)
    values[[3, 17, 40]] = -1.0  # text-only rows
    return values.tolist()


@pytest.fixture
def sampler(memory_rows):
    def make(**kwargs) -> MixtureSampler:
        return MixtureSampler(memory_rows(SIZES, durations()), 4, temperature=1.0, temperature_step=3.0,
                              max_frames_per_batch=1500, frame_rate=100.0, seed=11, pool_batches=3, **kwargs)

    return make


# (indices, epoch, batch, epoch after, batch after) of the first 30 global batches
PINNED = [
    ([4, 8, 28, 35], 0, 0, 0, 1), ([23, 11], 0, 1, 0, 2), ([44, 2], 0, 2, 0, 3),
    ([13], 0, 3, 0, 4), ([5], 0, 4, 0, 5), ([9, 16, 19], 0, 5, 0, 6),
    ([31], 0, 6, 0, 7), ([28, 32, 21, 10], 0, 7, 0, 8), ([12, 45], 0, 8, 0, 9),
    ([39, 29, 42], 0, 9, 0, 10), ([22], 0, 10, 0, 11), ([15, 30, 6], 0, 11, 0, 12),
    ([20, 6, 0], 0, 12, 0, 13), ([3, 17, 40, 25], 0, 13, 0, 14), ([37, 24, 7], 0, 14, 0, 15),
    ([18, 5], 0, 15, 0, 16), ([33, 14, 26, 34], 0, 16, 0, 17), ([27, 43, 1], 0, 17, 1, 0),
    ([16, 39, 29], 1, 0, 1, 1), ([36, 25, 38, 43], 1, 1, 1, 2), ([42, 6], 1, 2, 1, 3),
    ([31], 1, 3, 1, 4), ([32, 9, 37], 1, 4, 1, 5), ([28, 35, 32, 26], 1, 5, 1, 6),
    ([18, 5], 1, 6, 1, 7), ([2, 22], 1, 7, 1, 8), ([45, 41], 1, 8, 1, 9),
    ([39, 42, 30], 1, 9, 1, 10), ([40, 27, 4, 8], 1, 10, 1, 11), ([15, 33, 14, 34], 1, 11, 1, 12),
]

# process 1 of 3: (indices, offset in the global batch, rows of the global batch)
PINNED_RANK1 = [([8], 1, 4), ([23], 0, 2), ([44], 0, 2), ([], 0, 1), ([], 0, 1), ([16], 1, 3), ([], 0, 1), ([32], 1, 4)]


def test_batches_and_positions_are_pinned(sampler) -> None:
    s = sampler()
    got = [(sh.indices, sh.epoch, sh.batch, sh.after["epoch"], sh.after["batch"]) for sh in islice(s.shares(), 30)]
    assert got == PINNED
    assert s.state_dict() == {"epoch": 1, "batch": 12}
    assert s.batches_per_epoch() == 18
    assert [i for batch in s.epoch_batches(1)[:12] for i in batch] == [i for p in PINNED[18:] for i in p[0]]


def test_process_shares_are_pinned(sampler) -> None:
    s = sampler(rank=1, world_size=3)
    assert [(sh.indices, sh.offset, sh.global_rows) for sh in islice(s.shares(), 8)] == PINNED_RANK1


def test_resume_from_every_recorded_position(sampler) -> None:
    for k, (_, _, _, epoch, batch) in enumerate(PINNED[:-1]):
        s = sampler()
        s.load_state_dict({"epoch": epoch, "batch": batch})
        assert next(iter(s)) == PINNED[k + 1][0]
