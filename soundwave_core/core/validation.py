"""Turning pydantic validation errors into one line that names the field: shared by recipes,
model directories and component configs."""

from __future__ import annotations

from typing import Any


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """``('stages', 1, 'optimizer', 'lr')`` -> ``stages[1].optimizer.lr``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe_error(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg
