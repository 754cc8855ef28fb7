"""Prometheus metrics of one app (``GET /metrics``), in a registry of its own so that two apps
in one process keep separate counts. prometheus_client is optional (the ``serve`` extra):
without it the counts are not kept and ``/metrics`` answers 501."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: What ``/metrics`` says when prometheus_client is not installed.
MISSING = "metrics need prometheus_client: pip install 'swv[serve]'\n"


class Metrics:
    """``swv_requests_total{route,status}``, ``swv_request_duration_seconds{route}``,
    ``swv_queue_depth`` (requests waiting for the batcher), ``swv_generated_tokens_total`` and
    ``swv_audio_seconds_total`` (audio of the requests served)."""

    def __init__(self, queue_depth: Callable[[], int]) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry: Any = None
            return
        self.registry = registry = prom.CollectorRegistry()
        self.requests = prom.Counter("swv_requests", "HTTP requests answered, by route and status",
                                     ["route", "status"], registry=registry)
        self.latency = prom.Histogram("swv_request_duration_seconds", "Time to answer a request, by route",
                                      ["route"], registry=registry)
        self.queue = prom.Gauge("swv_queue_depth", "Requests waiting for the batcher", registry=registry)
        self.queue.set_function(queue_depth)
        self.tokens = prom.Counter("swv_generated_tokens", "Tokens generated", registry=registry)
        self.audio = prom.Counter("swv_audio_seconds", "Seconds of input audio in the requests served",
                                  registry=registry)

    @property
    def available(self) -> bool:
        return self.registry is not None

    def observe(self, route: str, status: int, seconds: float) -> None:
        if self.available:
            self.requests.labels(route=route, status=str(status)).inc()
            self.latency.labels(route=route).observe(seconds)

    def served(self, generated_tokens: int, audio_seconds: float) -> None:
        if self.available:
            self.tokens.inc(generated_tokens)
            self.audio.inc(audio_seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type (only when :attr:`available`)."""
        import prometheus_client as prom

        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
