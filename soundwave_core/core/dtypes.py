"""The floating-point dtypes swv accepts by name (component configs, ``--dtype`` options).

Importing this module does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Every dtype name a config or ``--dtype`` option accepts.
DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name``, one of :data:`DTYPE_NAMES` (callers check user input first)."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}, expected one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)
