"""``swv eval``: batch inference on a test manifest (resumable), scoring and a JSON report."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from swv.cli.options import (
    COUNTED_AS_FAILED,
    ON_MISSING_DEFAULT,
    GenerationOptions,
    MaxDuration,
    ModelSource,
    OnMissingOption,
    Revision,
    RunOptions,
    TrustRemoteCode,
    check_missing_audio,
    with_option_groups,
)
from swv.core.audio import DEFAULT_MAX_DURATION
from swv.core.errors import UsageError
from swv.core.plotting import PLOT_HINT
from swv.eval.charts import GROUPS_CHART, check_charted
from swv.eval.evaluation import EVAL_TASKS
from swv.eval.judge import DEFAULT_JUDGE_KEY_ENV, DEFAULT_JUDGE_TIMEOUT, JUDGE_SCORES_FILE
from swv.eval.metrics import NORMALIZE_CHOICES

if TYPE_CHECKING:
    from swv.eval.evaluation import EvalRun
    from swv.eval.judge import JudgeSettings


@dataclass(frozen=True)
class EvalInputs:
    """What ``swv eval`` scores and how: the test data, its task or benchmark, where results go."""

    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Test manifest (JSONL) with reference fields.")] = None
    task: Annotated[Optional[str], typer.Option(
        "--task", help=f"One of {', '.join(EVAL_TASKS)} (asr: WER/CER, st: BLEU/chrF, classification: accuracy, "
        "open: judge inputs, no score); set by --preset.")] = None
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help="A registered benchmark preset, e.g. the paper's librispeech-test-clean (`swv plugins list` "
        "shows them all; prompt, normaliser and metric fixed; the report names the benchmark).")] = None
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="--preset: the benchmark in its own layout (as for swv data manifest --format) "
        "instead of --manifest.")] = None
    clips: Annotated[Optional[Path], typer.Option(
        "--clips", help="--preset with --data: the layout's clips folder (covost2: the CommonVoice clips; "
        "mustc: where the segments are cut to; meld, mmau: another folder of their clips).")] = None
    split: Annotated[Optional[str], typer.Option(
        "--split", help="--hf-dataset: the split (default test); --preset with --data: override the benchmark's "
        "split.")] = None
    hf_dataset: Annotated[Optional[str], typer.Option(
        "--hf-dataset", help="A Hugging Face dataset (save_to_disk folder, parquet/json/csv file, folder of data "
        "files, or name) instead of --manifest; datasets.Audio columns are read with swv's soundfile reader.")] = None
    column: Annotated[Optional[list[str]], typer.Option(
        "--column", help="--hf-dataset: FIELD=COLUMN, e.g. text=sentence (repeatable).")] = None
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", help="Score this existing predictions JSONL instead of running the model.")] = None
    output_dir: Annotated[Optional[Path], typer.Option(
        "--output-dir", help="Where predictions.jsonl (resumable) and report.json go "
        "(default: eval-<manifest name>-<task>).")] = None
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start over: discard OUTPUT_DIR/predictions.jsonl instead of resuming it (needed when "
        "another model, other generation settings or prompts, another manifest or an older swv wrote it).")] = False
    normalize: Annotated[Optional[str], typer.Option(
        "--normalize", help=f"asr: text normalisation, one of {', '.join(NORMALIZE_CHOICES)} (default: "
        f"{NORMALIZE_CHOICES[0]}).")] = None
    target_language: Annotated[Optional[str], typer.Option(
        "--target-language", help="st: target language for the default prompt and the BLEU tokenizer "
        "(default: each record's target_language/language).")] = None
    plot: Annotated[bool, typer.Option(
        "--plot", help=f"Also draw the score table (all, then each language, task or label) as a bar chart, "
        f"OUTPUT_DIR/{GROUPS_CHART} ({PLOT_HINT}).")] = False
    on_missing: OnMissingOption = ON_MISSING_DEFAULT


@dataclass(frozen=True)
class JudgeOptions:
    """The LLM judge of open answers (``--task open``, AIR-Bench chat): any OpenAI-compatible endpoint."""

    judge_url: Annotated[Optional[str], typer.Option(
        "--judge-url", help="--task open: score the answers 1-10 with an LLM judge at this OpenAI-compatible "
        "endpoint (e.g. http://127.0.0.1:8000/v1 of a local swv serve or vLLM); judgments go to "
        f"OUTPUT_DIR/{JUDGE_SCORES_FILE} and are reused by a rerun.")] = None
    judge_model: Annotated[Optional[str], typer.Option(
        "--judge-model", help="--judge-url: the model name the endpoint serves (required with --judge-url).")] = None
    judge_api_key_env: Annotated[str, typer.Option(
        "--judge-api-key-env", help="--judge-url: the environment variable holding the endpoint's API key "
        "(unset: no key is sent).")] = DEFAULT_JUDGE_KEY_ENV
    judge_timeout: Annotated[float, typer.Option(
        "--judge-timeout", min=1.0, help="--judge-url: seconds to wait for one judgment.")] = DEFAULT_JUDGE_TIMEOUT

    def settings(self, task: str) -> JudgeSettings | None:
        """The judge, checked against the task (``None`` without --judge-url)."""
        from swv.eval.judge import JudgeSettings

        if self.judge_url is None:
            if self.judge_model is not None:
                raise UsageError("--judge-model needs --judge-url")
            return None
        if task != "open":
            raise UsageError(f"--judge-url scores open answers (--task open), not task {task!r}")
        if not self.judge_model:
            raise UsageError("--judge-url needs --judge-model (the model name the endpoint serves)")
        if not self.judge_url.startswith(("http://", "https://")):
            raise UsageError(f"--judge-url: expected an http:// or https:// URL, got {self.judge_url!r}")
        return JudgeSettings(self.judge_url, self.judge_model, self.judge_api_key_env, self.judge_timeout)


@dataclass(frozen=True)
class _Plan:
    """The checked inputs: the manifest to run, its task, the output directory, the scoring options,
    the benchmark's description (``--preset``) and the LLM judge (``--judge-url``)."""

    manifest: Path
    task: str
    out_dir: Path
    normalize: str | None
    target_language: str | None
    benchmark: dict[str, Any] | None = None
    judge: JudgeSettings | None = None


@with_option_groups
def eval_cmd(
    model: ModelSource,
    *,
    inputs: EvalInputs,
    judge: JudgeOptions,
    generation: GenerationOptions,
    run: RunOptions,
    max_duration: MaxDuration = DEFAULT_MAX_DURATION,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Evaluate a model on a test manifest and write a JSON report.

    Runs batch inference into OUTPUT_DIR/predictions.jsonl (resumable) or
    reads --predictions, prints the score table and writes
    OUTPUT_DIR/report.json (model dir, manifest sha256, generation settings,
    fingerprint).

    Resuming: every prediction line carries the run's fingerprint (the model's
    files or Hub commit, the generation settings and system prompt, the prompts,
    the manifest's sha256). A rerun keeps the predictions of the same fingerprint
    and generates only the missing items; predictions of another model, other
    settings or prompts, a changed manifest, or an older swv (no fingerprint) are
    never mixed in: the run stops with one line naming what differs. Give
    another --output-dir, or --overwrite to start over.

    Prompts: the record's instruction/prompt, else the default instruction
    of the record's task (or --task) in the model's table (the one its
    training used: asr "Transcribe the speech.", st "Translate the speech
    into <target language>.", ...). Generation defaults: the model's own,
    the decoding controls included (transcripts and translations capped by
    the audio's length, no long repeated runs of tokens); the report records them
    and counts the answers longer than 2x their reference ('overlong').

    Missing audio: a record or benchmark entry whose audio file does not exist stops
    the run before the model loads (--on-missing fail, the default), or is counted
    as a failed item of the report (--on-missing skip); --predictions needs no audio.

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    windowed, never truncated (clips longer than --max-duration are); items
    whose audio cannot be used count as failed.

    Benchmarks (--preset): the paper's benchmarks with their prompt, normaliser and
    metric; the data comes from --manifest or, with --data, from the benchmark's own
    layout; OUTPUT_DIR (default eval-<preset>) also holds the scored benchmark.jsonl.
    Open answers (AIR-Bench chat) are scored 1-10 by an LLM judge with --judge-url.
    """
    from swv.eval.evaluation import evaluate_model

    plan = _plan(inputs, judge)
    result = evaluate_model(
        model, plan.manifest, plan.task, plan.out_dir,  # type: ignore[arg-type]
        predictions=inputs.predictions, settings=generation.settings(), system=generation.system,
        device=run.device, dtype=run.dtype, batch_size=run.batch_size, max_duration=max_duration,
        normalize=plan.normalize, target_language=plan.target_language, revision=revision, benchmark=plan.benchmark,
        judge=plan.judge, trust_remote_code=trust_remote_code, overwrite=inputs.overwrite,
    )
    _print_result(result, plan)
    if inputs.plot:
        _write_chart(result)


def _write_chart(result: Any) -> None:
    from swv.eval.charts import write_group_chart

    print(f"eval: chart written to {write_group_chart(result.result, result.report.parent / GROUPS_CHART)}",
          file=sys.stderr)


def _plan(inputs: EvalInputs, judge: JudgeOptions) -> _Plan:
    """Check the options, find the manifest (read from --hf-dataset or from a benchmark's own
    layout when asked), the output directory and the judge; check the manifest's audio (unless
    --predictions are scored)."""
    if inputs.plot:
        from swv.core.plotting import require_plotting

        require_plotting("--plot")
    if inputs.hf_dataset is not None:
        inputs = _from_hf_dataset(inputs)
    elif inputs.column:
        raise UsageError("--column needs --hf-dataset")
    plan = _preset_plan(inputs) if inputs.preset is not None else _manifest_plan(inputs)
    if plan.task not in EVAL_TASKS:
        raise UsageError(f"--task: unknown task {plan.task!r}, expected one of {', '.join(EVAL_TASKS)}")
    if plan.normalize is not None and plan.task != "asr":
        raise UsageError("--normalize applies to --task asr only")
    if plan.normalize is not None and plan.normalize not in NORMALIZE_CHOICES:
        raise UsageError(
            f"--normalize: unknown mode {plan.normalize!r}, expected one of {', '.join(NORMALIZE_CHOICES)}")
    if plan.target_language is not None and plan.task != "st":
        raise UsageError("--target-language applies to --task st only")
    if inputs.plot:
        check_charted(plan.task, "--plot")
    plan = replace(plan, judge=judge.settings(plan.task))
    if inputs.predictions is None:
        check_missing_audio("eval", inputs.on_missing, plan.manifest, then=COUNTED_AS_FAILED)
    return plan


def _from_hf_dataset(inputs: EvalInputs) -> EvalInputs:
    """``inputs`` with --hf-dataset's split written as a manifest (in the output directory, which
    gets its default here); --split is used up."""
    from swv.data.hf_sources import hf_eval_manifest

    if inputs.manifest is not None or inputs.data is not None:
        raise UsageError("--hf-dataset replaces --manifest/--data; give one of them")
    assert inputs.hf_dataset is not None
    hf_split = inputs.split or "test"
    name = Path(inputs.hf_dataset).name or "dataset"
    default_dir = f"eval-{inputs.preset}" if inputs.preset is not None else f"eval-{name}-{hf_split}-{inputs.task}"
    output_dir = inputs.output_dir if inputs.output_dir is not None else Path(default_dir)
    manifest = hf_eval_manifest(inputs.hf_dataset, hf_split, _column_map(inputs.column), output_dir)
    return replace(inputs, manifest=manifest, output_dir=output_dir, split=None)


def _preset_plan(inputs: EvalInputs) -> _Plan:
    """--preset: the benchmark fixes the task and the scoring; its manifest is prepared from
    --manifest or from its own layout (--data)."""
    from swv.eval.presets import get_preset, prepare_benchmark_manifest

    assert inputs.preset is not None
    bench = get_preset(inputs.preset)
    fixed = bench.config
    if inputs.task is not None and inputs.task != fixed.task:
        raise UsageError(f"--task {inputs.task} contradicts --preset {inputs.preset} (task {fixed.task})")
    if inputs.normalize is not None or inputs.target_language is not None:
        raise UsageError("--normalize/--target-language are fixed by --preset")
    out_dir = inputs.output_dir if inputs.output_dir is not None else Path(f"eval-{bench.name}")
    manifest = prepare_benchmark_manifest(bench, out_dir, manifest=inputs.manifest, data=inputs.data,
                                          clips=inputs.clips, split=inputs.split)
    return _Plan(manifest, fixed.task, out_dir, fixed.normalize, fixed.target_language, bench.describe())


def _manifest_plan(inputs: EvalInputs) -> _Plan:
    """--manifest and --task: the scoring options as given."""
    if inputs.data is not None or inputs.clips is not None or inputs.split is not None:
        raise UsageError("--data, --clips and --split need --preset")
    if inputs.manifest is None or inputs.task is None:
        raise UsageError("--manifest and --task are required (or use --preset)")
    out_dir = inputs.output_dir if inputs.output_dir is not None else Path(f"eval-{inputs.manifest.stem}-{inputs.task}")
    return _Plan(inputs.manifest, inputs.task, out_dir, inputs.normalize, inputs.target_language)


def _print_result(run: EvalRun, plan: _Plan) -> None:
    """The generation summary and the report's path on stderr, the score table(s) on stdout."""
    from swv.eval.evaluation import format_table

    if run.generation is not None:
        print(f"eval: {run.generation.format()}", file=sys.stderr)
    if plan.benchmark is not None:
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
