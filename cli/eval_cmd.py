"""``swv eval``: batch inference on a test manifest (resumable), scoring and a JSON report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from swv.cli.infer_cmd import (
    BatchSize,
    Device,
    DoSample,
    Dtype,
    LengthBound,
    MaxDuration,
    MaxNewTokens,
    ModelSource,
    NoRepeatNgramSize,
    RepetitionPenalty,
    Revision,
    Seed,
    System,
    Temperature,
    TopP,
    TrustRemoteCode,
    generation_settings,
)
from swv.core.audio import DEFAULT_MAX_DURATION
from swv.core.errors import UsageError
from swv.eval.evaluation import EVAL_TASKS
from swv.eval.metrics import NORMALIZE_CHOICES


def eval_cmd(
    model: ModelSource,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Test manifest (JSONL) with reference fields.")] = None,
    task: Annotated[Optional[str], typer.Option(
        "--task", help=f"One of {', '.join(EVAL_TASKS)} (asr: WER/CER, st: BLEU/chrF, classification: accuracy, "
        "open: judge inputs, no score); set by --preset.")] = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help="A registered benchmark preset, e.g. the paper's librispeech-test-clean (`swv plugins list` "
        "shows them all; prompt, normaliser and metric fixed; the report names the benchmark).")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="--preset: the benchmark in its own layout (as for swv data manifest --format) "
        "instead of --manifest.")] = None,
    clips: Annotated[Optional[Path], typer.Option(
        "--clips", help="--preset with --data: the layout's clips folder (covost2: the CommonVoice clips).")] = None,
    split: Annotated[Optional[str], typer.Option(
        "--split", help="--hf-dataset: the split (default test); --preset with --data: override the benchmark's "
        "split.")] = None,
    hf_dataset: Annotated[Optional[str], typer.Option(
        "--hf-dataset", help="A Hugging Face dataset (save_to_disk folder, parquet/json/csv file, folder of data "
        "files, or name) instead of --manifest; datasets.Audio columns are read with swv's soundfile reader.")] = None,
    column: Annotated[Optional[list[str]], typer.Option(
        "--column", help="--hf-dataset: FIELD=COLUMN, e.g. text=sentence (repeatable).")] = None,
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", help="Score this existing predictions JSONL instead of running the model.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(
        "--output-dir", help="Where predictions.jsonl (resumable) and report.json go "
        "(default: eval-<manifest name>-<task>).")] = None,
    normalize: Annotated[Optional[str], typer.Option(
        "--normalize", help=f"asr: text normalisation, one of {', '.join(NORMALIZE_CHOICES)} (default: "
        f"{NORMALIZE_CHOICES[0]}).")] = None,
    target_language: Annotated[Optional[str], typer.Option(
        "--target-language", help="st: target language for the default prompt and the BLEU tokenizer "
        "(default: each record's target_language/language).")] = None,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    do_sample: DoSample = None,
    length_bound: LengthBound = None,
    no_repeat_ngram_size: NoRepeatNgramSize = None,
    repetition_penalty: RepetitionPenalty = None,
    system: System = None,
    seed: Seed = None,
    device: Device = "cpu",
    dtype: Dtype = None,
    batch_size: BatchSize = 8,
    max_duration: MaxDuration = DEFAULT_MAX_DURATION,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Evaluate a model on a test manifest and write a JSON report.

    Runs batch inference into OUTPUT_DIR/predictions.jsonl (resumable) or
    reads --predictions, prints the score table and writes
    OUTPUT_DIR/report.json (model dir, manifest sha256, generation settings).
    Prompts: the record's instruction/prompt, else the default instruction
    of the record's task (or --task) in the model's table (the one its
    training used: asr "Transcribe the speech.", st "Translate the speech
    into <target language>.", ...). Generation defaults: the model's own,
    the decoding controls included (transcripts and translations capped by
    the audio's length, no long repeated runs of tokens); the report records them
    and counts the answers longer than 2x their reference ('overlong').

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    windowed, never truncated (clips longer than --max-duration are); items
    whose audio cannot be used count as failed.

    Benchmarks (--preset): the paper's benchmarks with their prompt, normaliser and
    metric; the data comes from --manifest or, with --data, from the benchmark's own
    layout; OUTPUT_DIR (default eval-<preset>) also holds the scored benchmark.jsonl.
    """
    from swv.eval.evaluation import evaluate_model, format_table

    benchmark = None
    if hf_dataset is not None:
        from swv.data.hf_sources import hf_eval_manifest

        if manifest is not None or data is not None:
            raise UsageError("--hf-dataset replaces --manifest/--data; give one of them")
        hf_split, split = split or "test", None
        name = Path(hf_dataset).name or "dataset"
        default_dir = f"eval-{preset}" if preset is not None else f"eval-{name}-{hf_split}-{task}"
        output_dir = output_dir if output_dir is not None else Path(default_dir)
        manifest = hf_eval_manifest(hf_dataset, hf_split, _column_map(column), output_dir)
    elif column:
        raise UsageError("--column needs --hf-dataset")
    if preset is not None:
        from swv.eval.presets import get_preset, prepare_benchmark_manifest

        bench = get_preset(preset)
        fixed = bench.config
        if task is not None and task != fixed.task:
            raise UsageError(f"--task {task} contradicts --preset {preset} (task {fixed.task})")
        if normalize is not None or target_language is not None:
            raise UsageError("--normalize/--target-language are fixed by --preset")
        task = fixed.task
        out_dir = output_dir if output_dir is not None else Path(f"eval-{bench.name}")
        manifest = prepare_benchmark_manifest(bench, out_dir, manifest=manifest, data=data, clips=clips, split=split)
        normalize, target_language, benchmark = fixed.normalize, fixed.target_language, bench.describe()
    else:
        if data is not None or clips is not None or split is not None:
            raise UsageError("--data, --clips and --split need --preset")
        if manifest is None or task is None:
            raise UsageError("--manifest and --task are required (or use --preset)")
        out_dir = output_dir if output_dir is not None else Path(f"eval-{manifest.stem}-{task}")
    if task not in EVAL_TASKS:
        raise UsageError(f"--task: unknown task {task!r}, expected one of {', '.join(EVAL_TASKS)}")
    if normalize is not None and task != "asr":
        raise UsageError("--normalize applies to --task asr only")
    if normalize is not None and normalize not in NORMALIZE_CHOICES:
        raise UsageError(f"--normalize: unknown mode {normalize!r}, expected one of {', '.join(NORMALIZE_CHOICES)}")
    if target_language is not None and task != "st":
        raise UsageError("--target-language applies to --task st only")
    run = evaluate_model(
        model, manifest, task, out_dir,  # type: ignore[arg-type]
        predictions=predictions,
        settings=generation_settings(max_new_tokens, do_sample, temperature, top_p, seed, length_bound,
                                     no_repeat_ngram_size, repetition_penalty),
        system=system, device=device, dtype=dtype, batch_size=batch_size, max_duration=max_duration,
        normalize=normalize, target_language=target_language, revision=revision, benchmark=benchmark,
        trust_remote_code=trust_remote_code,
    )
    if run.generation is not None:
        print(f"eval: {run.generation.format()}", file=sys.stderr)
    if benchmark is not None:
        from swv.eval.presets import format_benchmark

        typer.echo(format_benchmark(run.result), nl=False)
    typer.echo(format_table(run.result), nl=False)
    print(f"eval: report written to {run.report}", file=sys.stderr)


def _column_map(pairs: list[str] | None) -> dict[str, str]:
    """``["text=sentence", ...]`` -> ``{"text": "sentence"}``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        field, sep, col = pair.partition("=")
        if not sep or not field.strip() or not col.strip():
            raise UsageError(f"--column: expected FIELD=COLUMN, got {pair!r}")
        out[field.strip()] = col.strip()
    return out
