"""One ``swv train`` per output directory: an exclusive lock on ``<output_dir>/.swv-train.lock``.

The lock is an ``flock`` on the file (released by the kernel when the holder exits, even when
killed) and the file records the holder's pid and host, so that a refused run can say which
process holds the directory. A lock file left by a process that is gone (its pid is dead on
this host) is stale: the next run takes it over and says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from swv.core.errors import UsageError

LOCK_NAME = ".swv-train.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class OutputDirLock:
    """Hold the lock of ``output_dir`` between :meth:`acquire` and :meth:`release` (or as a
    context manager)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.fd: int | None = None
        #: the pid a stale lock file named, when this run took it over
        self.took_over: int | None = None

    def _holder(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.path.read_text() or "{}"))
        except (OSError, ValueError, TypeError):
            return {}

    def acquire(self) -> OutputDirLock:
        """Take the lock or raise :class:`UsageError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._holder()
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
            raise UsageError(
                f"{self.path.parent}: output_dir is in use by another swv train ({who}, lock file {self.path}); "
                "wait for it to finish or use another output_dir"
            ) from None
        holder = self._holder()
        pid = holder.get("pid")
        if isinstance(pid, int) and holder.get("host") == socket.gethostname() and pid != os.getpid():
            if _pid_alive(pid):
                # the file names a live process that does not hold the flock (a filesystem whose
                # locks do not reach it, e.g. some network mounts): refuse rather than share
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise UsageError(
                    f"{self.path.parent}: output_dir is in use by another swv train (pid {pid}, lock file {self.path}); "
                    "wait for it to finish or use another output_dir"
                )
            self.took_over = pid
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and release the lock (the file stays: removing it could let two
        runs lock two different files)."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
