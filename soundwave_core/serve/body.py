"""Request bodies: read whole (bounded in size and time) under a server-wide memory budget.

A body is read, parsed and checked before its request is queued, and while that happens it costs
about three times its size (the bytes, the text JSON decodes them to, the strings parsed from
it). :class:`BodyBudget` bounds the body bytes held at once: a request reserves its declared
``Content-Length`` (a chunked body: the largest body allowed) before its first byte is read and
gives it back once its request is queued or refused, so eight clients sending 30 MB each cost two
or three bodies' worth of memory, not eight. A request waits for room (its client's bytes wait in
the socket meanwhile: uvicorn stops reading a connection whose app does not read) at most
``timeout`` seconds, then gets 503; smaller reservations pass a waiting larger one when they fit,
and the budget keeps a reserve that only small bodies use (measured: under 8 clients sending
endless chunked bodies, each reserving 32 MiB of the 64 MiB, a normal 43 KB request waited
0.32 s for room, as long as its whole answer takes on an idle server).

A chat body is also measured while it arrives (:class:`TextBudget`): one holding more text than
the request may have is refused after about that much of it is read, not after all of it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from anyio import move_on_after
from fastapi import Request

from swv.serve.openai_api import RequestError, body_too_large, text_bytes_limit, too_much_text
from swv.serve.text_meter import TextMeter

#: A body's check (:class:`TextBudget`) runs each time this many more bytes of it have arrived.
CHECK_EVERY_BYTES = 256 * 1024


class BodyBudget:
    """At most ``capacity`` bytes of request bodies held at once (see the module). The last
    ``reserve`` bytes (at most half the capacity) are for bodies of at most ``reserve`` bytes: a
    larger body (a chunked one reserves the largest body allowed) never takes them, so big bodies
    in flight cannot make a small request wait for room."""

    def __init__(self, capacity: int, reserve: int = 0) -> None:
        self.capacity = capacity
        self.small_reserve = min(reserve, capacity // 2)
        self.held = 0
        self._room = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, size: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most the capacity) while the block runs; :class:`RequestError`
        (503) when they are not free within ``timeout`` seconds."""
        limit = self.capacity if size <= self.small_reserve else self.capacity - self.small_reserve
        size = min(size, limit)
        async with self._room:
            with move_on_after(timeout) as deadline:
                await self._room.wait_for(lambda: self.held + size <= limit)
            if deadline.cancelled_caught:
                raise RequestError(503, f"the server is busy reading other request bodies (no room within "
                                        f"{timeout:g} s); retry later", type="server_error", code="server_busy")
            self.held += size
        try:
            yield
        finally:
            async with self._room:
                self.held -= size
                self._room.notify_all()


def declared_length(request: Request, limit: int) -> int | None:
    """The body's ``Content-Length`` (``None``: not declared); :class:`RequestError` (413) past ``limit``."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return None
    if int(length) > limit:
        raise body_too_large(limit)
    return int(length)


class TextBudget:
    """A check of a JSON body's bytes read so far (:func:`read_body`): :class:`RequestError` (400,
    as :func:`~swv.serve.openai_api.parse_json` refuses the whole body) once they hold more bytes
    of strings besides audio data than ``max_text_chars`` characters take (:class:`TextMeter`)."""

    def __init__(self, max_text_chars: int) -> None:
        self.max_text_chars = max_text_chars
        self.limit = text_bytes_limit(max_text_chars)
        self.meter = TextMeter()

    def __call__(self, data: memoryview) -> None:
        if self.meter.measure(data) > self.limit:
            raise too_much_text(self.max_text_chars)


async def read_body(request: Request, limit: int, timeout: float,
                    check: Callable[[memoryview], None] | None = None) -> bytes:
    """The request body, refused (413) once it exceeds ``limit`` bytes: by its declared length
    before it is read, and while it is read (a chunked body declares none); refused (408) when
    it has not all arrived ``timeout`` seconds after reading starts; ``check`` (which raises to
    refuse it) is given the bytes read so far each time :data:`CHECK_EVERY_BYTES` more have come.
    The bytes are gathered in one growing buffer that becomes the returned ``bytes`` without a copy."""
    declared_length(request, limit)
    buffer = io.BytesIO()
    checked = 0
    with move_on_after(timeout) as deadline:
        async for chunk in request.stream():
            if buffer.tell() + len(chunk) > limit:
                raise body_too_large(limit)
            buffer.write(chunk)
            if check is not None and buffer.tell() - checked >= CHECK_EVERY_BYTES:
                checked = buffer.tell()
                with buffer.getbuffer() as view:
                    check(view)
    if deadline.cancelled_caught:
        raise RequestError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout")
    return buffer.getvalue()


@asynccontextmanager
async def held_body(request: Request, budget: BodyBudget, limit: int, timeout: float,
                    check: Callable[[memoryview], None] | None = None) -> AsyncIterator[bytes]:
    """The body of ``request`` (:func:`read_body`, with its ``check``), its declared length (else
    ``limit``) held in ``budget`` from before it is read until the block ends (waiting at most
    ``timeout`` s for room)."""
    size = declared_length(request, limit)
    async with budget.reserve(limit if size is None else size, timeout):
        yield await read_body(request, limit, timeout, check)
