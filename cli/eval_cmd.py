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
    MaxDuration,
    MaxNewTokens,
    Seed,
    System,
    Temperature,
    TopP,
    TrustRemoteCode,
    generation_settings,
)
from swv.errors import UsageError
from swv.recipes.schema import DEFAULT_MAX_DURATION

TASKS = ("asr", "st", "classification", "open")
NORMALIZE_MODES = ("auto", "english", "basic", "none")


def eval_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (recorded in the report).")],
    manifest: Annotated[Path, typer.Option("--manifest", help="Test manifest (JSONL) with reference fields.")],
    task: Annotated[str, typer.Option("--task", help="asr (WER/CER), st (BLEU/chrF), classification (accuracy) or "
                                      "open (judge inputs, no score).")],
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", help="Score this existing predictions JSONL instead of running the model.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(
        "--output-dir", help="Where predictions.jsonl (resumable) and report.json go "
        "(default: eval-<manifest name>-<task>).")] = None,
    normalize: Annotated[Optional[str], typer.Option(
        "--normalize", help="asr: text normalisation auto (default), english, basic or none.")] = None,
    target_language: Annotated[Optional[str], typer.Option(
        "--target-language", help="st: target language for the default prompt and the BLEU tokenizer "
        "(default: each record's target_language/language).")] = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    do_sample: DoSample = False,
    system: System = None,
    seed: Seed = None,
    device: Device = "cpu",
    dtype: Dtype = None,
    batch_size: BatchSize = 8,
    max_duration: MaxDuration = DEFAULT_MAX_DURATION,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Evaluate a model on a test manifest and write a JSON report.

    Runs batch inference into OUTPUT_DIR/predictions.jsonl (resumable) or
    reads --predictions, prints the score table and writes
    OUTPUT_DIR/report.json (model dir, manifest sha256, generation settings).
    Prompts: the record's instruction/prompt, else for asr "Transcribe the
    speech.", for st "Translate the speech into <target language>.";
    classification and open records need their own instruction.

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    windowed, never truncated (clips longer than --max-duration are); items
    whose audio cannot be used count as failed.
    """
    from swv.evaluation import evaluate_model, format_table

    if task not in TASKS:
        raise UsageError(f"--task: unknown task {task!r}, expected one of {', '.join(TASKS)}")
    if normalize is not None and task != "asr":
        raise UsageError("--normalize applies to --task asr only")
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise UsageError(f"--normalize: unknown mode {normalize!r}, expected one of {', '.join(NORMALIZE_MODES)}")
    if target_language is not None and task != "st":
        raise UsageError("--target-language applies to --task st only")
    out_dir = output_dir if output_dir is not None else Path(f"eval-{manifest.stem}-{task}")
    run = evaluate_model(
        model_dir, manifest, task, out_dir,  # type: ignore[arg-type]
        predictions=predictions,
        settings=generation_settings(max_new_tokens, do_sample, temperature, top_p, seed),
        system=system, device=device, dtype=dtype, batch_size=batch_size, max_duration=max_duration,
        normalize=normalize, target_language=target_language, trust_remote_code=trust_remote_code,
    )
    if run.generation is not None:
        print(f"eval: {run.generation.format()}", file=sys.stderr)
    typer.echo(format_table(run.result), nl=False)
    print(f"eval: report written to {run.report}", file=sys.stderr)
