"""Run the server in a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from fastapi import FastAPI

from swv.serve.server import ServerOptions, build_server


class BackgroundServer:
    """``with BackgroundServer(app) as server: server.url`` -- uvicorn on ``host`` (default
    127.0.0.1) and a free port, with ``options`` (:class:`ServerOptions`), stopped on exit."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0,
                 options: ServerOptions | None = None) -> None:
        self.server = build_server(app, host, port, options or ServerOptions(), log_level="warning")
        self.host = host
        self.startup_timeout = startup_timeout
        self._thread = threading.Thread(target=self.server.run, name="swv-serve", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
