"""Streaming one answer: :class:`TextStream` runs the generation in a background thread and
yields the text pieces as transformers' ``TextIteratorStreamer`` decodes them; the token clock
times the first generated token (for :class:`~swv.infer.batching.Stats`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from swv.core.errors import UsageError
from swv.infer.batching import Prepared, Stats
from swv.infer.settings import GenerationSettings
from swv.model.processor import ChatRequest
from swv.model.stopping import cut_at_stop

if TYPE_CHECKING:
    from swv.infer.pipeline import Pipeline

__all__ = ["TextStream", "TokenClock"]


class TokenClock(BaseStreamer):
    """Records when generate() hands over its first new tokens (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_time: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_time = time.perf_counter()

    def end(self) -> None:
        return None


class _TimedTextStreamer(TextIteratorStreamer):
    """``TextIteratorStreamer`` (prompt skipped) that also records the first-token time and drops
    stop tokens, so a stop token that is not a special token never reaches the text."""

    def __init__(self, tokenizer: Any, stop_ids: torch.Tensor) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_ids = stop_ids
        self.clock = TokenClock()

    def put(self, value: torch.Tensor) -> None:
        self.clock.put(value)
        if self.clock.calls == 1:
            super().put(value)  # the (empty) prompt: skipped by skip_prompt
            return
        tokens = value.reshape(-1)
        tokens = tokens[~torch.isin(tokens, self.stop_ids)]
        if tokens.numel():
            super().put(tokens)


class TextStream:
    """Iterate once for the text pieces of one answer; then ``text`` (stripped, equal to what
    :class:`~swv.infer.pipeline.Pipeline` returns for the same greedy request) and ``stats`` are
    set. Leaving the loop early stops the generation."""

    def __init__(self, pipeline: Pipeline, request: ChatRequest, settings: GenerationSettings) -> None:
        self._pipeline = pipeline
        self._request = request
        self._settings = settings
        self._started = False
        self._error: BaseException | None = None
        self._outcome: tuple[Prepared, torch.Tensor, float, float] | None = None
        self.text: str | None = None
        self.stats: Stats | None = None

    def _work(self, streamer: _TimedTextStreamer, stop: threading.Event) -> None:
        pipe = self._pipeline
        try:
            if self._settings.seed is not None:
                torch.manual_seed(self._settings.seed)
            start = time.perf_counter()
            with torch.inference_mode():  # thread-local: entered in this thread
                prepared = pipe.encode_requests([self._request], window_batch_size=1)
                new_tokens = pipe.generate_prepared(prepared, self._settings, streamer, stop)
            self._outcome = (prepared, new_tokens, start, time.perf_counter())
        except BaseException as exc:  # re-raised in the consuming thread
            self._error = exc
            streamer.text_queue.put(streamer.stop_signal)

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise UsageError("a TextStream can be iterated only once")
        self._started = True
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        pipe = self._pipeline
        streamer = _TimedTextStreamer(pipe.tokenizer, pipe.stop_ids)
        stop = threading.Event()
        worker = threading.Thread(target=self._work, args=(streamer, stop), daemon=True)
        worker.start()
        pieces: list[str] = []
        try:
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:
            stop.set()
            worker.join()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        prepared, new_tokens, start, end = self._outcome
        _, generated = cut_at_stop(new_tokens, pipe.stop_ids)
        self.text = "".join(pieces).strip()
        self.stats = prepared.stats(generated, pipe.sample_rate, start, streamer.clock.first_token_time, end)[0]
