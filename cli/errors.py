"""Turning expected errors into one line on stderr and an exit code."""

from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import Any

from swv.core.errors import InputError, SwvError, first_line, unpickling_detail


def debug_enabled() -> bool:
    return os.environ.get("SWV_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    from swv.registry.plugins import PluginWarning

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


#: Errors of the environment rather than of swv (permissions, full or read-only disks, a file
#: where a directory is expected...): reported as one line naming the path.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR, errno.EISDIR,
     errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.EIO}
)


def environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an :class:`OSError` about a named path that the user can fix."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS and exc.filename is not None


def report_os_error(exc: OSError) -> int:
    """Print an environment error as ``error: <path>: <reason>``; exit code 1."""
    target = f" -> {exc.filename2}" if exc.filename2 else ""
    print(f"error: {exc.filename}{target}: {exc.strerror or exc}", file=sys.stderr)
    return 1


def report(exc: SwvError) -> int:
    """Print ``exc`` as one line and return its exit code."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {text}", file=sys.stderr)
    return exc.exit_code


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (a short chain)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def refusal(exc: BaseException) -> SwvError | None:
    """A one-line error for a refusal that reached the CLI from a library without a swv message:
    a weights-only unpickling refusal (a pickle that would import code) or the chat template
    sandbox's refusal. None for anything else (a bug keeps its traceback)."""
    import pickle

    jinja = sys.modules.get("jinja2.exceptions")
    for cause in _causes(exc):
        if isinstance(cause, pickle.UnpicklingError):
            return InputError(unpickling_detail(cause))
        if jinja is not None and isinstance(cause, jinja.SecurityError):
            return InputError(f"chat template: refused by the template sandbox ({first_line(cause)})")
    return None
