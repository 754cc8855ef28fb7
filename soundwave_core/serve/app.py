"""The FastAPI application behind ``swv serve``.

Routes: ``POST /v1/chat/completions`` (OpenAI-compatible; ``stream: true`` answers with
server-sent events), ``GET /v1/models`` and ``/v1/models/{id}``, ``GET /health``, and the web
page at ``/``. Every error, including malformed JSON and unknown routes, is an OpenAI-style
``{"error": {...}}`` body with a 4xx status; a bug inside generation answers 500 for the
requests concerned and the server goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from swv.core.errors import InputError, SwvError, UsageError
from swv.infer.pipeline import GenerationSettings, Pipeline
from swv.serve.batcher import Batcher, Delta, Failed, Finished, Job, Started
from swv.serve.openai_api import (
    ChatCompletionParams,
    CompletionIds,
    RequestError,
    error_body,
    input_error,
    parse_params,
    sse,
)

log = logging.getLogger("swv.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Server limits. ``max_context`` bounds prompt tokens (text + audio) + ``max_tokens``;
    ``max_audio_seconds`` bounds every clip; ``max_body_bytes`` the request body.
    ``generation``: the decoding controls of every request (length bound, repetition controls;
    ``None`` fields take the model's defaults)."""

    model_id: str
    max_context: int
    max_batch: int = 8
    batch_window_seconds: float = 0.01
    max_audio_seconds: float = 60.0
    default_max_tokens: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_window_seconds < 0:
            raise UsageError(f"batch window must be >= 0, got {self.batch_window_seconds}")
        if self.max_context < 2:
            raise UsageError(f"max_context must be >= 2, got {self.max_context}")


def model_context_length(pipeline: Pipeline) -> int | None:
    """The backbone config's ``max_position_embeddings``, if it declares one."""
    value = pipeline.model.backbone.hf_model.config.to_dict().get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _failed(event: Failed) -> RequestError:
    return RequestError(event.status, event.message, type=event.type, code=event.code, param=event.param)


def create_app(pipeline: Pipeline, settings: ServeSettings) -> FastAPI:
    """An app serving ``pipeline``; its batcher thread runs while the app is up."""
    batcher = Batcher(pipeline, max_batch=settings.max_batch, window_seconds=settings.batch_window_seconds,
                      max_context=settings.max_context)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="swv serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.settings = settings
    page = (files("swv.serve") / "static" / "index.html").read_text(encoding="utf-8")
    created = int(time.time())
    model_card = {"id": settings.model_id, "object": "model", "created": created, "owned_by": "swv"}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(exc.errors()[:1])), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_id, "pending": batcher.pending,
                "batches_served": batcher.batches_served}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}", response_model=None)
    async def model(model_id: str) -> JSONResponse:
        if model_id != settings.model_id:
            return _error(_unknown_model(model_id))
        return JSONResponse(model_card)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            job, params, ids, first = await _start(request)
        except RequestError as exc:
            return _error(exc)
        if params.stream:
            return StreamingResponse(_stream(job, ids, first, params.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            finished = await _finish(job)
        except RequestError as exc:
            return _error(exc)
        finally:
            job.cancelled.set()
        return JSONResponse(ids.completion(finished.text, finished.finish_reason, finished.prompt_tokens,
                                           finished.completion_tokens))

    async def _start(request: Request) -> tuple[Job, ChatCompletionParams, CompletionIds, Started]:
        """Check the request, decode its audio, queue it and wait until generation starts."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            raise RequestError(413, f"the request body exceeds {settings.max_body_bytes} bytes")
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise RequestError(413, f"the request body exceeds {settings.max_body_bytes} bytes")
        params = parse_params(body)
        if params.model != settings.model_id:
            raise _unknown_model(params.model)
        try:
            generation = params.settings(settings.default_max_tokens, settings.generation)
            chat_request = await run_in_threadpool(
                pipeline.chat_request, params.messages, max_duration=settings.max_audio_seconds, local_audio=False
            )
        except InputError as exc:
            raise input_error(exc) from None
        except SwvError as exc:
            raise RequestError(400, " ".join(str(exc).split())) from None
        job = Job(chat_request, generation, asyncio.get_running_loop())
        batcher.submit(job)
        try:
            first = await job.next_event()
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        if isinstance(first, Failed):
            raise _failed(first)
        assert isinstance(first, Started)
        return job, params, CompletionIds(settings.model_id), first

    return app


def _unknown_model(name: str) -> RequestError:
    return RequestError(404, f"the model {name!r} does not exist (GET /v1/models lists it)",
                        code="model_not_found", param="model")


async def _finish(job: Job) -> Finished:
    while True:
        event = await job.next_event()
        if isinstance(event, Finished):
            return event
        if isinstance(event, Failed):
            raise _failed(event)


async def _stream(job: Job, ids: CompletionIds, started: Started, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, usage (if asked), [DONE]."""
    try:
        yield sse(ids.chunk({"role": "assistant", "content": ""}))
        while True:
            event = await job.next_event()
            if isinstance(event, Delta):
                yield sse(ids.chunk({"content": event.text}))
            elif isinstance(event, Finished):
                yield sse(ids.chunk({}, event.finish_reason))
                if include_usage:
                    yield sse(ids.usage_chunk(event.prompt_tokens, event.completion_tokens))
                break
            elif isinstance(event, Failed):
                yield sse(error_body(event.message, event.type, event.param, event.code))
                break
        yield sse("[DONE]")
    finally:
        job.cancelled.set()
