"""Loading the recipe's named data sources as memory-mapped Hugging Face datasets.

Every source becomes a ``datasets.Dataset`` with the same string/number columns (missing
fields are empty strings, unknown durations -1), so sources can be mixed freely. JSONL
manifests are parsed line by line first: a malformed line or a missing audio file is an
error naming the manifest and line, or, with ``on_error: skip``, a counted skip.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from swv.core.errors import InputError, UsageError
from swv.data.hf_sources import load_hf_source
from swv.data.rows import normalise_row, resolve_data_path
from swv.data.shards import shard_files, shard_rows
from swv.recipes.schema import DatasetSpec

log = logging.getLogger(__name__)

#: Bump when the normalised columns change, so ``datasets`` does not reuse an older cache.
ROW_SCHEMA = 3


def _manifest_rows(manifest: str, name: str, task: str, instruction: str, on_error: str, max_samples: int | None, mtime: float, schema: int) -> Any:
    """Generator for ``Dataset.from_generator`` (``mtime`` and ``schema`` only key the cache)."""
    from swv.core.audio import audio_duration
    from swv.data.manifest import read_manifest, resolve_audio

    del mtime, schema
    emitted = 0
    for line_no, record in read_manifest(manifest, required=()):
        try:
            row = normalise_row(record, manifest, line_no, task, instruction, resolve_audio, audio_duration)
        except InputError:
            if on_error == "skip":
                continue
            raise
        row["source"] = name
        row["audio_bytes"] = b""
        yield row
        emitted += 1
        if max_samples is not None and emitted >= max_samples:
            break


def source_tags(ds: Any) -> set[str]:
    """Every tag of a loaded source (its ``tags`` column)."""
    if "tags" not in ds.column_names:
        return set()
    return {tag for joined in ds.unique("tags") for tag in joined.split()}


def load_source(name: str, spec: DatasetSpec, cache_dir: str | None = None) -> Any:
    """One recipe data source as a ``datasets.Dataset``."""
    import datasets

    datasets.disable_progress_bars()
    if spec.manifest is not None:
        path = resolve_data_path(spec.manifest)
        if not path.is_file():
            raise InputError(f"data.datasets.{name}.manifest: {path}: manifest not found")
        manifest = str(path.resolve())
        try:
            ds = datasets.Dataset.from_generator(
                _manifest_rows,
                gen_kwargs={
                    "manifest": manifest,
                    "name": name,
                    "task": spec.task or "",
                    "instruction": spec.instruction or "",
                    "on_error": spec.on_error,
                    "max_samples": spec.max_samples,
                    "mtime": os.stat(manifest).st_mtime,
                    "schema": ROW_SCHEMA,
                },
                cache_dir=cache_dir,
            )
        except datasets.exceptions.DatasetGenerationError as exc:
            from datasets.arrow_writer import SchemaInferenceError

            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, InputError):
                raise cause from None
            if isinstance(cause, SchemaInferenceError):  # the generator yielded no row
                raise InputError(
                    f"data.datasets.{name}.manifest: {manifest}: no usable records"
                    + (" (every line was skipped: on_error: skip)" if spec.on_error == "skip" else "")
                ) from None
            raise
        if spec.on_error == "skip" and spec.max_samples is None:
            from swv.core.progress import count_lines

            skipped = count_lines(manifest) - len(ds)
            if skipped:
                log.warning("data source %s: skipped %d bad record(s) of %s (on_error: skip)", name, skipped, manifest)
        return ds
    if spec.shards is not None:
        return _load_shards(name, spec, cache_dir)

    if spec.streaming:
        raise UsageError(f"data.datasets.{name}: a streaming source can only be a training stage's dataset "
                         "(not an eval dataset, nor for cache-features or tags)")
    return load_hf_source(name, spec)


def _load_shards(name: str, spec: DatasetSpec, cache_dir: str | None) -> Any:
    """A ``shards:`` source (:mod:`swv.data.shards`), read shard by shard into an Arrow table."""
    import datasets

    assert spec.shards is not None
    try:
        files = shard_files(resolve_data_path(spec.shards))
    except InputError as exc:
        raise InputError(f"data.datasets.{name}.shards: {exc}") from None
    try:
        return datasets.Dataset.from_generator(
            shard_rows,
            gen_kwargs={
                "files": [str(f.resolve()) for f in files], "name": name, "task": spec.task or "",
                "instruction": spec.instruction or "", "on_error": spec.on_error, "max_samples": spec.max_samples,
                "max_member_bytes": spec.max_member_bytes,
                "stamps": [os.stat(f).st_mtime for f in files], "schema": ROW_SCHEMA,
            },
            cache_dir=cache_dir,
        )
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, InputError):
            raise cause from None
        raise
