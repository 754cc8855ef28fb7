"""``GET /metrics``: the app's Prometheus metrics (:mod:`swv.serve.metrics`); 501 without
prometheus_client."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from swv.serve.metrics import MISSING
from swv.serve.routes.deps import MetricsDep

router = APIRouter()


@router.get("/metrics")
async def metrics(collected: MetricsDep) -> Response:
    if not collected.available:
        return PlainTextResponse(MISSING, status_code=501)
    body, content_type = collected.exposition()
    return Response(body, media_type=content_type)
