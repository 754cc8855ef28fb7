"""Atomic file and directory writes: nothing half-written ever appears under a final name."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import SwvError, first_line

#: what writers raise when a file cannot be written (disk full, file-size limit, I/O error):
#: ``OSError``; ``RuntimeError`` from ``torch.save``; ``SafetensorError`` (an ``Exception``) from safetensors
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file, or every file under a directory) the permissions a new file gets
    under the umask, keeping execute bits. Some writers (safetensors) create their files 0600."""
    root = Path(path)
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    mask = _umask()
    for file in files:
        mode = file.stat().st_mode & 0o777
        os.chmod(file, (0o666 | (mode & 0o111)) & ~mask)


def inside(root: str | os.PathLike[str], relative: str | os.PathLike[str], what: str) -> Path:
    """``root / relative``, after checking that it lies inside ``root`` (symlinks resolved):
    swv writes and deletes only inside the directories it owns. ``what`` names the setting."""
    from swv.core.errors import UsageError

    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target == base or base not in target.parents:
        raise UsageError(f"{what}: {relative!s} would put files outside {root} (at {target})")
    return Path(root) / relative


def writable_directory(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check that files can be created in it (by creating one:
    permission bits do not stop root, a read-only file system does); a :class:`UsageError`
    naming ``what`` (the setting or option) otherwise."""
    from swv.core.errors import UsageError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what}: {path}: is a file, expected a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{what}: {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Raise :class:`~swv.core.errors.InputError` naming ``path`` unless it is a complete safetensors
    file (header readable, data covering the file exactly). Reads the header only."""
    from safetensors import SafetensorError, safe_open

    from swv.core.errors import InputError, first_line

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a valid safetensors file, truncated or corrupt ({first_line(exc)})") from None


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    """A temporary file next to ``path`` with the permissions a new file would get."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{suffix}.tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return Path(name)


def _safetensors_error() -> type[BaseException]:
    from safetensors import SafetensorError

    return SafetensorError


def write_errors() -> tuple[type[BaseException], ...]:
    """The exception types a failed write of a file raises (see :data:`WRITE_ERRORS`)."""
    return (*WRITE_ERRORS, _safetensors_error())


def write_failure(path: str | os.PathLike[str], what: str, error: BaseException) -> SwvError:
    """The one-line error for ``what`` that could not be written at ``path``."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
    return SwvError(
        f"{path}: could not write {what} ({reason}); nothing half-written was kept: free disk space "
        "(or raise the file-size limit) and run the same command again to continue"
    )


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``path`` (itself included), deepest first."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(root)


def append_durably(fd: int, data: bytes, path: str | os.PathLike[str], what: str) -> None:
    """Append ``data`` to the file open as ``fd`` and fsync it. If the write fails (disk full,
    file-size limit) the file is cut back to its previous length, so no torn record remains,
    and a one-line :class:`SwvError` naming ``path`` is raised."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise write_failure(path, what, exc) from exc


def leftover_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files and directories that :func:`atomic_directory` and the atomic file
    writers create for ``path`` (``.<name>.<random>.tmp`` / ``.old``) left beside it by a kill."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.(tmp|old)$")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file next to ``path``, fsync it and rename it into place."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file for writing; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``path`` (an old one is removed
    only after the new one is in place), on error it is deleted and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    follow_umask(tmp)
    old: Path | None = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_directory(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
