"""What the server does around every request (the outermost middleware, :class:`Operations`):
give it an id (an incoming ``X-Request-Id`` if it is short printable ASCII, else a new one),
returned in the ``X-Request-Id`` header and named in the server's log lines for it; count it
and time it for ``/metrics``; and, once the server drains (:class:`Drain`, on SIGTERM), answer
new requests 503 while those in flight finish."""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swv.serve.limits import MAX_REQUEST_ID_CHARS
from swv.serve.metrics import Metrics
from swv.serve.openai_api import error_body

log = logging.getLogger("swv.serve")

#: The id of the request being handled (``"-"`` outside one).
REQUEST_ID: ContextVar[str] = ContextVar("swv_request_id", default="-")


class Drain:
    """In-flight request count, and whether the server is draining (then until when)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.deadline: float | None = None

    @property
    def draining(self) -> bool:
        return self.deadline is not None

    def begin(self, seconds: float) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + seconds

    def done(self) -> bool:
        """Draining, and nothing is in flight any more or the time is up."""
        return self.deadline is not None and (self.in_flight == 0 or time.monotonic() >= self.deadline)


def request_id(incoming: str | None) -> str:
    """``incoming`` if it is 1..MAX_REQUEST_ID_CHARS printable ASCII characters, else a new id."""
    if incoming and len(incoming) <= MAX_REQUEST_ID_CHARS and incoming.isascii() and incoming.isprintable():
        return incoming
    return uuid.uuid4().hex


def route_label(scope: Scope) -> str:
    """The matched route's path template (``unmatched`` otherwise: a client cannot add labels)."""
    route = scope.get("route")
    return route.path if isinstance(route, Route) else "unmatched"


class Operations:
    """Request ids, metrics, the access log line and the drain's 503 (see the module)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, drain: Drain) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(Headers(scope=scope).get("x-request-id"))
        REQUEST_ID.set(rid)  # each request runs in a task of its own: no reset needed
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("ascii"))]
            await send(message)

        self.drain.in_flight += 1
        try:
            if self.drain.draining:
                await _unavailable(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.drain.in_flight -= 1
            seconds = time.perf_counter() - started
            self.metrics.observe(route_label(scope), status, seconds)
            log.info("request %s: %s %r -> %d in %.3f s", rid, scope["method"], scope["path"][:200], status, seconds)


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(error_body("the server is shutting down", "server_error", code="shutting_down"),
                            status_code=503, headers={"Connection": "close"})
    await response(scope, receive, send)
