"""The objects every route shares, kept on ``app.state`` by :func:`attach` and handed to the
handlers as FastAPI dependencies (``BatcherDep``, ``PipelineDep``, ``SettingsDep``,
``ModelCardDep``, ``LimiterDep``: the worker threads that parse, decode and tokenize requests,
granted cheapest-first (:class:`~swv.serve.priority.PriorityLimiter`);
``BodyBudgetDep``: the request bodies held in memory at once;
``MetricsDep``: the app's Prometheus metrics). ``app.state.drain`` is the server's drain state."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from swv.infer.pipeline import Pipeline
from swv.serve.batcher import Batcher
from swv.serve.body import BodyBudget
from swv.serve.metrics import Metrics
from swv.serve.openai_api import model_card
from swv.serve.ops import Drain
from swv.serve.priority import PriorityLimiter
from swv.serve.settings import ServeSettings


def attach(app: FastAPI, pipeline: Pipeline, settings: ServeSettings, batcher: Batcher) -> None:
    """Keep the shared objects on ``app.state`` (the model card is dated now)."""
    app.state.pipeline = pipeline
    app.state.settings = settings
    app.state.batcher = batcher
    app.state.model_card = model_card(settings.model_id, int(time.time()))
    app.state.limiter = PriorityLimiter(settings.work_threads)
    app.state.body_budget = BodyBudget(settings.body_buffer_bytes, settings.body_buffer_reserve)
    app.state.metrics = Metrics(lambda: batcher.pending)
    app.state.drain = Drain()


def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_batcher(request: Request) -> Batcher:
    return request.app.state.batcher


def get_model_card(request: Request) -> dict[str, Any]:
    return request.app.state.model_card


def get_limiter(request: Request) -> PriorityLimiter:
    return request.app.state.limiter


def get_body_budget(request: Request) -> BodyBudget:
    return request.app.state.body_budget


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
ModelCardDep = Annotated[dict[str, Any], Depends(get_model_card)]
LimiterDep = Annotated[PriorityLimiter, Depends(get_limiter)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BodyBudgetDep = Annotated[BodyBudget, Depends(get_body_budget)]
