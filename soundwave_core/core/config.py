"""Shared pydantic base for component configs, and the name of a model directory's config file
(kept free of torch imports)."""

from __future__ import annotations

from contextvars import ContextVar

from pydantic import BaseModel, ConfigDict

#: The file that makes a directory an swv model (written by ``SpeechLM.save_pretrained``).
CONFIG_NAME = "swv_config.json"
#: The component being built (``"adapter 'alignment'"``), set by ``Registry.build`` for error messages.
BUILDING: ContextVar[str | None] = ContextVar("swv_building", default=None)


class ComponentConfig(BaseModel):
    """Base class of every component's config: unknown fields are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
