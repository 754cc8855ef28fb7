"""User-facing errors.

Every error a user can cause (bad recipe, missing file, unknown component...) is a
:class:`SwvError`. The CLI prints its message as one line on stderr and exits with
``exit_code``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SwvError(Exception):
    """An expected error with a one-line, actionable message."""

    exit_code = 1


class UsageError(SwvError):
    """Bad arguments, options or configuration (exit code 2)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe file that does not validate."""


class ComponentError(UsageError):
    """An unknown, duplicate or misconfigured component."""


class InputError(SwvError):
    """Unreadable or invalid input data (audio, manifests, checkpoints)."""


class ServiceError(SwvError):
    """A service swv calls over HTTP (an LLM judge) cannot be reached or answers out of form."""


def first_line(error: BaseException) -> str:
    """The first non-blank line of an exception's message (its class name if it has none), for
    quoting a library's error inside a one-line swv message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def unpickling_detail(error: BaseException) -> str:
    """Why a weights-only ``torch.load`` refused a pickle, as one line: torch's own reason (the
    global or opcode it would not accept), without its advice to load the file unsafely."""
    marker = "WeightsUnpickler error:"
    text = str(error).split(marker, 1)[1] if marker in str(error) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    reasons = [line for line in lines if not line.startswith(boilerplate)]
    return f"unpickling refused: {reasons[0] if reasons else first_line(error)}"
