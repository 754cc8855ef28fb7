"""Local directories or Hugging Face Hub ids, resolved to a local directory.

A source that is an existing local directory is used as is (the Hub is never contacted). A
source that looks like a Hub id (``name`` or ``org/name``) is resolved by huggingface_hub's own
``snapshot_download`` at an optional ``revision`` (branch, tag or commit): it downloads what is
missing into the Hugging Face cache (``HF_HUB_CACHE``), or, offline (``HF_HUB_OFFLINE=1``),
finds the snapshot already there through ``refs/<revision>``. The commit of the snapshot used is
reported, so that a caller can record it (an export pins its components' revisions with it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from swv.core.errors import InputError, UsageError, first_line

#: What a Hub repository id looks like (``name`` or ``org/name``).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
#: A full commit hash, the name of a snapshot directory in the Hugging Face cache.
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Resolved:
    """A local directory; ``repo_id`` and ``commit`` are set when it is a Hub snapshot."""

    path: Path
    repo_id: str | None = None
    commit: str | None = None


def is_hub_id(source: str) -> bool:
    """True when ``source`` is not an existing local path and has the form of a Hub id."""
    if source.startswith((".", "/", "~")) or ".." in source or HUB_ID.match(source) is None:
        return False
    try:
        return _existing(source, "source") is None
    except InputError:  # no local path can be named so
        return True


def _existing(source: str, field: str) -> Path | None:
    """``source`` as a local path if something exists there, else None; a string no path can be
    (longer than the file system allows, an unknown ``~user``) is a one-line error naming ``field``."""
    try:
        local = Path(source).expanduser()
        return local if local.exists() else None
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{field}: {source[:80]!r} cannot name a file or directory ({first_line(exc)})") from None


def resolve_dir(
    source: str,
    field: str,
    *,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    what: str = "checkpoint directory",
) -> Resolved:
    """``source`` (a local directory or a Hub id) -> a local directory.

    ``revision`` applies to Hub ids only (a local directory with a revision is a usage error);
    ``allow_patterns`` limits what ``snapshot_download`` fetches. ``field`` names the argument
    or config field in error messages, ``what`` the expected kind of directory.
    """
    local = _existing(source, field)
    if local is not None and local.is_dir():
        if revision is not None:
            raise UsageError(f"{field}: revision {revision!r} applies to Hub ids only, but {source} is a local directory")
        return Resolved(local.resolve())
    if local is not None:
        raise InputError(f"{field}: {source} is a file; expected a {what} or Hugging Face Hub id")
    if not is_hub_id(source):
        raise InputError(f"{field}: {what} {source} does not exist")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id=source, revision=revision, allow_patterns=allow_patterns))
    except Exception as error:  # hub errors: offline and not cached, not found, gated, bad revision...
        at = f" at revision {revision}" if revision is not None else ""
        raise InputError(
            f"{field}: {source} is not a local directory and could not be downloaded from the Hugging Face Hub{at} "
            f"({first_line(error)})"
        ) from error
    commit = snapshot.name if snapshot.parent.name == "snapshots" and COMMIT.match(snapshot.name) else None
    return Resolved(snapshot, repo_id=source, commit=commit)


def resolve_model(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A whole swv model, given as a local directory or a Hub id (at ``revision``) -> the local
    directory to load it from (:func:`resolve_dir`)."""
    text = os.fspath(source)
    local = _existing(text, "model")
    if not is_hub_id(text) and (local is None or not local.is_dir()):
        raise InputError(f"{text}: model directory not found" if local is None else f"{text}: not a directory")
    return resolve_dir(text, "model", revision=revision, what="swv model directory").path


def hub_weight_bytes(repo_id: str, revision: str | None, patterns: list[str]) -> int | None:
    """Bytes of the files of Hub repository ``repo_id`` at ``revision`` that match ``patterns``
    (its weight files), without downloading them: as listed by huggingface_hub's
    ``snapshot_download(dry_run=True)`` online, or as found in the snapshot of the Hugging Face
    cache that :func:`resolve_dir` then uses, offline (``HF_HUB_OFFLINE=1``, or no connection);
    ``None`` when neither is to be had (the component's own resolution then says why)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import DryRunError

    if not constants.HF_HUB_OFFLINE:
        try:
            files = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns, dry_run=True)
            return sum(int(info.file_size) for info in files)
        except DryRunError:  # no connection: the cache, as snapshot_download itself falls back to
            pass
        except Exception:  # not found, gated, a bad revision...: the component's resolution reports it
            return None
    try:
        snapshot = Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns,
                                          local_files_only=True))
    except Exception:  # not in the cache
        return None
    return sum(file.stat().st_size for file in snapshot.rglob("*")
               if file.is_file() and any(fnmatch(str(file.relative_to(snapshot)), p) for p in patterns))
