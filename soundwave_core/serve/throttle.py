"""Refused requests answered late, per client: :class:`RefusalThrottle`.

A client that sends requests the server refuses (4xx: over a limit, malformed, unauthorized...)
back to back costs the server the work of refusing each of them (reading the body, parsing it,
reading clip headers) and takes that CPU, and the GIL, from the requests it serves: measured
with ``benchmarks/serve_bounds.py``, 8 clients sending 60 clips each (refused) hundreds of
times in 5 s made a normal request's own prefill and decoding steps 6-10x slower than on the
idle server, while the machine's 2 cores were only about 1.2 busy (the server's Python
threads share one GIL). Each client may have
``per_second`` refusals per second, ``burst`` of them at once, at no cost; past that its refused
requests are answered late: each one's answer waits until the client is back within its rate
(at most ``max_delay`` seconds). A client that waits for its answer before sending again (as the
benchmark's clients and most scripts do) is slowed to ``per_second``; one that opens many
connections at once holds one of ``--max-connections`` per waiting refusal, as a slow client
already could. Requests that are answered (2xx) are never delayed, nor are server errors (5xx).

The client is the request's client address (``scope["client"]``). By default that is the peer
address: ``swv serve`` reads no proxy headers (uvicorn's ``proxy_headers`` off, whatever the
``FORWARDED_ALLOW_IPS`` environment variable says), so a client cannot pick its own budget with
an ``X-Forwarded-For`` header, nor rotate fake addresses past it. Behind a reverse proxy every
request then comes from the proxy's address and all clients share one budget, unless the
replica is started with ``--forwarded-allow-ips <proxy address>``: uvicorn then replaces the
peer address with the ``X-Forwarded-For`` one for requests from that proxy only (see
:mod:`swv.serve.proxies`), and each end client has its own budget. The API key is
not the client: the server has one key, shared by all its clients. So clients behind one
address (a NAT, a proxy that is not trusted or does not forward addresses, or every benchmark
client on 127.0.0.1) share one budget: the throttle slows such a group's refusals as a whole,
and cannot tell a flooding client from a well-behaved one among them; only refused requests pay
for it.

Why our own: the delay is computed per client with the GCRA form of a token bucket (one number
per client: when its budget is next full), a dozen lines; rate-limit libraries (``limits``,
``aiolimiter``) are not dependencies of swv, and they refuse or wait without a bound, where this
answers late, at most ``max_delay``. The table of clients is bounded (:data:`MAX_CLIENTS`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RefusalThrottle", "RefusalBudget", "client_key"]

#: Clients whose budgets are remembered; past this, those with a full budget (nothing to
#: remember) are forgotten first, then the oldest entries.
MAX_CLIENTS = 4096


def client_key(scope: Scope) -> str:
    """The client a request counts against: its client address, the peer's unless a trusted proxy
    forwarded another (see the module)."""
    client = scope.get("client")
    return str(client[0]) if client else "-"


class RefusalBudget:
    """Per client, ``per_second`` refusals per second and ``burst`` at once free; :meth:`charge`
    gives the delay of one more (GCRA: ``_full_at[key]`` is when the client's budget is full
    again; each refusal pushes it one interval later; a refusal is late by how far that passes
    the burst's span, at most ``max_delay``)."""

    def __init__(self, per_second: float, burst: int, max_delay: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / per_second
        self.span = burst * self.interval
        self.max_delay = max_delay
        self._clock = clock
        self._full_at: dict[str, float] = {}

    def charge(self, key: str) -> float:
        """Count one refusal of ``key``; the seconds its answer waits."""
        now = self._clock()
        full_at = max(self._full_at.pop(key, now), now) + self.interval
        delay = min(max(0.0, full_at - now - self.span), self.max_delay)
        # the budget's debt stops growing at the longest delay: a flood does not wait forever after
        self._full_at[key] = min(full_at, now + self.span + self.max_delay)
        if len(self._full_at) > MAX_CLIENTS:
            self._forget(now)
        return delay

    def _forget(self, now: float) -> None:
        for key in [key for key, full_at in self._full_at.items() if full_at <= now]:
            del self._full_at[key]
        while len(self._full_at) > MAX_CLIENTS:
            del self._full_at[next(iter(self._full_at))]  # the least recently refused


class RefusalThrottle:
    """ASGI middleware: a 4xx answer waits for :meth:`RefusalBudget.charge` of its client before
    it is sent (see the module). ``per_second`` 0 turns it off.

    The answer is held (a refusal is a small JSON body) and sent after the app has returned, so
    the wait holds none of what the request held: a refusal is raised as an exception whose
    traceback keeps the handler's frames, the body read so far (up to ``--max-body-bytes``)
    included, until its answer is sent (measured: 8 clients' endless chunked bodies, refused at
    32 MiB, cost +267 MB while their answers waited in ``send``)."""

    def __init__(self, app: ASGIApp, per_second: float, burst: int, max_delay: float,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        self.app = app
        self.budget = RefusalBudget(per_second, burst, max_delay) if per_second > 0 else None
        self._sleep = sleep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = self.budget
        if scope["type"] != "http" or budget is None:
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def send_or_hold(message: Message) -> None:
            if held or (message["type"] == "http.response.start" and 400 <= message["status"] < 500):
                held.append(message)
            else:
                await send(message)

        await self.app(scope, receive, send_or_hold)
        if held:
            delay = budget.charge(client_key(scope))
            if delay > 0:
                await self._sleep(delay)
            for message in held:
                await send(message)
