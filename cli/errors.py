"""Turning expected errors into one line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from swv.errors import SwvError


def debug_enabled() -> bool:
    return os.environ.get("SWV_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    from swv.pluginmanager import PluginWarning

    if issubclass(category, PluginWarning) or not debug_enabled():
        print(f"warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), file=sys.stderr, end="")


def install_warning_format() -> None:
    """One-line warnings; library deprecation notices only with SWV_DEBUG=1."""
    warnings.showwarning = _show_warning
    if not debug_enabled():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def report(exc: SwvError) -> int:
    """Print ``exc`` as one line and return its exit code."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {text}", file=sys.stderr)
    return exc.exit_code
