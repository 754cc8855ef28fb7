"""``swv eval``: batch inference on a test manifest (resumable), scoring and a JSON report."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Optional

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
    generation_settings,
    load_pipeline,
)
from swv.config import CONFIG_NAME
from swv.errors import InputError, UsageError

TASKS = ("asr", "st", "classification", "open")
NORMALIZE_MODES = ("auto", "english", "basic", "none")
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.json"
JUDGE_FILE = "judge_inputs.jsonl"


def _saved_system_prompt(model_dir: Path) -> str | None:
    """The system prompt stored in the model's ``swv_config.json`` (for the report)."""
    try:
        return json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8")).get("system_prompt")
    except (OSError, ValueError, AttributeError):
        return None


def _eval_records(items: list[Any], predictions: Path) -> list[dict[str, Any]]:
    """Manifest references + the prediction (or error) of every manifest item, in manifest order."""
    from swv.infer.batch import COPIED_FIELDS, read_output

    if not predictions.is_file():
        raise InputError(f"{predictions}: predictions file not found")
    by_id = {str(record["id"]): record for _, record in read_output(predictions)}
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise InputError(
            f"{predictions}: {len(missing)} manifest item(s) have no prediction (first: {missing[0]!r}); "
            "run swv eval without --predictions to generate them"
        )
    records = []
    for item in items:
        prediction = by_id[item.id]
        record: dict[str, Any] = {"id": item.id}
        record.update({field: item.record[field] for field in COPIED_FIELDS if field in item.record})
        for field in ("prediction", "error"):
            if field in prediction:
                record[field] = prediction[field]
        records.append(record)
    return records


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
    max_duration: MaxDuration = None,
) -> None:
    """Evaluate a model on a test manifest and write a JSON report.

    Runs batch inference into OUTPUT_DIR/predictions.jsonl (resumable) or
    reads --predictions, prints the score table and writes
    OUTPUT_DIR/report.json (model dir, manifest sha256, generation settings).
    Prompts: the record's instruction/prompt, else for asr "Transcribe the
    speech.", for st "Translate the speech into <target language>.";
    classification and open records need their own instruction.

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    windowed, never truncated (--max-duration rejects them instead); items
    whose audio cannot be used count as failed.
    """
    from swv.evaluation import evaluate, format_table, write_report
    from swv.infer.batch import read_items, run_manifest, task_prompt

    if task not in TASKS:
        raise UsageError(f"--task: unknown task {task!r}, expected one of {', '.join(TASKS)}")
    if normalize is not None and task != "asr":
        raise UsageError("--normalize applies to --task asr only")
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise UsageError(f"--normalize: unknown mode {normalize!r}, expected one of {', '.join(NORMALIZE_MODES)}")
    if target_language is not None and task != "st":
        raise UsageError("--target-language applies to --task st only")
    out_dir = output_dir if output_dir is not None else Path(f"eval-{manifest.stem}-{task}")
    generation: dict[str, Any] | None = None
    if predictions is None:
        if not model_dir.is_dir():
            raise InputError(f"{model_dir}: model directory not found")
        items = read_items(manifest, lambda record, where: task_prompt(record, where, task, target_language))
        settings = generation_settings(max_new_tokens, do_sample, temperature, top_p, seed)
        predictions = out_dir / PREDICTIONS_FILE
        summary = run_manifest(
            lambda: load_pipeline(model_dir, device, dtype, system), manifest, items, predictions, settings,
            batch_size=batch_size, max_duration=max_duration,
        )
        print(f"eval: {summary.format()}", file=sys.stderr)
        generation = {
            **settings.as_dict(),
            "system_prompt": system if system is not None else _saved_system_prompt(model_dir),
            "batch_size": batch_size,
            "device": device,
            "dtype": dtype,
            "max_duration": max_duration,
            "prompts": dict(Counter(item.prompt for item in items)),
        }
    else:
        items = read_items(manifest, None)
    records = _eval_records(items, predictions)
    judge = out_dir / JUDGE_FILE if task == "open" else None
    settings_for_task = {"normalize": normalize, "target_language": target_language, "judge_path": judge}
    result = evaluate(records, task, **settings_for_task)  # type: ignore[arg-type]
    result["predictions_file"] = str(predictions.resolve())
    typer.echo(format_table(result), nl=False)
    report = write_report(result, out_dir / REPORT_FILE, model_dir=model_dir, manifest_path=manifest,
                          generation_settings=generation)
    print(f"eval: report written to {report}", file=sys.stderr)
