"""``GET /v1/models``, ``GET /v1/models/{id}`` (the one served model) and ``GET /health``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from swv.serve.openai_api import unknown_model
from swv.serve.routes.deps import BatcherDep, ModelCardDep, SettingsDep

router = APIRouter()


@router.get("/health")
async def health(settings: SettingsDep, batcher: BatcherDep) -> dict:
    return {"status": "ok", "model": settings.model_id, "pending": batcher.pending,
            "batches_served": batcher.batches_served}


@router.get("/v1/models")
async def models(card: ModelCardDep) -> dict:
    return {"object": "list", "data": [card]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, card: ModelCardDep) -> dict[str, Any]:
    if model_id != card["id"]:
        raise unknown_model(model_id)
    return card
