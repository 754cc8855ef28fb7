"""Run an app with uvicorn, its connection bounds set and a graceful drain on SIGTERM.

uvicorn bounds the connection: ``keep_alive_seconds`` (an idle connection is closed),
``max_header_bytes`` (a request line and headers that pass this size before they are complete
get 400: uvicorn buffers no more), ``max_connections``
(past it, new requests get 503). uvicorn has no deadline for headers that trickle in:
:class:`HeaderDeadline` (uvicorn's h11 protocol, handed to ``uvicorn.Config(http=...)``) adds
``header_timeout_seconds``: a connection whose request line and headers are not complete within
it, counted from the connection's opening or from the first byte of a later request on it, is
answered 408 and closed. The body's deadline is the app's (``ServeSettings.body_timeout_seconds``).

Proxy headers (``X-Forwarded-For``, ``X-Forwarded-Proto``) are read only from the peers of
``forwarded_allow_ips`` (see :mod:`swv.serve.proxies`); with none, the default, uvicorn's
``proxy_headers`` is off and the ``FORWARDED_ALLOW_IPS`` environment variable is not read, so
the client address is always the peer's.

On SIGTERM the server drains: new requests get 503, the requests in flight get
``drain_timeout_seconds`` to finish, then the server stops and the process exits 0 (what still
runs then gets uvicorn's graceful shutdown, as long again, before it is cancelled). A second
SIGTERM, or Ctrl-C, goes straight to uvicorn's shutdown."""

from __future__ import annotations

import asyncio
import copy
import signal
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from swv.core.errors import UsageError
from swv.serve import limits
from swv.serve.ops import Drain
from swv.serve.proxies import trusted_proxies


@dataclass(frozen=True)
class ServerOptions:
    """uvicorn's bounds and the drain time (see the module)."""

    keep_alive_seconds: float = limits.KEEP_ALIVE_SECONDS
    max_header_bytes: int = limits.MAX_HEADER_BYTES
    max_connections: int = limits.MAX_CONNECTIONS
    drain_timeout_seconds: float = limits.DRAIN_TIMEOUT_SECONDS
    header_timeout_seconds: float = limits.HEADER_TIMEOUT_SECONDS
    #: Peers whose proxy headers name the client: addresses, networks or ``"*"`` (none: ignored).
    forwarded_allow_ips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("keep_alive_seconds", "max_header_bytes", "max_connections", "drain_timeout_seconds",
                     "header_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)}")
        object.__setattr__(self, "forwarded_allow_ips", trusted_proxies(self.forwarded_allow_ips))


#: What a connection whose headers missed their deadline is sent before it is closed.
_HEADER_TIMEOUT_REPLY = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers (see the
    module): armed when the connection opens and when a byte of a new request arrives, disarmed
    once h11 has the whole head (the client's state leaves ``IDLE``)."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self.header_deadline is None and not self.transport.is_closing():
            self.header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_late(self) -> None:
        self.header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.write(_HEADER_TIMEOUT_REPLY)
            self.transport.close()


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus the ``swv.serve`` lines (one per request, with its id)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["swv.serve"] = {"handlers": ["default"], "level": level.upper(), "propagate": True}
    return config


def server_config(app: FastAPI, host: str, port: int, options: ServerOptions, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's config for ``app`` (its own access log off: ``swv.serve`` logs each request with its id; proxy
    headers only from ``options.forwarded_allow_ips``, the environment's ``FORWARDED_ALLOW_IPS`` never read)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=_log_config(log_level), access_log=False,
                          proxy_headers=bool(options.forwarded_allow_ips),
                          forwarded_allow_ips=list(options.forwarded_allow_ips),
                          timeout_keep_alive=max(1, round(options.keep_alive_seconds)),
                          h11_max_incomplete_event_size=options.max_header_bytes,
                          limit_concurrency=options.max_connections,
                          timeout_graceful_shutdown=max(1, round(options.drain_timeout_seconds)),
                          http=partial(HeaderDeadline, header_timeout=options.header_timeout_seconds))


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining ``app.state.drain`` on the first SIGTERM (see the module)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout_seconds: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_timeout_seconds = drain_timeout_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain.draining:
            super().handle_exit(sig, frame)
            return
        self.drain.begin(self.drain_timeout_seconds)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.done():
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(app: FastAPI, host: str, port: int, options: ServerOptions, log_level: str = "info") -> DrainingServer:
    return DrainingServer(server_config(app, host, port, options, log_level), app.state.drain,
                          options.drain_timeout_seconds)


def run(app: FastAPI, host: str, port: int, options: ServerOptions) -> None:
    """Serve ``app`` until SIGTERM (drained) or Ctrl-C."""
    build_server(app, host, port, options).run()
