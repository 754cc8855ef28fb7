"""`swv data manifest --format NAME`: swv manifests from the standard corpora's own layouts.

A layout is a registered ``corpus`` component (:class:`~swv.dataprep.corpora.base.CorpusLayout`,
one module per layout in this package, listed by ``swv plugins list``); a plugin adds its own
through the ``swv_register_components`` hook. Each layout walks one corpus as it is distributed
and yields ``(where, audio file, fields)``; :func:`build_corpus_manifest` then checks the audio,
reads its duration from the header and writes the manifest (audio paths relative to the
manifest). The built-in layouts: ``librispeech``, ``commonvoice``, ``covost2``, ``fleurs``,
``vocalsound``, the benchmarks ``airbench-foundation``, ``airbench-chat``, ``meld``, ``mustc`` and
``mmau``, and the generic ``csv``/``tsv`` tables (each module's class documents its layout).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from swv.core.errors import ComponentError, InputError, UsageError
from swv.core.progress import progress
from swv.data.manifest import audio_ref, write_manifest
from swv.data.missing_audio import DEFAULT_ON_MISSING, MissingAudio
from swv.dataprep.corpora.base import CorpusEntry, CorpusLayout, CorpusOptions
from swv.dataprep.manifest import ManifestReport
from swv.registry.components import CORPUS_KIND
from swv.registry.plugins import default_registry

__all__ = ["CorpusEntry", "CorpusLayout", "CorpusOptions", "build_corpus_manifest", "corpus_entries",
           "corpus_layout", "corpus_names"]


def corpus_names() -> list[str]:
    """The registered corpus layouts (``--format`` choices)."""
    return default_registry().names(CORPUS_KIND)


def corpus_layout(fmt: str, opts: CorpusOptions) -> CorpusLayout:
    """The registered layout ``fmt`` with ``opts``."""
    registry = default_registry()
    if (CORPUS_KIND, fmt) not in registry:
        raise UsageError(f"--format: unknown corpus layout {fmt!r}, expected one of {', '.join(corpus_names())}")
    model = registry.get(CORPUS_KIND, fmt).load_config_model()
    if not issubclass(model, CorpusOptions):
        raise ComponentError(f"corpus {fmt!r}: its config {model.__qualname__} is not a subclass of CorpusOptions")
    layout = registry.build(CORPUS_KIND, {"name": fmt, **opts.model_dump()})
    if not isinstance(layout, CorpusLayout):
        raise ComponentError(f"corpus {fmt!r}: {type(layout).__qualname__} is not a CorpusLayout")
    return layout


def corpus_entries(fmt: str, source: str | os.PathLike[str], opts: CorpusOptions) -> Iterator[CorpusEntry]:
    """The entries of ``source`` read in layout ``fmt`` (see its class docstring)."""
    layout = corpus_layout(fmt, opts)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: not found")
    return layout.entries(path)


def build_corpus_manifest(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str,
    opts: CorpusOptions = CorpusOptions(),
    *,
    show_progress: bool = True,
    on_missing: str = DEFAULT_ON_MISSING,
) -> ManifestReport:
    """Write a manifest of every usable entry of a corpus in layout ``fmt``.

    Entries whose audio file is missing follow ``on_missing`` (:mod:`swv.data.missing_audio`:
    ``fail`` stops before writing, ``skip`` drops and reports them); entries whose audio is
    unreadable are dropped and reported; a corpus with no usable entry is an error. Durations
    come from the audio headers.
    """
    from swv.core.audio import audio_duration

    out = Path(out)
    report = ManifestReport(command=f"manifest ({fmt})", output=out)
    missing = MissingAudio(on_missing)
    seen: set[str] = set()
    total = 0
    for where, audio, fields in progress(corpus_entries(fmt, source, opts), total=None, desc="manifest",
                                         enabled=show_progress):
        total += 1
        if not missing.check(audio, where):
            report.drop("audio file not found", f"{where}: {audio}")
            continue
        record = dict(fields)
        if "duration" not in record:
            try:
                record["duration"] = round(audio_duration(audio), 6)
            except InputError as exc:
                report.drop("unreadable audio", f"{where}: {exc}")
                continue
        record["audio"] = audio_ref(audio, out)
        if record.get("id") in seen:
            record["id"] = f"{record['id']}@{audio_ref(audio, out)}"
        seen.add(record.get("id", ""))
        report.records.append(record)
    missing.enforce(total, f"{fmt} entries")
    if not report.records:
        raise InputError(f"{source}: no usable {fmt} entries found" + (f" for split {opts.split!r}" if opts.split else ""))
    report.written = write_manifest(out, report.records)
    hours = sum(r["duration"] for r in report.records) / 3600
    report.notes.append(f"{hours:.3f} h of audio in layout {fmt}")
    return report
