"""Benchmark presets for ``swv eval --preset NAME``: the prompt, the normaliser, the metric and
the data layout of each benchmark the Soundwave paper reports (Tables 5, 6, 7 and 12), so a run's
report compares with the paper's numbers.

A preset is a registered ``eval_preset`` component (:mod:`swv.eval.presets.base`; the built-ins
are one module per benchmark in this package, ``swv plugins list`` shows them all); a plugin adds
its own through the ``swv_register_components`` hook.

A preset evaluates either a swv manifest (``--manifest``) or the benchmark in its own layout
(``--data``, read with the registered corpus layout it names, :mod:`swv.dataprep.corpora`).
Either way the preset writes the manifest it scores to ``<out_dir>/benchmark.jsonl``: every
record gets the preset's prompt as its ``instruction`` (whatever it carried before, so every
model is asked the same thing), and the fields its metric needs (``options`` for multiple
choice, ``target_language`` for BLEU). AIR-Bench and MMAU ask each item its own question with its own
options (``item_questions``); a preset's ``tasks`` keeps the records of those tasks only (AIR-Bench's
speech tasks, MMAU's speech and sound).

The paper does not print its evaluation prompts; the prompts here are swv's task prompts
(``swv.infer.batch``), and the classification prompt lists the options in the
"Pick one answer from: A. ... B. ..." form of the paper's SFT data (Table 4). The paper's
Soundwave score is stored with each preset and shown next to the measured one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from swv.core.errors import ComponentError, InputError, UsageError
from swv.eval.presets.base import METRIC_KEYS, PERCENT_METRICS, BenchmarkPreset, PaperResult, PresetConfig
from swv.registry.components import EVAL_PRESET_KIND
from swv.registry.plugins import default_registry

__all__ = ["BENCHMARK_MANIFEST", "BenchmarkPreset", "PaperResult", "PresetConfig", "format_benchmark", "get_preset",
           "prepare_benchmark_manifest", "preset_names"]

#: The manifest a preset run scores, in its output directory.
BENCHMARK_MANIFEST = "benchmark.jsonl"


def preset_names() -> list[str]:
    """The registered benchmark presets (``--preset`` choices)."""
    return default_registry().names(EVAL_PRESET_KIND)


def get_preset(name: str) -> BenchmarkPreset:
    """The registered preset ``name``."""
    registry = default_registry()
    if (EVAL_PRESET_KIND, name) not in registry:
        raise UsageError(f"--preset: unknown benchmark {name!r}, expected one of {', '.join(preset_names())}")
    try:
        preset = registry.build(EVAL_PRESET_KIND, {"name": name}, name=name)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ComponentError(f"eval_preset {name!r}: {where + ': ' if where else ''}{error['msg']}") from None
    if not isinstance(preset, BenchmarkPreset) or not isinstance(preset.config, PresetConfig):
        raise ComponentError(f"eval_preset {name!r}: expected a BenchmarkPreset with a PresetConfig, "
                             f"got {type(preset).__qualname__}")
    return preset


def prepare_benchmark_manifest(
    preset: BenchmarkPreset,
    out_dir: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    clips: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> Path:
    """Write ``<out_dir>/benchmark.jsonl``: the benchmark's records with the preset's fields.

    Exactly one of ``manifest`` (a swv manifest) and ``data`` (the benchmark in its own layout;
    ``split`` overrides the preset's, ``clips`` is CoVoST 2's CommonVoice folder) is needed. Every
    record is kept, whether its audio file exists or not: ``swv eval`` checks the written manifest
    with :func:`swv.data.missing_audio.check_manifest_audio` under its ``--on-missing`` policy.
    """
    from swv.data.manifest import (
        audio_ref,
        read_manifest,
        rebase_record,
        write_manifest,
    )
    from swv.dataprep.corpora import CorpusOptions, corpus_entries

    if (manifest is None) == (data is None):
        raise UsageError(f"--preset {preset.name}: give either --manifest or --data (the benchmark in its own layout)")
    target = Path(out_dir) / BENCHMARK_MANIFEST
    records: list[dict[str, Any]] = []
    if manifest is not None:
        for _, record in read_manifest(manifest, required=()):
            records.append(rebase_record(record, manifest, target))
    else:
        opts = CorpusOptions(split=split or preset.config.split, clips=None if clips is None else Path(clips))
        for _, audio, fields in corpus_entries(preset.config.corpus_format, data, opts):  # type: ignore[arg-type]
            records.append({**fields, "audio": audio_ref(audio, target)})
    cfg = preset.config
    if cfg.tasks:
        records = [record for record in records if record.get("task") in cfg.tasks]
    if not records:
        kept = f" of task {', '.join(cfg.tasks)}" if cfg.tasks else ""
        raise InputError(f"{manifest or data}: the benchmark has no records{kept}")
    for index, record in enumerate(records):
        record.pop("prompt", None)
        record["instruction"] = preset.instruction(record, f"{manifest or data}: record {record.get('id', index)!r}")
        if cfg.options:
            record["options"] = list(cfg.options)
        if cfg.target_language is not None:
            record["target_language"] = cfg.target_language
    write_manifest(target, records)
    return target


def format_benchmark(result: dict[str, Any]) -> str:
    """One line naming the benchmark, its measured score and the paper's."""
    bench = result["benchmark"]
    metrics = result.get("metrics") or {}
    key = METRIC_KEYS[bench["metric"]]
    percent = bench["metric"] in PERCENT_METRICS

    def show(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if percent else f"{value:.2f}"

    line = f"benchmark: {bench['name']}   {bench['metric']}: {show(metrics.get(key))}"
    if bench["paper"] is not None:
        line += f"   (paper {bench['paper']['table']}, Soundwave: {show(bench['paper']['soundwave'])})"
    return line + "\n"
