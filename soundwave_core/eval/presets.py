"""Benchmark presets for ``swv eval --preset NAME``: the prompt, the normaliser, the metric and
the data layout of each benchmark the Soundwave paper reports (Table 5), so a run's report
compares with the paper's numbers.

A preset evaluates either a swv manifest (``--manifest``) or the benchmark in its own layout
(``--data``, read with :mod:`swv.dataprep.corpora`). Either way the preset writes the manifest
it scores to ``<out_dir>/benchmark.jsonl``: every record gets the preset's prompt as its
``instruction`` (whatever it carried before, so every model is asked the same thing), and the
fields its metric needs (``options`` for multiple choice, ``target_language`` for BLEU).

The paper does not print its evaluation prompts; the prompts here are swv's task prompts
(``swv.infer.batch``), and the classification prompt lists the options in the
"Pick one answer from: A. ... B. ..." form of the paper's SFT data (Table 4). The paper's
Soundwave score is stored with each preset and shown next to the measured one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, UsageError

#: The manifest a preset run scores, in its output directory.
BENCHMARK_MANIFEST = "benchmark.jsonl"


@dataclass(frozen=True)
class PaperResult:
    """Soundwave's score on the benchmark as the paper reports it (fractions for WER/accuracy)."""

    table: str
    value: float


@dataclass(frozen=True)
class BenchmarkPreset:
    """One benchmark: what it is called, how the data is laid out, how the model is asked and scored.

    ``task`` is an :data:`swv.eval.evaluation.Task`; ``corpus_format``/``split`` are the
    ``--format``/``--split`` of :mod:`swv.dataprep.corpora` used with ``--data``; ``options``
    (classification) are the choices in order A, B, ...; ``normalize`` (asr) and
    ``target_language`` (st) go to :func:`swv.eval.evaluation.evaluate`.
    """

    name: str
    benchmark: str
    task: str
    metric: str
    corpus_format: str
    split: str | None
    normalize: str | None = None
    target_language: str | None = None
    options: tuple[str, ...] | None = None
    paper: PaperResult | None = None

    def prompt(self) -> str:
        """The instruction every record of the benchmark gets."""
        from swv.model.prompts import default_instruction, instruction_table

        if self.task in ("asr", "st"):
            return default_instruction(instruction_table(), self.task, self.target_language)
        assert self.options is not None
        listed = " ".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(self.options))
        return f"What vocal sound does the person make? Pick one answer from: {listed}."

    def describe(self) -> dict[str, Any]:
        """The preset as the report records it."""
        return {
            "preset": self.name,
            "name": self.benchmark,
            "metric": self.metric,
            "prompt": self.prompt(),
            "normalize": self.normalize,
            "target_language": self.target_language,
            "options": list(self.options) if self.options else None,
            "paper": None if self.paper is None else {"table": self.paper.table, "soundwave": self.paper.value},
        }


def _presets() -> dict[str, BenchmarkPreset]:
    from swv.dataprep.corpora import VOCALSOUND_LABELS

    table5 = "Table 5"
    presets = [
        BenchmarkPreset("librispeech-test-clean", "LibriSpeech test-clean", "asr", "WER", "librispeech",
                        "test-clean", normalize="english", paper=PaperResult(table5, 0.021)),
        BenchmarkPreset("librispeech-test-other", "LibriSpeech test-other", "asr", "WER", "librispeech",
                        "test-other", normalize="english", paper=PaperResult(table5, 0.050)),
        BenchmarkPreset("covost2-en-de", "CoVoST 2 En->De (test)", "st", "BLEU", "covost2", "test",
                        target_language="de", paper=PaperResult(table5, 30.6)),
        BenchmarkPreset("covost2-en-zh", "CoVoST 2 En->Zh (test)", "st", "BLEU", "covost2", "test",
                        target_language="zh"),
        BenchmarkPreset("vocalsound", "VocalSound (test)", "classification", "accuracy", "vocalsound", "te",
                        options=tuple(VOCALSOUND_LABELS.values()), paper=PaperResult(table5, 0.905)),
    ]
    return {preset.name: preset for preset in presets}


PRESETS = _presets()


def get_preset(name: str) -> BenchmarkPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"--preset: unknown benchmark {name!r}, expected one of {', '.join(PRESETS)}") from None


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
    ``split`` overrides the preset's, ``clips`` is CoVoST 2's CommonVoice folder) is needed.
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
        opts = CorpusOptions(split=split or preset.split, clips=None if clips is None else Path(clips))
        for where, audio, fields in corpus_entries(preset.corpus_format, data, opts):  # type: ignore[arg-type]
            if not audio.is_file():
                raise InputError(f"{where}: audio file not found: {audio}")
            records.append({**fields, "audio": audio_ref(audio, target)})
    if not records:
        raise InputError(f"{manifest or data}: the benchmark has no records")
    prompt = preset.prompt()
    for record in records:
        record.pop("prompt", None)
        record["instruction"] = prompt
        if preset.options is not None:
            record["options"] = list(preset.options)
        if preset.target_language is not None:
            record["target_language"] = preset.target_language
    write_manifest(target, records)
    return target


def format_benchmark(result: dict[str, Any]) -> str:
    """One line naming the benchmark, its measured score and the paper's."""
    bench = result["benchmark"]
    metrics = result.get("metrics") or {}
    key = {"WER": "wer", "BLEU": "bleu", "accuracy": "accuracy"}[bench["metric"]]
    percent = bench["metric"] != "BLEU"

    def show(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if percent else f"{value:.2f}"

    line = f"benchmark: {bench['name']}   {bench['metric']}: {show(metrics.get(key))}"
    if bench["paper"] is not None:
        line += f"   (paper {bench['paper']['table']}, Soundwave: {show(bench['paper']['soundwave'])})"
    return line + "\n"
