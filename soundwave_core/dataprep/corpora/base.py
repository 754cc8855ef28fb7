"""What a corpus layout is (a registered ``corpus`` component) and the table readers layouts share."""

from __future__ import annotations

import csv
import json
import math
from abc import ABCMeta, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from swv.core.config import ComponentConfig
from swv.core.errors import InputError
from swv.dataprep.manifest import csv_rows, text_lines

__all__ = ["CorpusEntry", "CorpusLayout", "CorpusOptions", "corpus_file", "csv_rows", "finite_duration",
           "json_text", "read_json_list", "read_tsv", "require_columns", "split_dir", "text_lines"]

#: One corpus entry: where it comes from (for messages), its audio file and its manifest fields.
CorpusEntry = tuple[str, Path, dict[str, Any]]


class CorpusOptions(ComponentConfig):
    """What a layout reader may need besides the corpus root (``swv data manifest --split
    --language --clips``): the config model of every corpus layout (a plugin's layout may
    register a subclass with more fields, all with defaults)."""

    model_config = ConfigDict(frozen=True)

    split: str | None = None
    language: str | None = None
    clips: Path | None = None


class CorpusLayout(metaclass=ABCMeta):
    """One corpus as it is distributed (``swv data manifest --format NAME``).

    Constructed as ``cls(options)`` by the registry; :meth:`entries` walks the corpus at
    ``source`` and yields ``(where, audio file, fields)``; the audio is checked and the manifest
    written by :func:`swv.dataprep.corpora.build_corpus_manifest`.
    """

    def __init__(self, config: CorpusOptions) -> None:
        self.config = config

    @abstractmethod
    def entries(self, source: Path) -> Iterator[CorpusEntry]:
        """The corpus's entries; one-line :class:`~swv.core.errors.InputError` for a bad layout."""


def read_tsv(path: Path, *, header: bool = True) -> Iterator[tuple[int, dict[str, str] | list[str]]]:
    """Rows of a tab-separated file without quoting (as the corpora write them)."""
    reader = csv.reader(text_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    names: list[str] | None = None
    for row in csv_rows(reader, path):
        if not row or all(not c.strip() for c in row):
            continue
        if header and names is None:
            names = [c.strip() for c in row]
            continue
        if names is None:
            yield reader.line_num, row
            continue
        if len(row) != len(names):
            raise InputError(f"{path}:{reader.line_num}: expected {len(names)} tab-separated columns, got {len(row)}")
        yield reader.line_num, dict(zip(names, row))


def corpus_file(root: Path, folder: Path, name: str, where: str) -> Path:
    """``folder / name`` for a file a corpus table names, refused (one line naming ``where``)
    when it would lie outside ``root`` once ``..`` and symlinks are resolved: a hostile
    utterance id cannot point a manifest at files outside the corpus. A name holding a NUL
    character (no file system allows one) is refused as well."""
    if "\x00" in name:
        raise InputError(f"{where}: {name!r} holds a NUL character; it cannot name a file")
    path = folder / name
    base = root.resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise InputError(f"{where}: {name[:80]!r} cannot name a file ({reason})") from None
    if base not in resolved.parents:
        raise InputError(f"{where}: {name!r} points outside the corpus folder {root}")
    return path


def finite_duration(value: str, where: str) -> float:
    """A ``duration`` column as seconds: a finite number >= 0, else one line naming ``where``."""
    try:
        seconds = float(value)
    except ValueError:
        raise InputError(f"{where}: column 'duration' must be a number, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"{where}: column 'duration' must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def require_columns(path: Path, row: dict[str, str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in row]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(row)})")


def split_dir(root: Path, split: str | None) -> Path:
    if split is None:
        return root
    sub = root / split
    if not sub.is_dir():
        raise InputError(f"{sub}: split folder not found")
    return sub


def read_json_list(path: Path, what: str) -> list[dict[str, Any]]:
    """A benchmark's JSON list of objects (AIR-Bench's meta files, MMAU's test list); a missing
    file, bad JSON or another shape is one line naming ``path`` and ``what`` it should be."""
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        items = json.loads("".join(text_lines(path, what)))
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InputError(f"{path}: expected a JSON list of objects ({what})")
    return items


def json_text(item: dict[str, Any], key: str, where: str) -> str:
    """``item[key]`` as a non-empty string (numbers are written out), else one line naming ``where``."""
    value = item.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value.strip()
