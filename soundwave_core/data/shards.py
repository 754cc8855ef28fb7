"""Webdataset-style tar shards: many clips per file, for corpora of millions of clips.

A shard ``shard-000000.tar`` holds, per clip, ``<key>.<ext>`` (the audio file's bytes as they
were, e.g. ``00000000.flac``) and ``<key>.json`` (the manifest record without ``audio``, with
its ``duration``); a text-only record has only the ``.json``. ``swv data shard`` writes them
from a manifest (:func:`write_shards`); a recipe source ``shards: DIR`` reads every
``*.tar`` of DIR in name order, sequentially, into the source's memory-mapped Arrow table (the
audio bytes travel in the ``audio_bytes`` column, as for Hugging Face datasets), so training
reads one table instead of opening one small file per clip, and the mixture sampler and its
exact resume work per row as for any source.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.audio import DEFAULT_MAX_AUDIO_BYTES
from swv.core.errors import InputError, UsageError
from swv.core.progress import Report, progress
from swv.data.rows import normalise_row

#: Shard file names (``.format(index)``).
SHARD_NAME = "shard-{:06d}.tar"
#: Name given to a clip stored in a shard (for messages; not a file path).
SHARD_AUDIO_PREFIX = "shard:"
#: How far (seconds) a shard record's ``duration`` may be from its audio header's.
DURATION_TOLERANCE = 0.05


@dataclass
class ShardReport(Report):
    """What :func:`write_shards` wrote."""

    shards: int = 0


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def write_shards(manifest: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, clips_per_shard: int = 1000,
                 show_progress: bool = True, max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES) -> ShardReport:
    """Write the records of ``manifest`` as tar shards of ``clips_per_shard`` records in ``out_dir``.

    Every shard is written under a temporary name and renamed into place. Records whose audio
    is missing, unreadable, not a regular file or over ``max_audio_bytes`` are dropped and
    reported. A record's ``duration`` is the one its audio header gives.
    """
    from swv.core.progress import count_lines
    from swv.data.manifest import read_manifest, record_label

    if clips_per_shard < 1:
        raise UsageError(f"--clips-per-shard must be >= 1, got {clips_per_shard}")
    if max_audio_bytes < 1:
        raise UsageError(f"--max-audio-bytes must be >= 1, got {max_audio_bytes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")):
        raise UsageError(f"{out}: already holds .tar shards; write to an empty folder")
    report = ShardReport(command="shard", output=out)
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None
    in_shard = 0
    records = read_manifest(manifest, required=())
    try:
        for line_no, record in progress(records, total=count_lines(manifest), desc="shard", enabled=show_progress):
            meta = {k: v for k, v in record.items() if k != "audio"}
            payload, ext = b"", ""
            if record.get("audio"):
                try:
                    payload, ext = _audio(manifest, record, meta, max_audio_bytes)
                except (OSError, InputError) as exc:
                    label = record_label(manifest, line_no, record)
                    report.drop("unreadable audio", f"{label}: {' '.join(str(exc).split())}")
                    continue
            if tar is None:
                tmp = out / (SHARD_NAME.format(report.shards) + ".tmp")
                tar = tarfile.open(tmp, "w")
            key = f"{report.written:08d}"
            if payload:
                _add(tar, key + ext, payload)
            _add(tar, key + ".json", json.dumps(meta, ensure_ascii=False).encode())
            report.written += 1
            in_shard += 1
            if in_shard == clips_per_shard:
                _close(tar, tmp, report)
                tar, in_shard = None, 0
        if tar is not None:
            _close(tar, tmp, report)
            tar = None
    finally:
        if tar is not None:
            tar.close()
            assert tmp is not None
            tmp.unlink(missing_ok=True)
    if not report.written:
        raise _nothing_written(manifest, report)
    report.notes.append(f"{report.shards} shard(s) of up to {clips_per_shard} record(s)")
    return report


def _nothing_written(manifest: str | os.PathLike[str], report: ShardReport) -> InputError:
    """The error for a manifest none of whose records could be packed, with why (one example)."""
    first = next((examples[0] for examples in report.examples.values() if examples), None)
    dropped = f" ({report.total_dropped} dropped, e.g. {first})" if first else ""
    return InputError(f"{manifest}: no records to shard{dropped}")


def _audio(manifest: str | os.PathLike[str], record: dict[str, Any], meta: dict[str, Any],
           max_audio_bytes: int) -> tuple[bytes, str]:
    """The bytes and extension of ``record``'s audio file (a regular file of at most
    ``max_audio_bytes``); sets ``meta["duration"]`` from its header."""
    from swv.core.audio import audio_duration
    from swv.core.io import read_regular
    from swv.data.manifest import resolve_audio

    path = resolve_audio(manifest, record)
    payload = read_regular(path, "audio file", max_audio_bytes, "--max-audio-bytes")
    meta["duration"] = audio_duration(payload)
    return payload, path.suffix.lower() or ".wav"


def _close(tar: tarfile.TarFile, tmp: Path | None, report: ShardReport) -> None:
    assert tmp is not None
    tar.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, tmp.with_suffix(""))
    report.shards += 1


def shard_files(ref: str | os.PathLike[str]) -> list[Path]:
    """The ``*.tar`` shards of folder ``ref``, in name order."""
    root = Path(ref)
    if not root.is_dir():
        raise InputError(f"{root}: shard folder not found")
    files = sorted(root.glob("*.tar"))
    if not files:
        raise InputError(f"{root}: no .tar shards found")
    return files


def _check_member(path: Path, member: tarfile.TarInfo, max_member_bytes: int) -> bool:
    """Whether ``member`` holds data to read (a directory does not); a special member (link,
    device, FIFO, sparse file) or one whose header claims more than ``max_member_bytes`` is
    refused before anything is read."""
    if member.isdir():
        return False
    if not member.isreg() or member.issparse():
        kind = "sparse file" if member.issparse() else "link" if member.islnk() or member.issym() else "special file"
        raise InputError(f"{path}: {member.name!r}: a {kind} member; a shard holds only regular files")
    if member.size > max_member_bytes:
        raise InputError(f"{path}: {member.name!r}: member of {member.size:,} bytes is over the limit of "
                         f"{max_member_bytes:,} bytes (the source's max_member_bytes)")
    return True


class _ClampedReads:
    """A shard file whose reads never ask for more than what is left of it: tarfile reads a
    pax or GNU long-name header member whole, at the size its header claims (up to 8 GiB, or
    more in base-256), before any member can be checked; clamped, a lying header yields a short
    read (a truncated-tar error) instead of an allocation of that size."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.size = os.fstat(fh.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        left = max(self.size - self.fh.tell(), 0)
        return self.fh.read(left if size is None or size < 0 else min(size, left))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()


def read_shard(path: str | os.PathLike[str], max_member_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
               ) -> Iterator[tuple[str, dict[str, Any], bytes]]:
    """``(key, record, audio bytes or b"")`` of every clip of one shard, in file order. Member
    sizes are checked from their tar headers before any is read (see :func:`_check_member`)."""
    path = Path(path)
    current: str | None = None
    record: dict[str, Any] | None = None
    audio = b""
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=_ClampedReads(fh), mode="r:") as tar:  # type: ignore[arg-type]
            for member in tar:
                if not _check_member(path, member, max_member_bytes):
                    continue
                key, _, ext = member.name.rpartition(".")
                if key != current:
                    if current is not None:
                        yield _clip(path, current, record, audio)
                    current, record, audio = key, None, b""
                member_file = tar.extractfile(member)
                assert member_file is not None
                data = member_file.read()
                if ext == "json":
                    try:
                        record = json.loads(data)
                    except ValueError as exc:
                        raise InputError(f"{path}: {member.name!r}: invalid JSON ({exc})") from None
                else:
                    audio = data
            if current is not None:
                yield _clip(path, current, record, audio)
    except tarfile.TarError as exc:
        raise InputError(f"{path}: not a readable tar shard ({exc})") from None


def _clip(path: Path, key: str, record: dict[str, Any] | None, audio: bytes) -> tuple[str, dict[str, Any], bytes]:
    if not isinstance(record, dict):
        raise InputError(f"{path}: clip {key!r} has no {key}.json record")
    return key, record, audio


def _embedded(file: str, key: str, record: dict[str, Any], audio: bytes) -> tuple[str, float]:
    """The clip's name and its duration from the audio header; a record whose ``duration``
    disagrees with the header is refused (filtering and bucketing never trust it)."""
    from swv.core.audio import audio_duration

    name = f"{SHARD_AUDIO_PREFIX}{file}#{key}"
    header = audio_duration(audio)
    claimed = record.get("duration")
    if claimed is not None and not (isinstance(claimed, (int, float)) and abs(float(claimed) - header)
                                    <= DURATION_TOLERANCE):
        raise InputError(f"{name}: 'duration' is {claimed!r} but the audio header says {header:.3f} s")
    return name, header


def shard_rows(files: list[str], name: str, task: str, instruction: str, on_error: str, max_samples: int | None,
               stamps: list[float], schema: int, max_member_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
               ) -> Iterator[dict[str, Any]]:
    """Generator for ``Dataset.from_generator`` (``stamps`` and ``schema`` only key the cache;
    ``max_member_bytes`` is the source's ``max_member_bytes``, see :func:`read_shard`)."""
    from swv.core.audio import audio_duration

    del stamps, schema
    emitted = 0
    for file in files:
        for index, (key, record, audio) in enumerate(read_shard(file, max_member_bytes)):
            try:
                embedded = _embedded(file, key, record, audio) if audio else None
                row = normalise_row({k: v for k, v in record.items() if k != "audio"}, file, index + 1, task,
                                    instruction, None, audio_duration, embedded)
            except InputError:
                if on_error == "skip":
                    continue
                raise
            row["source"] = name
            row["audio_bytes"] = audio
            yield row
            emitted += 1
            if max_samples is not None and emitted >= max_samples:
                return
