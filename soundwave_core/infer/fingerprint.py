"""The fingerprint of a batch-inference run (``swv infer --manifest``, ``swv eval``): what decides
its answers, recorded in every prediction line and in the evaluation report, so that a resumed
run reuses only predictions made the same way (see :func:`swv.infer.batch.run_manifest`).

A fingerprint has four parts, each a short digest (the first 16 hex digits of a SHA-256):

``model``
    the model's identity (:func:`model_identity`). A Hugging Face Hub snapshot (the directory
    ``.../models--org--name/snapshots/<commit>`` that :func:`swv.core.hub.resolve_model` gives
    for a Hub id) is its repository and commit: the Hub addresses files by content, so the
    commit names every byte, and nothing is read. A local model directory is the relative path,
    size and SHA-256 of every file in it (names starting with ``.``, such as ``.cache/``, left
    out). Reading the whole content costs one pass over the weights (about a second per GB,
    less than loading them), and nothing cheaper is robust: two models trained from the same
    config have the same file names, sizes and safetensors headers; only their bytes differ.
    A component the export references (a backbone by Hub id at its pinned commit, or by a path
    outside the directory) enters through ``swv_config.json``, which names it; the files behind
    an outside path are not read.
``generation``
    the decoding settings resolved over the model's saved defaults, and the system prompt.
``prompts``
    each item's id, instruction and task, in manifest order.
``manifest``
    the SHA-256 of the manifest file.

Batch size, device, dtype and the audio limits are not part of it: they choose how the answers
are computed, not what is asked (a run interrupted on one device may be finished on another).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.hub import COMMIT

__all__ = ["FINGERPRINT_FIELD", "PARTS", "Fingerprint", "model_identity", "run_fingerprint", "sha256_file",
           "shared_fingerprint", "stale_reason"]

#: The field of a prediction line (and of the report) that holds the fingerprint.
FINGERPRINT_FIELD = "fingerprint"
#: The parts of a fingerprint and how messages name them.
PARTS: dict[str, str] = {
    "model": "the model",
    "generation": "the generation settings",
    "prompts": "the prompts",
    "manifest": "the manifest",
}
_DIGITS = 16


@dataclass(frozen=True)
class Fingerprint:
    """A run's fingerprint: ``parts`` (the digest of each of :data:`PARTS`, what every prediction
    line carries) and the model's identity (:func:`model_identity`, for the report)."""

    parts: dict[str, str]
    model: dict[str, Any]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_DIGITS]


def model_identity(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies the model in ``model_dir`` (see the module docstring): ``{"repo_id",
    "revision"}`` for a Hub snapshot, ``{"sha256", "files"}`` (the digest over every file's
    relative path, size and content) for a local directory."""
    directory = Path(model_dir).resolve()
    repo = directory.parent.parent.name
    if directory.parent.name == "snapshots" and COMMIT.match(directory.name) and repo.startswith("models--"):
        return {"repo_id": repo.removeprefix("models--").replace("--", "/"), "revision": directory.name}
    files = sorted(
        path for path in directory.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )
    digest = hashlib.sha256()
    for path in files:
        entry = [path.relative_to(directory).as_posix(), path.stat().st_size, sha256_file(path)]
        digest.update(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
    return {"sha256": digest.hexdigest(), "files": len(files)}


def run_fingerprint(
    model_dir: str | os.PathLike[str], manifest: str | os.PathLike[str],
    prompts: Iterable[tuple[str, str | None, str | None]], settings: Mapping[str, Any], system_prompt: str | None,
) -> Fingerprint:
    """The fingerprint of generating answers with the model in ``model_dir`` (a local directory
    or a resolved Hub snapshot) for the items of ``manifest``: ``prompts`` holds each item's
    ``(id, instruction, task)`` in manifest order, ``settings`` the resolved decoding settings,
    ``system_prompt`` the one used (``None``: none)."""
    identity = model_identity(model_dir)
    parts = {
        "model": _digest(identity),
        "generation": _digest({"settings": dict(settings), "system_prompt": system_prompt}),
        "prompts": _digest([list(entry) for entry in prompts]),
        "manifest": sha256_file(manifest)[:_DIGITS],
    }
    return Fingerprint(parts, identity)


def stale_reason(records: Sequence[Mapping[str, Any]], parts: Mapping[str, str]) -> str | None:
    """Why prediction lines (``records``) cannot be reused by a run whose fingerprint is
    ``parts``: lines without a fingerprint (written by an older swv) or with another one (naming
    what differs); ``None`` when every line has this fingerprint."""
    unmarked = sum(not isinstance(record.get(FINGERPRINT_FIELD), Mapping) for record in records)
    if unmarked:
        return (f"{unmarked} of its {len(records)} line(s) carry no fingerprint (written by an older swv), so the "
                "model and settings that made them are unknown")
    differ = [name for part, name in PARTS.items()
              if any(record[FINGERPRINT_FIELD].get(part) != parts[part] for record in records)]
    if not differ:
        return None
    names = differ[0] if len(differ) == 1 else ", ".join(differ[:-1]) + " and " + differ[-1]
    return f"its predictions were made by another run (what differs: {names})"


def shared_fingerprint(records: Iterable[Mapping[str, Any]]) -> dict[str, str] | None:
    """The fingerprint every one of ``records`` carries, or ``None`` (none, or several)."""
    found = {json.dumps(record.get(FINGERPRINT_FIELD), sort_keys=True) for record in records}
    if len(found) != 1:
        return None
    shared = json.loads(found.pop())
    return shared if isinstance(shared, dict) else None
