"""The floating-point dtypes swv accepts by name (component configs, ``--dtype`` options).

Importing this module does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Every dtype name a config or ``--dtype`` option accepts.
DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: The usual short names, accepted wherever a dtype is named (recipes say ``precision: bf16``).
DTYPE_ALIASES: dict[str, str] = {"fp32": "float32", "f32": "float32", "float": "float32", "fp16": "float16",
                                 "f16": "float16", "half": "float16", "bf16": "bfloat16"}


def canonical_dtype(name: str) -> str:
    """``name`` or its alias (:data:`DTYPE_ALIASES`) as one of :data:`DTYPE_NAMES`; a
    :class:`ValueError` naming the accepted names otherwise."""
    canonical = DTYPE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if canonical not in DTYPE_NAMES:
        accepted = ", ".join((*DTYPE_NAMES, *DTYPE_ALIASES))
        raise ValueError(f"unknown dtype {name!r}, expected one of {accepted}")
    return canonical


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name``, one of :data:`DTYPE_NAMES` or an alias (callers check user input first)."""
    import torch

    return getattr(torch, canonical_dtype(name))
