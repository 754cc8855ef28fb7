"""Option types shared by several commands."""

from __future__ import annotations

from enum import Enum


class WeightDtype(str, Enum):
    """dtype of written weights."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
