"""Hugging Face datasets as swv data sources, with their audio read by swv's own reader.

``datasets.Audio`` columns are cast to ``Audio(decode=False)``, so ``datasets`` hands over the
encoded file (``{"bytes", "path"}``) and never decodes it (no torchcodec needed): audio stored
as bytes (``save_to_disk``, Hub parquet files) travels with the row in the ``audio_bytes``
column and is decoded by :func:`swv.core.audio.load_audio` (soundfile) when a batch is built; audio
stored as a path is used like a manifest's. A source is a ``save_to_disk`` folder, a single
``.parquet``/``.jsonl``/``.json``/``.csv``/``.arrow`` file, a folder of such files, or a dataset
name (which ``datasets`` may download). ``columns`` maps swv fields to the dataset's columns
(``{text: sentence, audio: speech}``); ``ClassLabel`` columns become their label names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.errors import InputError
from swv.data.rows import TEXT_FIELDS, normalise_row, resolve_data_path
from swv.recipes.schema import DatasetSpec

#: Name given to audio carried as bytes in a row (for messages; it is not a file path).
EMBEDDED_AUDIO_PREFIX = "hf-audio:"

#: swv fields a ``columns`` mapping may name.
MAPPABLE_FIELDS = (*TEXT_FIELDS, "audio", "duration", "tags")

#: Single-file formats and the ``datasets`` builder that reads them.
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}

#: libsndfile format -> file extension, for writing embedded audio out (``swv eval --hf-dataset``).
FORMAT_EXTENSIONS = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff", "W64": ".w64",
                     "RF64": ".wav", "CAF": ".caf", "AU": ".au", "NIST": ".sph"}


@dataclass(frozen=True)
class SourceNames:
    """How messages name a Hugging Face source's settings: a recipe's fields
    (:meth:`recipe`: ``data.datasets.NAME``, ``...columns.FIELD``, ``...split``) or a command's
    flags (:data:`EVAL_FLAGS`: ``--hf-dataset``, ``--column FIELD=COLUMN``, ``--split``)."""

    source: str
    columns: str
    split: str
    #: whether the names are command-line flags (``--column text=sentence``, not ``columns.text``)
    flags: bool = False

    @classmethod
    def recipe(cls, name: str) -> SourceNames:
        where = f"data.datasets.{name}"
        return cls(where, f"{where}.columns", f"{where}.split")

    def column(self, field: str, column: str) -> str:
        """The setting that maps ``field`` to ``column``."""
        return f"{self.columns} {field}={column}" if self.flags else f"{self.columns}.{field}"

    def mapping(self) -> str:
        """How to map a column, for hints."""
        return f"{self.columns} FIELD=COLUMN" if self.flags else f"'{self.columns}'"


#: ``swv eval --hf-dataset``: its errors name the command's flags.
EVAL_FLAGS = SourceNames("--hf-dataset", "--column", "--split", flags=True)


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def open_hf_dataset(ref: str, split: str, *, streaming: bool = False, names: SourceNames) -> Any:
    """The ``split`` of dataset ``ref`` as a ``datasets.Dataset`` (``IterableDataset`` when streaming);
    errors name the settings as ``names`` says."""
    import datasets

    datasets.disable_progress_bars()
    source = resolve_data_path(ref)
    where = names.source
    try:
        if _is_saved_to_disk(source):
            loaded = datasets.load_from_disk(str(source))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise InputError(f"{names.split}: {source} has no split {split!r} (splits: {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded.to_iterable_dataset() if streaming else loaded
        if source.is_file():
            builder = FILE_BUILDERS.get(source.suffix.lower())
            if builder is None:
                raise InputError(f"{where}: {source}: expected a dataset folder or a "
                                 f"{'/'.join(FILE_BUILDERS)} file")
            return datasets.load_dataset(builder, data_files={split: str(source)}, split=split, streaming=streaming)
        if source.exists() or source.is_absolute() or str(ref).startswith(("./", "../")):
            if not source.is_dir():
                raise InputError(f"{where}: {source}: not found")
            return datasets.load_dataset(str(source), split=split, streaming=streaming)
        return datasets.load_dataset(ref, split=split, streaming=streaming)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise InputError(f"{where}: cannot open {ref!r} split {split!r}: {' '.join(str(exc).split())[:300]}") from None


def check_columns(ds: Any, columns: dict[str, str], names: SourceNames) -> None:
    """Check a ``columns`` mapping (swv field -> dataset column) against the dataset's columns;
    errors name the mapping's settings as ``names`` says.

    The mapping is applied row by row (:func:`hf_row`), not with ``rename_columns``: renaming a
    stream re-encodes its Audio column, which needs torchcodec."""
    found = list(ds.column_names or [])
    seen: dict[str, str] = {}
    for field, column in columns.items():
        if field not in MAPPABLE_FIELDS:
            raise InputError(f"{names.column(field, column)}: unknown field {field!r} "
                             f"(fields: {', '.join(MAPPABLE_FIELDS)})")
        if column not in found:
            raise InputError(f"{names.column(field, column)}: the dataset has no column {column!r} "
                             f"(columns: {', '.join(found)})")
        if column in seen:
            raise InputError(f"{names.columns}: column {column!r} is mapped to both {seen[column]!r} and {field!r}")
        seen[column] = field


def undecoded_audio(ds: Any) -> Any:
    """Every ``datasets.Audio`` column cast to ``Audio(decode=False)``: ``{"bytes", "path"}`` rows."""
    import datasets

    for column, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            ds = ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def class_label_names(ds: Any) -> dict[str, list[str]]:
    """``{column: names}`` of the dataset's ``ClassLabel`` columns."""
    import datasets

    return {column: list(feature.names) for column, feature in (ds.features or {}).items()
            if isinstance(feature, datasets.ClassLabel)}


def hf_row(record: dict[str, Any], index: int, *, source: str, base: str, name: str, task: str, instruction: str,
           labels: dict[str, list[str]], columns: dict[str, str], missing_ok: bool = False) -> dict[str, Any]:
    """One dataset row as a source row (see :func:`swv.data.rows.normalise_row`, ``missing_ok``
    included) plus ``audio_bytes``; ``columns`` (field -> column) picks the columns of swv's fields."""
    from swv.core.audio import audio_duration

    rec = dict(record)
    for column, names in labels.items():
        if isinstance(rec.get(column), int) and 0 <= rec[column] < len(names):
            rec[column] = names[rec[column]]
    rec.update({field: rec[column] for field, column in columns.items()})
    audio = rec.get("audio")
    data = b""
    if isinstance(audio, dict):
        data, rec["audio"] = audio.get("bytes") or b"", audio.get("path") or ""
    elif isinstance(audio, (bytes, bytearray)):
        data, rec["audio"] = bytes(audio), ""
    embedded = None
    if data:
        label = f"{EMBEDDED_AUDIO_PREFIX}{source}#{index}"
        try:
            embedded = (label, audio_duration(data))
        except InputError as exc:
            raise InputError(f"{source}: row {index}: {label}: {exc}") from None
    row = normalise_row(rec, source, index + 1, task, instruction,
                     lambda _m, r: Path(base, str(r["audio"])).expanduser(), audio_duration, embedded, missing_ok)
    row["source"] = name
    row["audio_bytes"] = data
    return row


def load_hf_source(name: str, spec: DatasetSpec, names: SourceNames | None = None, missing_ok: bool = False) -> Any:
    """A recipe's ``hf_dataset:`` source as a ``datasets.Dataset`` of the shared row columns;
    errors name the recipe's fields (``data.datasets.NAME...``) unless ``names`` says otherwise.
    With ``missing_ok`` a row whose audio path names no file keeps the path (see :func:`hf_row`)."""
    assert spec.hf_dataset is not None
    names = names or SourceNames.recipe(name)
    ds = undecoded_audio(open_hf_dataset(spec.hf_dataset, spec.split, names=names))
    check_columns(ds, spec.columns, names)
    if not {"audio", "instruction"} & ({*ds.column_names, *spec.columns}):
        raise InputError(f"{names.source}: dataset has neither 'audio' nor 'instruction' columns "
                         f"(columns: {', '.join(ds.column_names)}; map them with {names.mapping()})")
    if spec.max_samples is not None:
        ds = ds.select(range(min(spec.max_samples, len(ds))))
    source = resolve_data_path(spec.hf_dataset)
    base = str(source if source.is_dir() else source.parent)
    kwargs = {"source": str(spec.hf_dataset), "base": base, "name": name, "task": spec.task or "",
              "instruction": spec.instruction or "", "labels": class_label_names(ds), "columns": dict(spec.columns),
              "missing_ok": missing_ok}
    return ds.map(hf_row, with_indices=True, remove_columns=ds.column_names, fn_kwargs=kwargs, features=row_features())


def row_features() -> Any:
    """The ``datasets.Features`` of a source row (as manifest sources get them by inference)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features({
        **{key: string for key in TEXT_FIELDS}, "audio": string, "duration": datasets.Value("float64"),
        "tags": string, "line": datasets.Value("int64"), "manifest": string, "source": string,
        "audio_bytes": datasets.Value("binary"),
    })


def hf_eval_manifest(ref: str, split: str, columns: dict[str, str], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``<out_dir>/dataset.jsonl``, a manifest of a Hugging Face dataset split for ``swv eval``.

    Audio given as a path is referenced where it is; audio carried as bytes is written once to
    ``<out_dir>/audio/<row>.<ext>`` (kept on reruns), so predictions and the report name files.
    Ids are the dataset's ``id`` column or ``<split>-<row>``. An audio path that names no file is
    written as it is: ``swv eval``'s ``--on-missing`` check of the manifest decides (fail or count).
    """
    import io

    import soundfile as sf

    from swv.core.io import atomic_file
    from swv.data.manifest import audio_ref, write_manifest

    spec = DatasetSpec(hf_dataset=ref, split=split, columns=columns)
    rows = load_hf_source("eval", spec, EVAL_FLAGS, missing_ok=True)
    out_dir = Path(out_dir)
    target = out_dir / "dataset.jsonl"
    records = []
    for index, row in enumerate(rows):
        record: dict[str, Any] = {k: row[k] for k in TEXT_FIELDS if row.get(k)}
        generated = row["id"] == f"{Path(str(ref)).name}:{index + 1}"  # no id column: the row's position
        record["id"] = f"{split}-{index}" if generated else row["id"]
        if row["audio_bytes"]:
            fmt = sf.info(io.BytesIO(row["audio_bytes"])).format
            path = out_dir / "audio" / f"{index:08d}{FORMAT_EXTENSIONS.get(fmt, '.' + fmt.lower())}"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path, "wb") as fh:
                    fh.write(row["audio_bytes"])
            record["audio"] = audio_ref(path, target)
        elif row["audio"]:
            record["audio"] = row["audio"]
        records.append(record)
    write_manifest(target, records)
    return target
