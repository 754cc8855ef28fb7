"""swv: Soundwave-style speech LLMs with swappable encoders, adapters and backbones.

Heavy objects are imported lazily so that ``import swv`` (and ``swv --help``) stays fast. Importing
swv registers its model and the ``audio-text-to-text`` pipeline task with transformers as soon as
transformers is imported (:mod:`swv.model.hf_auto`).
"""

from __future__ import annotations

from typing import Any

from swv.model.hf_auto import install_hooks
from swv.registry.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "SpeechLM": "swv.model.speechlm",
    "SpeechLMConfig": "swv.model.speechlm",
    "Pipeline": "swv.infer.pipeline",
}

__all__ = ["hookimpl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swv' has no attribute {name!r}")


install_hooks()
