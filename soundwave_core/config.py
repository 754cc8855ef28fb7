"""Shared pydantic base for component configs (kept free of torch imports)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """Base class of every component's config: unknown fields are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
