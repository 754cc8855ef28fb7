"""The server's worker threads, handed out cheapest-first: :class:`PriorityLimiter`.

Every request is parsed, its audio decoded and its prompt tokenized in a worker thread, at most
``--work-threads`` at once. A FIFO limiter (anyio's ``CapacityLimiter``) lets a normal request's
decode queue behind every heavy one that arrived before it (minutes of many-channel audio to
decode, downmix and resample), so it waits for all of them. The limiter here grants a free slot
to the waiter with the lowest cost, ties in arrival order, except that a waiter that has waited
longer than the scheduler's starvation bound (:data:`~swv.serve.limits.STARVATION_SECONDS`)
goes first, oldest first, so expensive requests are still served under a stream of cheap ones:
the same policy as the generation scheduler's. A request takes a slot at its body's
:func:`parse_cost` to parse its body and read its clips' headers, then gives it up and queues
again at its decoding cost, the samples its clips decode to (:meth:`Slot.requeue`: the slot goes
to the cheapest waiter, the request itself included), so a cheap request that arrives behind a
backlog of heavy decodes waits for one slot to free, not for the backlog.

Parsing is priced, not free: at cost 0 every new request's parse went before every queued
decode, so a stream of big bodies (refused ones included) held back the decodes of requests
already parsed until they starved. A body byte costs as much as a decoded sample: measured in
one thread, parsing a chat body (JSON, base64, the clips' headers) took 10-14 ns per byte and
decoding, downmixing and resampling its clips 3-41 ns per sample (WAV, FLAC, MP3; 16-48 kHz,
1-8 channels), so the two steps are ordered by about what they cost. A small body is parsed
before big decodes, as it should be (it is cheap); a big one waits behind cheaper decodes.

Why our own: neither anyio nor asyncio has a priority semaphore (``CapacityLimiter``,
``Semaphore`` and ``Lock`` wake their waiters in arrival order), and an ``asyncio.PriorityQueue``
of tokens would not let a waiter that was cancelled leave the queue. All of its state is touched
only from the event loop (asyncio's: the server's), so it needs no lock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio import CapacityLimiter, to_thread

from swv.serve import limits

__all__ = ["PriorityLimiter", "Slot", "parse_cost"]

Returned = TypeVar("Returned")


def parse_cost(body_bytes: int) -> int:
    """The cost of parsing a request body of ``body_bytes`` (and reading its clips' headers), in
    decoded samples, the unit of decoding costs: one per byte (see the module)."""
    return body_bytes


@dataclass(eq=False)
class _Waiter:
    """One task waiting for a slot: its ``cost``, its place in arrival order, when it came."""

    cost: int
    arrival: int
    since: float
    granted: anyio.Event = field(default_factory=anyio.Event)


class PriorityLimiter:
    """``capacity`` slots granted cheapest-first (see the module). ``starvation_seconds``: a
    waiter that has waited longer goes first (``None``: :data:`~swv.serve.limits.STARVATION_SECONDS`
    when the limiter is made); ``clock``: the monotonic clock it is measured with.
    A request holds a slot with :meth:`slot` and runs its blocking steps in worker threads with
    :meth:`Slot.run`; between two steps, :meth:`Slot.requeue` puts it back in the queue at the
    cost it now knows (the samples its audio decodes to, read from the headers). Costs are in
    decoded samples (a body to parse: :func:`parse_cost`)."""

    def __init__(self, capacity: int, *, starvation_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # read when the limiter is made, not when this module was imported (as the scheduler reads it)
        self.starvation_seconds = limits.STARVATION_SECONDS if starvation_seconds is None else starvation_seconds
        self._clock = clock
        self._free = capacity
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        # The worker threads' own bound (never waited on: a thread runs only while its slot is held).
        self.threads = CapacityLimiter(capacity)

    @property
    def borrowed(self) -> int:
        """The slots held now."""
        return self.capacity - self._free

    @property
    def waiting(self) -> int:
        """The tasks waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, cost: int = 0) -> AsyncIterator[Slot]:
        """Hold one slot, granted at ``cost``, released on the way out (an exception or a
        cancellation included)."""
        await self.acquire(cost)
        held = Slot(self)
        try:
            yield held
        finally:
            if held.holding:
                self.release()

    async def acquire(self, cost: int = 0) -> None:
        """Wait for a slot granted at ``cost`` (then :meth:`release` it)."""
        if self._free and not self._waiters:
            self._free -= 1
            return
        await self._wait(self._enqueue(cost))

    def release(self) -> None:
        """Give a held slot to the next waiter (:meth:`_next_waiter`), or free it."""
        if not self._waiters:
            self._free += 1
            return
        waiter = self._next_waiter()
        self._waiters.remove(waiter)
        waiter.granted.set()  # the slot passes to it directly

    async def requeue(self, cost: int) -> None:
        """Give up a held slot and wait for one at ``cost``, queued before the slot is handed on
        (so the caller competes for the slot it gives up)."""
        waiter = self._enqueue(cost)
        self.release()
        await self._wait(waiter)

    def _enqueue(self, cost: int) -> _Waiter:
        waiter = _Waiter(cost, next(self._arrivals), self._clock())
        self._waiters.append(waiter)
        return waiter

    async def _wait(self, waiter: _Waiter) -> None:
        """Wait until ``waiter`` is granted a slot. Cancelled before that, it leaves the queue;
        cancelled once granted (before it could resume), it hands the slot on."""
        try:
            await waiter.granted.wait()
        except BaseException:
            if waiter.granted.is_set():
                self.release()
            else:
                self._waiters.remove(waiter)
            raise

    def _next_waiter(self) -> _Waiter:
        """The oldest waiter that has starved, else the cheapest (the earliest of equal costs)."""
        starved_since = self._clock() - self.starvation_seconds
        starved = [waiter for waiter in self._waiters if waiter.since < starved_since]
        if starved:
            return min(starved, key=lambda waiter: waiter.arrival)
        return min(self._waiters, key=lambda waiter: (waiter.cost, waiter.arrival))


class Slot:
    """A slot of a :class:`PriorityLimiter` held by one request (:meth:`PriorityLimiter.slot`)."""

    def __init__(self, limiter: PriorityLimiter) -> None:
        self._limiter = limiter
        self.holding = True

    async def run(self, function: Callable[[], Returned]) -> Returned:
        """``function()`` in a worker thread. A caller cancelled meanwhile (its client gone) gets
        its ``CancelledError`` at once, but the slot stays taken until the thread returns: the
        thread cannot be stopped, and the threads running must stay within the capacity (anyio's
        ``run_sync`` shields only from anyio's own cancel scopes, not from ``Task.cancel``)."""
        if not self.holding:
            raise RuntimeError("the slot was given up")
        work = asyncio.ensure_future(to_thread.run_sync(function, limiter=self._limiter.threads))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if not work.done():
                self.holding = False  # released by _returned
                work.add_done_callback(self._returned)
            raise

    def _returned(self, work: asyncio.Future) -> None:
        """The thread of a cancelled caller has returned: its slot is free."""
        if not work.cancelled():
            work.exception()  # nobody else will look at it
        self._limiter.release()

    async def requeue(self, cost: int) -> None:
        """Give the slot up and wait for one at ``cost`` (:meth:`PriorityLimiter.requeue`)."""
        self.holding = False
        await self._limiter.requeue(cost)
        self.holding = True
