"""Batching concurrent chat requests: a worker thread collects requests for a short window
(up to a maximum batch), groups those with the same sampling settings, and generates each
group in one :meth:`~swv.infer.pipeline.Pipeline.generate_prepared` call.

Each request gets its own answer: a row stops at its own stop token, its own ``stop`` strings
(:class:`Job`; the text ends before them and streamed text is held back while it could be the
start of one) or its own token limit
(``max_tokens``, lowered for a transcript or translation to its audio's length bound, see
:meth:`~swv.infer.pipeline.Pipeline.row_limits`), and its text streams to it piece by piece. With greedy decoding the answer is
the one the request gets alone (left padding does not change it; the server tests check this).
Events reach the request's asyncio queue through its event loop, thread-safely.

A request with a ``seed`` is generated in a batch of its own: transformers' ``generate`` draws
from torch's global generator (it takes no per-request ``torch.Generator``), so the batch runs
with that generator seeded for it, and restored afterwards (:func:`torch.random.fork_rng`).
A request asking for ``logprobs`` gets each answer token's log-probability and its
``top_logprobs`` alternatives (:class:`_LogprobRecorder`).

A job that takes its answer whole (``Job.rescore``: a non-streamed request; no text is sent
before :class:`Finished`) and is a transcript whose settings have a ``ctc_weight`` is rescored
with the CTC head once its batch is generated (:meth:`~swv.infer.pipeline.Pipeline.rescore`), as
``Pipeline.generate_requests`` does: its answer is the one ``swv infer`` gives. When the CTC
head's reading replaces it, the logprobs recorded for the generated tokens describe no token of
the answer, so there are none (``Finished.logprobs`` is ``None``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
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
    logprobs: list[dict[str, Any]] | None = None


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
    request's id (for the log). ``stop``: strings that end the answer (excluded from it);
    ``logprobs``: ``None``, or the number of alternatives each answer token's log-probability
    comes with. ``rescore``: the client takes the answer whole, so no :class:`Delta` is sent and
    a transcript is rescored with the CTC head when its settings' ``ctc_weight`` is above 0
    (:mod:`swv.infer.rescoring`; :meth:`rescored`). ``queued_at``: when it was made
    (``time.monotonic``)."""

    def __init__(self, request: ChatRequest, settings: GenerationSettings, loop: asyncio.AbstractEventLoop,
                 stop: Sequence[str] = (), logprobs: int | None = None, request_id: str = "-",
                 rescore: bool = False) -> None:
        self.request = request
        self.request_id = request_id
        self.settings = settings
        self.stop = tuple(stop)
        self.logprobs = logprobs
        self.rescore = rescore
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.queued_at = time.monotonic()
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

    def rescored(self, pipeline: Pipeline) -> bool:
        """Whether the job's answer is rescored with the CTC head (``rescore``, a transcript, a
        ``ctc_weight`` above 0: :meth:`Pipeline.rescores`)."""
        return self.rescore and pipeline.rescores(self.request, self.settings)


def _group_key(job: Job) -> tuple[Any, ...]:
    """Requests whose settings differ only in ``max_new_tokens`` share a batch; a seeded one
    has a batch of its own."""
    if job.settings.seed is not None:
        return ("seeded", id(job))
    return tuple(value for name, value in sorted(asdict(job.settings).items()) if name != "max_new_tokens")


def cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of the ``stops`` strings begins in ``text`` (``None``: none does)."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string."""
    return max((n for stop in stops for n in range(min(len(stop) - 1, len(text)), 0, -1)
                if text.endswith(stop[:n])), default=0)


def send_text(job: Job, sent: str, text: str, final: bool = False) -> str:
    """Send ``job`` the part of its answer ``text`` past what it was ``sent`` (held back while
    the text ends in an incomplete character or, unless ``final``, in what may be the start of
    a stop string; never for a job that takes its answer whole, ``Job.rescore``); what it has been
    sent now."""
    if job.rescore:
        return sent
    held = text.endswith("\ufffd") and not final  # may be the first bytes of a character
    if not final:
        text = text[: len(text) - _held_back(text, job.stop)]
    if held or not text.startswith(sent) or len(text) == len(sent):
        return sent
    job.emit(Delta(text[len(sent) :]))
    return text


class _RowsDone(StoppingCriteria):
    """Finishes the rows the streamer marked done (a stop string appeared)."""

    def __init__(self, streamer: _RowStreamer) -> None:
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.tensor(self.streamer.hit, dtype=torch.bool, device=input_ids.device)


class _LogprobRecorder(LogitsProcessor):
    """Records, at each step, the log-probability of the token chosen at the step before and
    the ``k`` most likely tokens (of the scores it sees: after the repetition controls, before
    temperature and top-p); the scores pass unchanged."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.chosen: list[torch.Tensor] = []
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._last is not None:
            self._take(input_ids[:, -1])
        self._last = scores.float().log_softmax(-1)
        values, indices = self._last.topk(self.k, dim=-1) if self.k else (self._last[:, :0], self._last[:, :0].long())
        self.top.append((values.cpu(), indices.cpu()))
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        assert self._last is not None
        self.chosen.append(self._last.gather(1, tokens.to(self._last.device)[:, None])[:, 0].cpu())

    def content(self, new_tokens: torch.Tensor, row: int, count: int, processor: SpeechLMProcessor) -> list[dict[str, Any]]:
        """OpenAI's ``logprobs.content`` of the first ``count`` tokens of ``row``."""
        if self._last is not None and len(self.chosen) < len(self.top):
            self._take(new_tokens[:, len(self.chosen)])
        ids = new_tokens[row, :count].tolist()
        return [dict(token_entry(processor, token, float(self.chosen[t][row])),
                     top_logprobs=[token_entry(processor, int(i), float(v))
                                   for v, i in zip(self.top[t][0][row].tolist(), self.top[t][1][row].tolist())])
                for t, token in enumerate(ids)]


def token_entry(processor: SpeechLMProcessor, token: int, logprob: float) -> dict[str, Any]:
    """``{"token", "logprob", "bytes"}`` of one token (its text as the tokenizer decodes it alone)."""
    text = processor.tokenizer.decode([token])
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8", "replace"))}


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
        self.hit = [False] * len(self.jobs)
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
            text = self.processor.decode(self.tokens[row])
            cut = cut_at_stop(text, self.jobs[row].stop)
            if cut is not None:
                self.done[row] = self.hit[row] = True
            self._send(row, text if cut is None else text[:cut], final=cut is not None)
        if all(job.cancelled.is_set() for job in self.jobs):
            self.stop.set()

    def _send(self, row: int, text: str, final: bool = False) -> None:
        self.sent[row] = send_text(self.jobs[row], self.sent[row], text, final)

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
                groups.setdefault(_group_key(job), []).append(job)
            for group in groups.values():
                self._serve(group)

    def _serve(self, jobs: list[Job], work: Callable[[], None] | None = None) -> None:
        """Answer one group (``work``: what answers it, by default :meth:`_generate` of its jobs
        still wanted); failures go to its jobs, never stop the worker."""
        try:
            if work is None:
                self._generate([job for job in jobs if not job.cancelled.is_set()])
            else:
                work()
        except SwvError as exc:
            for job in jobs:
                job.emit(Failed(400, " ".join(str(exc).split())))
        except Exception as exc:  # a bug: report it to the clients, keep serving
            log.exception("generation failed for requests %s", ", ".join(job.request_id for job in jobs))
            for job in jobs:
                job.emit(Failed(500, f"internal error: {first_line(exc)}", type="server_error"))

    def _fit_context(self, jobs: list[Job]) -> tuple[list[Job], Any]:
        """Encode the jobs' audio; jobs whose prompt + ``max_tokens`` exceed the context fail (the
        rest keep their rows of that one encoding: :meth:`Prepared.select`, no audio encoded twice)."""
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
        rows = [row for row, ok in enumerate(fits) if ok]
        return [jobs[row] for row in rows], (prepared.select(rows) if rows else None)

    def _generate(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        with torch.inference_mode(), _seeded(jobs[0].settings.seed, self.pipeline.device):
            jobs, prepared = self._fit_context(jobs)
            if not jobs:
                return
            for job, n in zip(jobs, prepared.prompt_tokens):
                job.emit(Started(n))
            new_tokens, limits, streamer, recorder = self._run_batch(jobs, prepared)
            rescored = [row for row, job in enumerate(jobs) if job.rescored(self.pipeline)]
            answers = self.pipeline.rescore(prepared, new_tokens, jobs[0].settings, torch.tensor(limits), rescored)
        self._finish(jobs, prepared.prompt_tokens, answers, new_tokens, limits, streamer, recorder)

    def _run_batch(self, jobs: list[Job], prepared: Any) -> tuple[torch.Tensor, list[int], _RowStreamer, Any]:
        """Generate a prepared batch: its new tokens, row limits, streamer and logprob recorder."""
        pipe = self.pipeline
        requested = [job.settings.max_new_tokens for job in jobs]
        settings = replace(jobs[0].settings, max_new_tokens=max(requested))
        limits = pipe.row_limits(prepared, settings, requested).tolist()
        stop = threading.Event()
        streamer = _RowStreamer(pipe.processor, jobs, limits, stop)
        wanted = [job.logprobs for job in jobs if job.logprobs is not None]
        recorder = _LogprobRecorder(max(wanted)) if wanted else None
        new_tokens = pipe.generate_prepared(prepared, settings, streamer, stop=stop, row_limits=limits,
                                            criteria=[_RowsDone(streamer)], processors=[recorder] if recorder else [])
        return new_tokens, limits, streamer, recorder

    def _finish(self, jobs: list[Job], prompt_tokens: list[int], answers: torch.Tensor, new_tokens: torch.Tensor,
                limits: list[int], streamer: _RowStreamer, recorder: _LogprobRecorder | None) -> None:
        """Send each job its whole answer (``answers [B, N']``: the generated ``new_tokens [B, N]``,
        rescored; cut before its first stop string) and counts."""
        processor = self.pipeline.processor
        texts, generated, stopped = processor.decode_generated(answers, torch.tensor(limits))
        cuts = [cut_at_stop(text, job.stop) for text, job in zip(texts, jobs)]
        texts = [text if cut is None else text[:cut] for text, cut in zip(texts, cuts)]
        streamer.finish(texts)
        self.batches_served += 1
        for row, (job, text, ended, n_gen, n_prompt) in enumerate(zip(jobs, texts, stopped, generated, prompt_tokens)):
            reason = "stop" if ended or cuts[row] is not None else "length"
            logprobs = None
            replaced = not torch.equal(answers[row, : new_tokens.shape[1]], new_tokens[row])
            if recorder is not None and job.logprobs is not None and not replaced:
                kept = len(streamer.tokens[row]) - int(streamer.hit[row])
                logprobs = recorder.content(new_tokens, row, kept, processor)
                logprobs = [dict(e, top_logprobs=e["top_logprobs"][: job.logprobs]) for e in logprobs]
            job.emit(Finished(text, reason, n_prompt, n_gen, logprobs))


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Torch's generators seeded with ``seed`` inside, restored afterwards (nothing if ``None``)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
