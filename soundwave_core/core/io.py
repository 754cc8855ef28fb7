"""Atomic file and directory writes: nothing half-written ever appears under a final name."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, SwvError, first_line

#: What a non-regular file is called in messages, by its ``stat`` type test.
_SPECIAL_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"))
#: Bytes read at a time from a stream whose size is not known in advance.
_CHUNK = 1 << 20


def _over_limit(name: str, what: str, size: int, max_bytes: int, flag: str | None) -> InputError:
    raise_it = f"; raise {flag}" if flag else ""
    return InputError(f"{name}: {what} is over the limit of {max_bytes:,} bytes ({size:,}{raise_it})")


def check_stat(name: str, st: os.stat_result, what: str, max_bytes: int | None = None,
               flag: str | None = None) -> None:
    """Refuse (one-line :class:`InputError`) a ``stat`` result that is not a regular file
    (directories, FIFOs, devices, sockets) or is larger than ``max_bytes``; ``flag`` names the
    option that raises the limit."""
    for test, kind in _SPECIAL_KINDS:
        if test(st.st_mode):
            raise InputError(f"{name}: {what} is {kind}, expected a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise _over_limit(name, what, st.st_size, max_bytes, flag)


def regular_file(path: str | os.PathLike[str], what: str, max_bytes: int | None = None,
                 flag: str | None = None) -> os.stat_result:
    """``os.stat(path)`` after checking that ``path`` (symlinks followed) is a regular file of
    at most ``max_bytes``: for files another library opens by name. Never blocks (a FIFO is
    not opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    check_stat(str(path), st, what, max_bytes, flag)
    return st


def open_regular(path: str | os.PathLike[str], what: str, max_bytes: int | None = None,
                 flag: str | None = None) -> Any:
    """Open ``path`` for binary reading, refusing anything but a regular file of at most
    ``max_bytes`` (checked with ``fstat`` on the open descriptor; opening never blocks on a
    FIFO). One-line :class:`InputError` naming ``path`` and ``what`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        check_stat(str(path), os.fstat(fd), what, max_bytes, flag)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_capped(stream: Any, name: str, what: str, max_bytes: int, flag: str | None = None) -> bytes:
    """All of binary ``stream`` (a pipe, stdin...), refused once it passes ``max_bytes``."""
    chunks, total = [], 0
    while True:
        chunk = stream.read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise _over_limit(name, what, total, max_bytes, flag)


def read_regular(path: str | os.PathLike[str], what: str, max_bytes: int, flag: str | None = None) -> bytes:
    """The bytes of regular file ``path`` (see :func:`open_regular`), at most ``max_bytes``
    even if the file grows while it is read."""
    with open_regular(path, what, max_bytes, flag) as fh:
        return read_capped(fh, str(path), what, max_bytes, flag)


def read_stdin(stream: Any, what: str, max_bytes: int, flag: str | None = None) -> bytes:
    """Standard input (binary ``stream``): a directory or a device (``< /dev/zero``, a terminal)
    is refused at once; a regular file by its size; a pipe or socket once it passes ``max_bytes``."""
    try:
        st: os.stat_result | None = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # an in-memory stream has no descriptor
        st = None
    if st is not None and not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        check_stat("<stdin>", st, what, max_bytes, flag)
    return read_capped(stream, "<stdin>", what, max_bytes, flag)

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


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Each tensor of ``files`` -> (its shape, its file), read from the headers only (no tensor
    data is read); an :class:`~swv.core.errors.InputError` naming an unreadable file."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = (tuple(handle.get_slice(key).get_shape()), file)
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{file}: not a valid safetensors file, truncated or corrupt ({first_line(exc)})") from None
    return shapes


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
    with atomic_file(path, "wb") as fh:
        fh.write(data)
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
