"""One policy for audio files that a corpus, a transcript table or a manifest names but that do not
exist (``--on-missing`` of ``swv data`` commands, ``swv infer`` and ``swv eval``).

``fail`` (the default everywhere): the command stops before writing anything, with one line
giving the number of missing clips and the first of them. A missing clip means an incomplete
download or a moved folder: a manifest built without it trains on less than its corpus, and a
benchmark scored without it is not comparable with the paper's numbers, so neither happens
unless asked for. ``skip``: the clips are left out and counted: ``swv data manifest`` lists them
in its summary ("audio file not found"); every command that checks a manifest's audio first
(``swv infer``, ``swv eval``, ``swv data filter|splice|sound-insert|shard``) prints one line with
their number, worded by :meth:`MissingAudio.summary`; ``swv infer`` and ``swv eval`` count them
as failed items (in ``eval``'s score table and ``report.json``: ``num_failed``, ``failed_ids``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, UsageError

#: The ``--on-missing`` choices.
ON_MISSING_CHOICES = ("fail", "skip")
#: The one default of every command that takes ``--on-missing``.
DEFAULT_ON_MISSING = "fail"


def audio_exists(path: Path) -> bool:
    """Whether ``path`` is a regular file; a name no file can have (too long, a NUL) is not one."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def path_exists(path: Path) -> bool:
    """Whether anything (a file, a device, a pipe) is at ``path``; a name no file can have is not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


@dataclass
class MissingAudio:
    """The missing clips found while building or checking one manifest, and what to do about them."""

    policy: str = DEFAULT_ON_MISSING
    #: ``"where: path"`` of each missing clip, in the order found
    found: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in ON_MISSING_CHOICES:
            raise UsageError(f"--on-missing: expected one of {', '.join(ON_MISSING_CHOICES)}, got {self.policy!r}")

    @property
    def skip(self) -> bool:
        return self.policy == "skip"

    def check(self, audio: Path, where: str, exists: Callable[[Path], bool] = audio_exists) -> bool:
        """Whether ``audio`` exists (``exists``: by default, as a regular file); a missing one is
        counted (``where`` says who names it)."""
        if exists(audio):
            return True
        self.add(f"{where}: {audio}")
        return False

    def add(self, description: str) -> None:
        """Count one missing clip (``description``: who names it and what)."""
        self.found.append(description)

    def enforce(self, total: int, what: str) -> None:
        """Under ``fail``, one :class:`InputError` when any clip of the ``total`` ``what`` was missing."""
        if self.found and not self.skip:
            raise InputError(
                f"{len(self.found)} of {total} {what} name an audio file that does not exist (first: {self.found[0]}); "
                "fix the paths, or pass --on-missing skip to leave them out (they are counted)"
            )

    def summary(self, what: str) -> str:
        """One line counting the skipped clips (empty when none was missing)."""
        if not self.found:
            return ""
        return f"{len(self.found)} {what} without an audio file skipped (--on-missing skip; first: {self.found[0]})"


def check_manifest_audio(manifest: str | os.PathLike[str], policy: str = DEFAULT_ON_MISSING,
                         exists: Callable[[Path], bool] = audio_exists) -> MissingAudio:
    """Check that every record of ``manifest`` with an ``audio`` path names an existing file
    (``exists``: by default a regular file; :func:`path_exists` for anything at the path);
    under ``fail`` a missing one is an :class:`InputError` (see :class:`MissingAudio`)."""
    from swv.data.manifest import read_manifest, resolve_audio

    missing = MissingAudio(policy)
    total = 0
    for line_no, record in read_manifest(manifest, required=()):
        total += 1
        if _has_audio_path(record):
            audio = Path(os.path.normpath(resolve_audio(manifest, record)))
            missing.check(audio, f"{Path(manifest).name}:{line_no}", exists)
    missing.enforce(total, "record(s)")
    return missing


def _has_audio_path(record: dict[str, Any]) -> bool:
    audio = record.get("audio")
    return isinstance(audio, str) and bool(audio.strip())

