"""Per-token scheduling (continuous batching): requests join and leave the running batch at
token boundaries.

The worker thread keeps one :class:`~swv.infer.running.RunningBatch` (the backbone's KV cache
of every running request) and loops over ticks. A tick admits waiting requests (when idle it
first waits ``window_seconds`` for more, as the :class:`~swv.serve.batcher.Batcher` does): those
that have waited ``limits.STARVATION_SECONDS`` first, oldest first, then the cheapest (least audio, then
fewest prompt tokens), as long as rows are free (``max_batch`` running at once), their audio
together stays within ``prefill_audio_seconds`` and their prompts' text tokens (known before
encoding; the audio placeholders not counted) within ``prefill_text_tokens`` (the first always
joins, so a request over a budget is prefilled alone in its tick). Their audio is encoded and their prompts run
(prefill) as one batch per group of equal settings and similar audio length (within a factor of
two: a prefill pads every row to its longest), cheaper groups first, and their rows join the
cache. The others keep waiting. Then every running row takes one decoding step (it is fed its
last token), and the next tick admits again, newcomers included: between two steps at most one
budget of audio and one of text is prefilled (a request refused for its context does not make the
others of its group be encoded again), and a cheap request that arrives behind a backlog of long ones
joins at the next tick (when a row is free), ahead of the backlog unless that has starved.
A group whose longest prompt (text and audio positions) passes ``prefill_chunk_tokens`` is
prefilled a chunk of that many positions per tick (:class:`~swv.infer.running.PartialPrefill`:
its audio is encoded at admission, its prompt then runs into a cache of its own), with decoding
steps of the running rows between two chunks; its rows join the batch once the prompt is done
(one chunked prefill advances at a time, oldest first; its rows count as taken). So a 59 s
request (~1,000 positions) pauses the running rows for its encoding and then a chunk per step,
not for its whole prompt at once. vLLM's chunked prefill has the same aim. A group with a long
request (below) is not encoded in the worker thread at all: one encoder thread encodes such
groups one at a time, at a lower OS priority (its nice value raised by ``long_encode_nice``, on
Linux), while the worker keeps stepping the running rows and prefilling others; the group's
rows count as taken meanwhile, and its prefill starts at the first tick after its encoding.
(Why a thread of our own and not anyio's or the request's worker thread: a nice value cannot
be lowered again without privileges, so the thread that carries it must do nothing else.)
Long requests (over ``long_audio_seconds`` of audio or ``long_text_tokens`` of prompt text) hold
at most ``max_long_rows`` rows at once: a long request that would pass it waits (starved or not)
and the short ones behind it join, so a burst of long requests cannot take every row (a short
request would wait for one of them to finish) and every decoding step reads a bounded number of
long caches (each step's cost grows with the rows' cache lengths). vLLM bounds its concurrent
long prefills the same way (``--max-long-partial-prefills``); here the bound holds for the rows'
whole life, since on CPU each long row slows every step. Long rows are also stepped apart:
the running rows are two batches (:class:`_Lane`), short and long, each with its own KV cache,
so a short row is not padded to a long row's ~1,000 cached positions and its step neither
copies nor attends their caches. While short rows run, the long rows take a step only every
``long_step_every`` ticks (the short rows every tick): a short request's tokens cost about a
short step each, and long answers slow by about that factor meanwhile (at full rate again when
no short row runs). A
row leaves as soon as it is done (its stop token, its ``stop`` string, its token limit, or its
client gone), so a short request that arrives while a long one generates waits for one step
and one bounded prefill besides its own, not for the long answer.

Why not transformers' continuous batching (``generate_batch``, ``init_continuous_batching``,
``ContinuousBatchingManager.add_request``): it takes prompts as token ids only, while swv's
prompts are embeddings with the audio spliced in; and it has no hook for swv's per-request
stop strings, logprobs and seeds. See docs/serving.md.

Each row chooses its own tokens: its repetition controls (over its own answer, as in
``generate`` from embeddings), then greedy, or sampling with its temperature, ``top_k`` and
``top_p`` (the backbone's generation config's when the request leaves them open, transformers'
defaults otherwise) from its own ``torch.Generator`` when it has a ``seed`` (so requests with
different settings share one batch). Greedy answers equal the :class:`Batcher`'s.

A row whose answer is rescored with the CTC head (:meth:`Job.rescored`: taken whole, a
transcript, a ``ctc_weight``) keeps its prompt ids and its clip's adapter-chain output from its
prefill (:class:`~swv.infer.rescoring.TranscriptSource`: only the fields rescoring reads, cut to
the clip's frames; nothing for the other rows) until it is done. The rows done in a step are
rescored together, one batched pass per ``ctc_weight``
(:func:`~swv.infer.rescoring.rescore_transcripts`), in the worker thread, before their answers
are sent; a failure there fails those rows only.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from concurrent import futures
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from swv.core.errors import first_line
from swv.infer.batching import Prepared
from swv.infer.pipeline import Pipeline
from swv.infer.rescoring import TranscriptSource, rescore_transcripts, transcript_source
from swv.infer.running import PartialPrefill, RunningBatch
from swv.infer.settings import GenerationSettings
from swv.model.stopping import cut_at_stop as cut_ids_at_stop
from swv.serve import limits
from swv.serve.batcher import Batcher, Failed, Finished, Job, Started, cut_at_stop, send_text, token_entry

__all__ = ["Scheduler"]

log = logging.getLogger("swv.serve")

#: How long the worker waits for a long group's encoding when it has nothing else to do.
ENCODING_POLL_SECONDS = 0.005


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (at most 19): on Linux a thread id names
    one thread for ``setpriority``, and threads it starts inherit the value. Elsewhere (where it
    would name the whole process) and when refused, nothing changes."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError:
        log.warning("could not lower the priority of the encoder thread")


#: transformers' ``top_k`` when neither the request nor the model's generation config sets one.
TRANSFORMERS_TOP_K = 50


@dataclass
class _Row:
    """One running request: its limits, how it chooses tokens, and its answer so far.
    ``transcript`` and ``ctc_weight`` (above 0): what rescoring its answer reads, kept only for a
    row that is rescored (``None`` and 0 otherwise); ``rescored``: its answer is the CTC head's
    reading."""

    job: Job
    limit: int
    prompt_tokens: int
    processors: LogitsProcessorList
    warpers: LogitsProcessorList | None  # None: greedy
    generator: torch.Generator | None
    transcript: TranscriptSource | None = None
    ctc_weight: float = 0.0
    tokens: list[int] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    sent: str = ""
    stopped: bool = False  # ended by a stop token
    hit: bool = False  # ended by a stop string
    done: bool = False
    rescored: bool = False

    @property
    def last(self) -> int:
        return self.tokens[-1]


@dataclass
class _Lane:
    """Running rows stepped together: their KV cache (``batch``) and the rows in its order."""

    batch: RunningBatch
    rows: list[_Row] = field(default_factory=list)


def _warpers(resolved: GenerationSettings, config: GenerationConfig) -> LogitsProcessorList | None:
    """transformers' sampling warpers for ``resolved`` settings (``None``: greedy), in
    ``generate``'s order: temperature, top-k, top-p."""
    if not resolved.do_sample:
        return None
    warpers = LogitsProcessorList()
    if resolved.temperature is not None and resolved.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(resolved.temperature)))
    top_k = next((k for k in (resolved.top_k, config.top_k, TRANSFORMERS_TOP_K) if k is not None))
    if top_k:
        warpers.append(TopKLogitsWarper(int(top_k)))
    top_p = resolved.top_p if resolved.top_p is not None else config.top_p
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(top_p)))
    return warpers


class Scheduler(Batcher):
    """A :class:`Batcher` whose requests join and leave the running batch at token boundaries
    (see the module). ``prefill_audio_seconds`` and ``prefill_text_tokens``: the most newcomers'
    audio and prompt text tokens prefilled between two decoding steps (``math.inf``: no bound).
    ``max_long_rows``: the most rows long requests (:meth:`is_long`: over ``long_audio_seconds``
    of audio or ``long_text_tokens`` of prompt text) hold at once (``None``: a quarter of
    ``max_batch``, at least 1). ``prefill_chunk_tokens``: a group of newcomers whose longest prompt
    passes it is prefilled that many positions per tick (chunked prefill, one group at a time).
    A group with a long request is encoded in an encoder thread of its own whose nice value is
    raised by ``long_encode_nice`` (Linux; 0: unchanged). Long rows run in a batch of their own,
    stepped every ``long_step_every`` ticks while short rows run (every tick otherwise).
    ``steps`` counts decoding steps; ``batches_served`` the prefills. The worker thread runs in
    ``torch.inference_mode``."""

    def __init__(self, pipeline: Pipeline, *, max_batch: int, window_seconds: float, max_context: int,
                 prefill_audio_seconds: float = limits.PREFILL_AUDIO_SECONDS,
                 prefill_text_tokens: float = limits.PREFILL_TEXT_TOKENS,
                 long_audio_seconds: float = limits.LONG_AUDIO_SECONDS,
                 long_text_tokens: float = limits.LONG_TEXT_TOKENS, max_long_rows: int | None = limits.MAX_LONG_ROWS,
                 prefill_chunk_tokens: float = limits.PREFILL_CHUNK_TOKENS,
                 long_encode_nice: int = limits.LONG_ENCODE_NICE,
                 long_step_every: int = limits.LONG_STEP_EVERY) -> None:
        super().__init__(pipeline, max_batch=max_batch, window_seconds=window_seconds, max_context=max_context)
        self.prefill_audio_seconds = prefill_audio_seconds
        self.prefill_text_tokens = prefill_text_tokens
        self.long_audio_seconds = long_audio_seconds
        self.long_text_tokens = long_text_tokens
        self.max_long_rows = max(1, max_batch // 4) if max_long_rows is None else max_long_rows
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._partial: list[tuple[PartialPrefill, list[_Row]]] = []  # chunked prefills, oldest first
        self.long_encode_nice = long_encode_nice
        self._encoder = futures.ThreadPoolExecutor(1, thread_name_prefix="swv-encode", initializer=lower_priority,
                                                   initargs=(long_encode_nice,))
        self._encoding: list[tuple[futures.Future, list[Job]]] = []  # long groups being encoded, oldest first
        self.steps = 0
        self._stop_ids = set(pipeline.processor.stop_token_ids)
        self.long_step_every = long_step_every
        self._lanes = {False: _Lane(RunningBatch(pipeline.model)), True: _Lane(RunningBatch(pipeline.model))}
        self._waiting: list[Job] = []
        self._closing = False

    def close(self) -> None:
        super().close()
        self._encoder.shutdown(wait=True)

    @property
    def _rows(self) -> list[_Row]:
        """Every running row: the short lane's, then the long lane's."""
        return self._lanes[False].rows + self._lanes[True].rows

    @property
    def pending(self) -> int:
        """Requests queued or waiting for a row."""
        return self._queue.qsize() + len(self._waiting)

    # -- the worker loop ------------------------------------------------------------------------
    @torch.inference_mode()
    def _run(self) -> None:
        while not (self._closing and not self._rows and not self._waiting and not self._partial and not self._encoding):
            jobs = self._admit()
            if jobs is None:
                break
            groups: dict[tuple[Any, ...], list[Job]] = {}
            for job in jobs:  # cheapest first: so are the groups
                groups.setdefault((*_settings_key(job), _length_class(job), self.is_long(job)), []).append(job)
            for group in groups.values():
                if any(self.is_long(job) for job in group):
                    self._encode_later(group)
                else:
                    self._serve(group)
            self._collect_encoded()
            self._prefill_chunk()
            self._step()

    def _admit(self) -> list[Job] | None:
        """The requests prefilled in this tick, cheapest first (see the module): when nothing runs
        or waits, the next one (blocking) and those arriving within the window; otherwise from
        those waiting (newcomers included). ``None``: the server closes and nothing runs."""
        if not (self._rows or self._waiting or self._partial or self._encoding):
            if self._closing or (jobs := self._collect()) is None:
                return None
            self._waiting = jobs
        while not self._closing:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._closing = True
            else:
                self._waiting.append(job)
        self._waiting = [job for job in self._waiting if not job.cancelled.is_set()]
        starved = time.monotonic() - limits.STARVATION_SECONDS
        self._waiting.sort(key=lambda job: (0, job.queued_at) if job.queued_at <= starved else (1, *_cost(job)))
        candidates = self._row_candidates()
        jobs = candidates[: self._within_budget(candidates)]
        chosen = {id(job) for job in jobs}
        self._waiting = [job for job in self._waiting if id(job) not in chosen]
        return sorted(jobs, key=_cost)

    def is_long(self, job: Job) -> bool:
        """Whether ``job`` is long: more audio than ``long_audio_seconds`` or more prompt text tokens
        than ``long_text_tokens`` (its row's cache, which every decoding step reads, is long)."""
        return (self.pipeline.audio_seconds(job.request) > self.long_audio_seconds
                or job.request.text_tokens > self.long_text_tokens)

    def _row_candidates(self) -> list[Job]:
        """The waiting requests (in their order) that rows are free for: at most ``max_batch``
        running in all, and at most ``max_long_rows`` long ones (:meth:`is_long`); a long request
        over that waits, and the short ones behind it pass it."""
        taken = ([row.job for row in self._rows] + [row.job for _, rows in self._partial for row in rows]
                 + [job for _, jobs in self._encoding for job in jobs])
        free = self.max_batch - len(taken)
        long_free = self.max_long_rows - sum(self.is_long(job) for job in taken)
        candidates: list[Job] = []
        for job in self._waiting:
            if len(candidates) >= free:
                break
            if self.is_long(job):
                if long_free <= 0:
                    continue
                long_free -= 1
            candidates.append(job)
        return candidates

    def _within_budget(self, jobs: list[Job]) -> int:
        """How many of ``jobs`` (in order) are prefilled in this tick: while their audio together
        stays within ``prefill_audio_seconds`` and their prompts' text tokens within
        ``prefill_text_tokens``, and the first in any case."""
        seconds = tokens = 0.0
        for count, job in enumerate(jobs):
            seconds += self.pipeline.audio_seconds(job.request)
            tokens += job.request.text_tokens  # the audio placeholders' audio: the audio budget
            if count and (seconds > self.prefill_audio_seconds or tokens > self.prefill_text_tokens):
                return count
        return len(jobs)

    def _generate(self, jobs: list[Job]) -> None:
        """Encode and prefill a group of newcomers; their rows join the batch and take their
        first token (errors go to these jobs only: see :meth:`Batcher._serve`)."""
        jobs, prepared = self._encode(jobs)
        if jobs:
            self._prefill(jobs, prepared)

    def _encode(self, jobs: list[Job]) -> tuple[list[Job], Any]:
        """The jobs still wanted that fit the context, and their audio encoded (``Prepared``)."""
        jobs = [job for job in jobs if not job.cancelled.is_set()]
        if not jobs:
            return [], None
        with torch.inference_mode():  # also in the encoder thread
            return self._fit_context(jobs)

    def _encode_later(self, jobs: list[Job]) -> None:
        """Encode a long group in the encoder thread (at a lower OS priority); the running rows
        keep stepping meanwhile, and the group is prefilled once its encoding is done."""
        self._encoding.append((self._encoder.submit(self._encode, jobs), jobs))

    def _collect_encoded(self) -> None:
        """Start the prefill of every group whose encoding is done (in submission order); when
        nothing else is to be done, wait a little for one."""
        if self._encoding and not self._rows and not self._partial and self._queue.empty():
            futures.wait([future for future, _ in self._encoding], timeout=ENCODING_POLL_SECONDS,
                         return_when=futures.FIRST_COMPLETED)
        while self._encoding and self._encoding[0][0].done():
            future, jobs = self._encoding.pop(0)
            self._serve(jobs, lambda: self._prefill_encoded(future.result()))

    def _prefill_encoded(self, encoded: tuple[list[Job], Any]) -> None:
        jobs, prepared = encoded
        if jobs:
            self._prefill(jobs, prepared)

    def _prefill(self, jobs: list[Job], prepared: Any) -> None:
        """Prefill encoded newcomers: whole, or (a prompt longer than ``prefill_chunk_tokens``)
        a chunk per tick from the next one on."""
        requested = [job.settings.max_new_tokens for job in jobs]
        settings = replace(jobs[0].settings, max_new_tokens=max(requested))
        limits = self.pipeline.row_limits(prepared, settings, requested).tolist()
        rows = [self._row(job, limit, n, self._transcript(job, prepared, b))
                for b, (job, limit, n) in enumerate(zip(jobs, limits, prepared.prompt_tokens))]
        self.batches_served += 1
        lane = self._lane(rows)
        if max(prepared.prompt_tokens) > self.prefill_chunk_tokens:  # run a chunk per tick from now on
            self._partial.append((lane.batch.start(prepared), rows))
            return
        self._joined(lane, rows, lane.batch.prefill(prepared))

    def _prefill_chunk(self) -> None:
        """Run the next ``prefill_chunk_tokens`` positions of the oldest chunked prefill; once its
        prompts are done its rows join the batch. Dropped when all its clients are gone; a failure
        fails its rows only."""
        if not self._partial:
            return
        partial, rows = self._partial[0]
        if all(row.job.cancelled.is_set() for row in rows):
            self._partial.pop(0)
            return
        try:
            done = partial.run(self.prefill_chunk_tokens)
            if done:
                self._partial.pop(0)
                lane = self._lane(rows)
                self._joined(lane, rows, lane.batch.join(partial))
        except Exception as exc:  # a bug: these rows fail, the running ones go on
            if self._partial and self._partial[0][0] is partial:
                self._partial.pop(0)
            log.exception("prefill failed for requests %s", ", ".join(row.job.request_id for row in rows))
            for row in rows:
                row.job.emit(Failed(500, f"internal error: {first_line(exc)}", type="server_error"))

    def _lane(self, rows: list[_Row]) -> _Lane:
        """The lane of a prefill's rows (all long or all short: :meth:`_run` groups them so)."""
        return self._lanes[self.is_long(rows[0].job)]

    def _joined(self, lane: _Lane, rows: list[_Row], logits: torch.Tensor) -> None:
        """Rows whose prompts ran (``logits [N, V]``) start: they join ``lane``'s running rows
        and take their first token."""
        for row in rows:
            row.job.emit(Started(row.prompt_tokens))
        lane.rows.extend(rows)
        try:
            self._advance(lane, rows, logits)
        except Exception as exc:  # a bug: the lane's batch may be inconsistent, so its rows fail
            self._fail_all(lane, exc)

    def _step(self) -> None:
        """One decoding step of the short lane's rows, and of the long lane's when it is their
        tick (every ``long_step_every`` ticks while short rows run, else every tick). ``steps``
        counts the ticks that stepped a lane."""
        short, long = self._lanes[False], self._lanes[True]
        if not (short.rows or long.rows):
            return
        self.steps += 1
        if short.rows:
            self._step_lane(short)
        if long.rows and (not short.rows or self.steps % self.long_step_every == 0):
            self._step_lane(long)

    def _step_lane(self, lane: _Lane) -> None:
        """One decoding step of ``lane``'s rows; a failure fails them all (the server goes on)."""
        rows = lane.rows
        try:
            logits = lane.batch.step(torch.tensor([row.last for row in rows]))
            self._advance(lane, rows, logits)
        except Exception as exc:  # a bug: report it to the clients, keep serving
            self._fail_all(lane, exc)

    def _fail_all(self, lane: _Lane, exc: Exception) -> None:
        """Every row of ``lane`` gets a 500 and leaves; the lane starts afresh."""
        rows, lane.rows = lane.rows, []
        lane.batch.keep([])
        log.exception("generation failed for requests %s", ", ".join(row.job.request_id for row in rows))
        for row in rows:
            row.job.emit(Failed(500, f"internal error: {first_line(exc)}", type="server_error"))

    # -- rows -----------------------------------------------------------------------------------
    def _row(self, job: Job, limit: int, prompt_tokens: int, transcript: TranscriptSource | None) -> _Row:
        resolved = self.pipeline.resolve(job.settings)
        warpers = _warpers(resolved, self.pipeline.model.backbone.hf_model.generation_config)
        generator = None
        if warpers is not None and job.settings.seed is not None:
            generator = torch.Generator(device=self.pipeline.device).manual_seed(job.settings.seed)
        weight = float(resolved.ctc_weight or 0.0) if transcript is not None else 0.0
        return _Row(job, int(limit), prompt_tokens, resolved.repetition_processors(), warpers, generator,
                    transcript, weight)

    def _transcript(self, job: Job, prepared: Prepared, row: int) -> TranscriptSource | None:
        """What rescoring the answer of ``job`` (request ``row`` of ``prepared``) reads, for a job
        whose answer is rescored (:meth:`Job.rescored`); ``None`` (nothing kept) for the others."""
        return transcript_source(prepared, row) if job.rescored(self.pipeline) else None

    def _advance(self, lane: _Lane, rows: list[_Row], logits: torch.Tensor) -> None:
        """Give every row of ``rows`` (``lane``'s last ``len(rows)`` rows) its next token from
        ``logits [len(rows), V]``, then let the lane's finished and abandoned rows leave."""
        for row, scores in zip(rows, logits):
            token = self._choose(row, scores)
            if token in self._stop_ids:
                row.stopped = row.done = True
            else:
                self._take(row, token)
        order = lane.rows
        kept = [i for i, row in enumerate(order) if not (row.done or row.job.cancelled.is_set())]
        if len(kept) == len(order):
            return
        lane.rows = [order[i] for i in kept]
        lane.batch.keep(kept)
        self._finish_rows([row for row in order if row.done and not row.job.cancelled.is_set()])

    def _choose(self, row: _Row, scores: torch.Tensor) -> int:
        """The row's next token from its ``scores [V]``: repetition controls over its answer,
        then greedy or sampling; its logprob entry kept when it asked for logprobs."""
        ids = torch.tensor([row.tokens], dtype=torch.long, device=scores.device).reshape(1, -1)
        scores = row.processors(ids, scores[None])
        if row.warpers is None:
            token = int(scores.argmax(dim=-1))
        else:
            probs = row.warpers(ids, scores).softmax(dim=-1)
            token = int(torch.multinomial(probs, num_samples=1, generator=row.generator))
        if row.job.logprobs is not None:
            row.entries.append(self._entry(scores[0].log_softmax(dim=-1), token, row.job.logprobs))
        return token

    def _entry(self, logprobs: torch.Tensor, token: int, k: int) -> dict[str, Any]:
        """OpenAI's ``logprobs.content`` entry of ``token`` with its ``k`` most likely alternatives."""
        processor = self.pipeline.processor
        values, indices = logprobs.topk(k) if k else (logprobs[:0], logprobs[:0].long())
        return dict(token_entry(processor, token, float(logprobs[token])),
                    top_logprobs=[token_entry(processor, int(i), float(v))
                                  for v, i in zip(values.tolist(), indices.tolist())])

    def _take(self, row: _Row, token: int) -> None:
        """Append a (non-stop) token to the row's answer and stream the new text."""
        row.tokens.append(token)
        text = self.pipeline.processor.decode(row.tokens)
        cut = cut_at_stop(text, row.job.stop)
        row.hit = cut is not None
        row.done = row.hit or len(row.tokens) >= row.limit
        row.sent = send_text(row.job, row.sent, text if cut is None else text[:cut], final=row.hit)

    def _finish_rows(self, rows: list[_Row]) -> None:
        """Answer the rows done in this step, the rescored ones (:attr:`_Row.transcript`) rescored
        first, one batched pass per ``ctc_weight``; a failure fails the rows of its pass only."""
        passes: dict[float, list[_Row]] = {}
        for row in rows:
            passes.setdefault(row.ctc_weight, []).append(row)  # 0: not rescored
        for weight, done in passes.items():
            self._serve([row.job for row in done], partial(self._answer, done, weight))

    def _answer(self, rows: list[_Row], ctc_weight: float) -> None:
        """Rescore the answers of ``rows`` (with ``ctc_weight`` above 0: each is the CTC head's
        reading where that scores higher, :func:`rescore_transcripts`), then send each its answer."""
        if ctc_weight:
            sources = [row.transcript for row in rows if row.transcript is not None]
            readings = rescore_transcripts(self.pipeline.model, sources, [row.tokens for row in rows],
                                           [row.limit for row in rows], ctc_weight)
            for row, reading in zip(rows, readings):
                row.transcript = None
                if reading is not None:  # it ends with the end-of-turn token (or a stop id of its own)
                    (row.tokens,), _ = cut_ids_at_stop(torch.tensor([reading]), self.pipeline.stop_ids)
                    row.stopped, row.hit, row.rescored = True, False, True
        for row in rows:
            self._finish(row)

    def _finish(self, row: _Row) -> None:
        """Send the row's whole answer (cut before its first stop string) and counts; its logprobs
        unless its answer is the CTC head's reading (they describe the generated tokens)."""
        text = self.pipeline.processor.decode(row.tokens)
        cut = cut_at_stop(text, row.job.stop)
        text = text if cut is None else text[:cut]
        row.sent = send_text(row.job, row.sent, text, final=True)
        reason = "stop" if row.stopped or row.hit else "length"
        logprobs = row.job.logprobs is not None and not row.rescored
        entries = row.entries[: len(row.tokens) - int(row.hit)] if logprobs else None
        row.job.emit(Finished(text, reason, row.prompt_tokens, len(row.tokens) + int(row.stopped), entries))


def _cost(job: Job) -> tuple[int, int]:
    """What a request costs to join: its audio samples, then its prompt tokens."""
    return job.request.audio_samples, len(job.request.ids)


def _length_class(job: Job) -> int:
    """Requests whose audio lengths are within a factor of two share a class (prefilled together)."""
    return _cost(job)[0].bit_length()


def _settings_key(job: Job) -> tuple[Any, ...]:
    """Newcomers whose settings differ only in ``max_new_tokens`` (and ``seed``: each row has its
    own generator) are prefilled together (their token limits come from the same settings)."""
    return tuple(value for name, value in sorted(asdict(job.settings).items()) if name not in ("max_new_tokens", "seed"))
