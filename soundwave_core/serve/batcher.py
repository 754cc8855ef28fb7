"""Batching concurrent chat requests: a worker thread collects requests for a short window
(up to a maximum batch), groups those with the same sampling settings, and generates each
group in one :meth:`~swv.infer.pipeline.Pipeline.generate_prepared` call.

Each request gets its own answer: a row stops at its own stop token or its own token limit
(``max_tokens``, lowered for a transcript or translation to its audio's length bound, see
:meth:`~swv.infer.pipeline.Pipeline.row_limits`), and its text streams to it piece by piece. With greedy decoding the answer is
the one the request gets alone (left padding does not change it; the server tests check this).
Events reach the request's asyncio queue through its event loop, thread-safely.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from swv.core.errors import SwvError, first_line
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings
from swv.model.processor import ChatRequest, SpeechLMProcessor

log = logging.getLogger("swv.serve")


# -- events a job receives, in order: Started, Delta*, Finished (or Failed at any point) ------
@dataclass(frozen=True)
class Started:
    """Generation began; ``prompt_tokens`` = text tokens + audio embeddings the LLM reads."""

    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    """A new piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The whole answer (equal to the concatenated deltas), ``finish_reason`` ``"stop"`` or
    ``"length"``, and the token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """The request cannot be answered: an HTTP ``status`` and an OpenAI-style error."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None


Event = Started | Delta | Finished | Failed


class Job:
    """One request in the batcher: what to generate, the queue its events go to, and the
    request's id (for the log)."""

    def __init__(self, request: ChatRequest, settings: GenerationSettings, loop: asyncio.AbstractEventLoop,
                 request_id: str = "-") -> None:
        self.request = request
        self.request_id = request_id
        self.settings = settings
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self._loop = loop

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the job's event loop (called from the worker thread); dropped once
        that loop is closed (the server is shutting down)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            self.cancelled.set()

    async def next_event(self) -> Event:
        return await self.events.get()


def _group_key(settings: GenerationSettings) -> tuple[Any, ...]:
    """Requests whose settings differ only in ``max_new_tokens`` share a batch."""
    return tuple(value for name, value in sorted(asdict(settings).items()) if name != "max_new_tokens")


class _RowStreamer(BaseStreamer):
    """Receives each step's ``[B]`` new tokens and sends every job the new part of its text
    (decoded, stripped; held back while it ends in an incomplete character)."""

    def __init__(self, processor: SpeechLMProcessor, jobs: Sequence[Job], limits: Sequence[int],
                 stop: threading.Event) -> None:
        self.processor = processor
        self.stop_set = set(processor.stop_token_ids)
        self.jobs = list(jobs)
        self.limits = list(limits)
        self.stop = stop
        self.tokens: list[list[int]] = [[] for _ in self.jobs]
        self.done = [False] * len(self.jobs)
        self.sent = [""] * len(self.jobs)
        self.calls = 0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 1:  # the (empty) prompt ids
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            if token in self.stop_set:
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            self.done[row] = len(self.tokens[row]) >= self.limits[row]
            self._send(row, self.processor.decode(self.tokens[row]))
        if all(job.cancelled.is_set() for job in self.jobs):
            self.stop.set()

    def _send(self, row: int, text: str, final: bool = False) -> None:
        held = text.endswith("\ufffd") and not final  # may be the first bytes of a character
        if held or not text.startswith(self.sent[row]) or len(text) == len(self.sent[row]):
            return
        self.jobs[row].emit(Delta(text[len(self.sent[row]) :]))
        self.sent[row] = text

    def end(self) -> None:
        return None

    def finish(self, texts: Sequence[str]) -> None:
        """Send whatever of the final texts was held back."""
        for row, text in enumerate(texts):
            self._send(row, text, final=True)


class Batcher:
    """Collects jobs for ``window_seconds`` after the first arrives (at most ``max_batch``) and
    serves them in one worker thread. ``max_context`` bounds prompt tokens + ``max_tokens``."""

    def __init__(self, pipeline: Pipeline, *, max_batch: int, window_seconds: float, max_context: int) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.window_seconds = window_seconds
        self.max_context = max_context
        self.batches_served = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="swv-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _collect(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.window_seconds
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (jobs := self._collect()) is not None:
            groups: dict[tuple[Any, ...], list[Job]] = {}
            for job in jobs:
                groups.setdefault(_group_key(job.settings), []).append(job)
            for group in groups.values():
                self._serve(group)

    def _serve(self, jobs: list[Job]) -> None:
        """Answer one group; failures go to its jobs, never stop the worker."""
        try:
            self._generate([job for job in jobs if not job.cancelled.is_set()])
        except SwvError as exc:
            for job in jobs:
                job.emit(Failed(400, " ".join(str(exc).split())))
        except Exception as exc:  # a bug: report it to the clients, keep serving
            log.exception("generation failed for requests %s", ", ".join(job.request_id for job in jobs))
            for job in jobs:
                job.emit(Failed(500, f"internal error: {first_line(exc)}", type="server_error"))

    def _fit_context(self, jobs: list[Job]) -> tuple[list[Job], Any]:
        """Encode the jobs' audio; jobs whose prompt + ``max_tokens`` exceed the context fail
        (the rest are encoded again without them)."""
        pipe = self.pipeline
        prepared = pipe.encode_requests([job.request for job in jobs])
        fits = [n + job.settings.max_new_tokens <= self.max_context for job, n in zip(jobs, prepared.prompt_tokens)]
        if all(fits):
            return jobs, prepared
        for job, n, ok in zip(jobs, prepared.prompt_tokens, fits):
            if not ok:
                job.emit(Failed(
                    400,
                    f"this model's context is {self.max_context} tokens, but the request needs {n} prompt tokens "
                    f"(text and audio) plus max_tokens {job.settings.max_new_tokens}",
                    code="context_length_exceeded", param="messages",
                ))
        kept = [job for job, ok in zip(jobs, fits) if ok]
        return kept, (pipe.encode_requests([job.request for job in kept]) if kept else None)

    def _generate(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        pipe = self.pipeline
        with torch.inference_mode():
            jobs, prepared = self._fit_context(jobs)
            if not jobs:
                return
            prompt_tokens = prepared.prompt_tokens
            for job, n in zip(jobs, prompt_tokens):
                job.emit(Started(n))
            requested = [job.settings.max_new_tokens for job in jobs]
            settings = replace(jobs[0].settings, max_new_tokens=max(requested))
            limits = pipe.row_limits(prepared, settings, requested).tolist()
            stop = threading.Event()
            streamer = _RowStreamer(pipe.processor, jobs, limits, stop)
            new_tokens = pipe.generate_prepared(prepared, settings, streamer, stop=stop, row_limits=limits)
        texts, generated, stopped = pipe.processor.decode_generated(new_tokens, torch.tensor(limits))
        streamer.finish(texts)
        self.batches_served += 1
        for job, text, ended, n_gen, n_prompt in zip(jobs, texts, stopped, generated, prompt_tokens):
            reason = "stop" if ended else "length"
            job.emit(Finished(text, reason, n_prompt, n_gen))
