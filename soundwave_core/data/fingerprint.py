"""What a data source's files were when a checkpoint was written, so that resuming on changed
data is noticed (``swv train --accept-data-change`` accepts it).

A manifest is fingerprinted by its bytes: sha256, size and line count, read in fixed-size
chunks (one linear pass, bounded memory, whatever the size of the file or of its lines). A
shard folder by its list of shards: each ``*.tar`` name and size (the shards are not read: a
corpus of shards may be terabytes). A Hugging Face dataset has no files of its own to
fingerprint; its name and split are part of the recipe, whose hash the checkpoint records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from swv.data.rows import resolve_data_path
from swv.data.shards import shard_files
from swv.recipes.schema import DataSection

#: Bytes read at a time while hashing a manifest.
CHUNK_BYTES = 1 << 20


def manifest_fingerprint(path: Path) -> dict[str, Any]:
    """sha256, size and number of lines of the file at ``path``, streamed in chunks."""
    digest = hashlib.sha256()
    size = lines = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":  # a last line without its newline
        lines += 1
    return {"kind": "manifest", "path": str(path), "sha256": digest.hexdigest(), "bytes": size, "lines": lines}


def shards_fingerprint(folder: Path) -> dict[str, Any]:
    """sha256 of the shard list (each shard's name and size), the number of shards and their bytes."""
    digest = hashlib.sha256()
    total = 0
    files = shard_files(folder)
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\t{size}\n".encode())
        total += size
    return {"kind": "shards", "path": str(folder), "sha256": digest.hexdigest(), "bytes": total, "files": len(files)}


def data_fingerprints(section: DataSection, names: list[str]) -> dict[str, dict[str, Any]]:
    """The fingerprint of each file-backed source among ``names`` (see the module docstring)."""
    found = {}
    for name in dict.fromkeys(names):
        spec = section.datasets[name]
        if spec.manifest is not None:
            found[name] = manifest_fingerprint(resolve_data_path(spec.manifest))
        elif spec.shards is not None:
            found[name] = shards_fingerprint(resolve_data_path(spec.shards))
    return found


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How a source's files changed between two fingerprints, in a few words."""
    if old.get("kind") != new.get("kind"):
        return f"a {old.get('kind')} then, a {new.get('kind')} now"
    for key, unit in (("lines", "lines"), ("files", "shards"), ("bytes", "bytes")):
        if key in old and old[key] != new.get(key):
            return f"{old[key]} {unit} -> {new.get(key)} {unit}"
    return "same size, different content" if new["kind"] == "manifest" else "same shards, different sizes"


def data_changes(recorded: dict[str, Any], current: dict[str, dict[str, Any]]) -> list[str]:
    """One description per source whose fingerprint differs from the ``recorded`` one
    (``data.datasets.<name>.<kind>: <path> (<change>)``). Sources a checkpoint did not record
    (written before swv fingerprinted data) are not compared."""
    changes = []
    for name, new in current.items():
        old = recorded.get(name)
        if not isinstance(old, dict) or old.get("sha256") == new["sha256"]:
            continue
        field = "shards" if new["kind"] == "shards" else "manifest"
        changes.append(f"data.datasets.{name}.{field}: {new['path']} ({describe_change(old, new)})")
    return changes
