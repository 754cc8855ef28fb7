"""The FastAPI application behind ``swv serve``.

Routes (one module per group in :mod:`swv.serve.routes`): ``POST /v1/chat/completions``
(OpenAI-compatible; ``stream: true`` answers with server-sent events), ``POST
/v1/audio/transcriptions`` and ``/v1/audio/translations`` (OpenAI's audio API, multipart forms),
``GET /v1/models`` and ``/v1/models/{id}``, ``GET /health``, ``GET /metrics`` (Prometheus), and
the web page at ``/``. Around them: the access controls of :mod:`swv.serve.security`, the late
answers to clients whose requests are refused too often (:mod:`swv.serve.throttle`) and the
request ids, metrics and drain of :mod:`swv.serve.ops`. Every error, including malformed JSON and
unknown routes, is an OpenAI-style ``{"error": {...}}`` body with a 4xx status (but for a Host
outside the allow-list: starlette's plain-text 400); a bug inside generation answers 500 for the
requests concerned and the server goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from swv.infer.pipeline import Pipeline
from swv.serve import limits
from swv.serve.batcher import Batcher
from swv.serve.openai_api import RequestError, error_body
from swv.serve.ops import REQUEST_ID, Operations
from swv.serve.routes import audio, chat, metrics, models, page
from swv.serve.routes.deps import attach
from swv.serve.scheduler import Scheduler
from swv.serve.security import add_access_controls
from swv.serve.settings import ServeSettings
from swv.serve.throttle import RefusalThrottle

__all__ = ["create_app"]

log = logging.getLogger("swv.serve")


def create_app(pipeline: Pipeline, settings: ServeSettings) -> FastAPI:
    """An app serving ``pipeline``; its worker thread (a :class:`Scheduler`, or with
    ``scheduling="window"`` a :class:`Batcher`) runs while the app is up. A ``ctc_weight`` (the
    server's, else the model's) above 0 for a model without a CTC head is a :class:`UsageError`."""
    pipeline.check_rescoring(settings.generation)
    shared = {"max_batch": settings.max_batch, "window_seconds": settings.batch_window_seconds,
              "max_context": settings.max_context}
    batcher = (Scheduler(pipeline, **shared, prefill_audio_seconds=settings.prefill_audio_seconds,
                         prefill_text_tokens=settings.prefill_text_tokens, long_audio_seconds=settings.long_audio_seconds,
                         long_text_tokens=settings.long_text_tokens, max_long_rows=settings.max_long_rows,
                         prefill_chunk_tokens=settings.prefill_chunk_tokens, long_encode_nice=settings.long_encode_nice,
                         long_step_every=settings.long_step_every)
               if settings.scheduling == limits.CONTINUOUS else Batcher(pipeline, **shared))
    app = FastAPI(title="swv serve", lifespan=_lifespan, docs_url=None, redoc_url=None)
    attach(app, pipeline, settings, batcher)
    add_access_controls(app, settings, form_paths=audio.FORM_PATHS)
    app.add_middleware(RefusalThrottle, per_second=settings.refusals_per_second, burst=settings.refusal_burst,
                       max_delay=settings.refusal_delay_max)
    app.add_middleware(Operations, metrics=app.state.metrics, drain=app.state.drain)
    app.add_exception_handler(RequestError, _refused)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)
    for routes in (page, models, chat, audio, metrics):
        app.include_router(routes.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The batcher's worker thread runs while the app is up."""
    batcher = app.state.batcher
    batcher.start()
    yield
    await run_in_threadpool(batcher.close)


async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(str(exc.errors()[:1])), status_code=400)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in request %s", REQUEST_ID.get())
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)
