"""``swv infer``: answer an instruction about audio files, stdin, or a whole manifest.

The generation options are defined once here and shared with ``swv eval``. Heavy modules
(torch, transformers) are imported inside the functions so ``swv --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from swv.errors import InputError, UsageError
from swv.recipes.schema import ASR_INSTRUCTION, DEFAULT_MAX_DURATION

if TYPE_CHECKING:
    from swv.infer.pipeline import GenerationSettings, Pipeline, Stats, Waveform

DEFAULT_PROMPT = ASR_INSTRUCTION
STDIN = "-"

# -- options shared with `swv eval` ----------------------------------------------------------
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens generated per answer.")]
Temperature = Annotated[float, typer.Option("--temperature", help="Sampling temperature (> 0; with --do-sample).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1] (with --do-sample).")]
DoSample = Annotated[bool, typer.Option("--do-sample/--greedy", help="Sample instead of greedy decoding.")]
System = Annotated[Optional[str], typer.Option(
    "--system", help="System prompt (default: the one saved with the model, i.e. the paper's; '' for none).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed torch's RNG once before generating.")]
Device = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1, mps...")]
Dtype = Annotated[Optional[str], typer.Option(
    "--dtype", help="Cast the model to float32, float16 or bfloat16 (default: as saved).")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Let a model component that asks for it run the Python code its directory ships "
    "(a model directory can never enable this itself). Review that code first.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Inputs generated together.")]
MaxDuration = Annotated[float, typer.Option(
    "--max-duration", min=0.0,
    help="Longest clip accepted, in seconds; longer ones are an error. Memory grows linearly with the "
    "duration: raise it for longer audio.")]


def generation_settings(
    max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, seed: int | None
) -> GenerationSettings:
    from swv.infer.pipeline import GenerationSettings

    return GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                              top_p=top_p, seed=seed)


def _err(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


# -- single files and stdin --------------------------------------------------------------------
def _decode(source: str) -> tuple[Any, int, str]:
    """Decode a path or ``-`` (a WAV on stdin): ``(samples, rate, name)``."""
    from swv.infer.pipeline import decode_audio

    if source == STDIN:
        return decode_audio(sys.stdin.buffer.read(), name="<stdin>")
    return decode_audio(Path(source))


def _print_stream(pipe: Pipeline, waveform: Waveform, prompt: str, settings: GenerationSettings) -> Stats:
    """Print the answer as it is generated (surrounding whitespace dropped), then a newline."""
    from swv.infer.pipeline import TextStream

    stream = TextStream(pipe, waveform, prompt, settings)
    started, pending = False, ""
    for piece in stream:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        body = piece.rstrip()
        if body:
            sys.stdout.write(pending + body)
            sys.stdout.flush()
            pending = piece[len(body):]
        else:
            pending += piece
    sys.stdout.write("\n")
    sys.stdout.flush()
    assert stream.stats is not None
    return stream.stats


def _run_files(
    sources: list[str], model_dir: Path, prompt: str, settings: GenerationSettings, *, system: str | None,
    device: str, dtype: str | None, batch_size: int, max_duration: float | None, stats: bool, trust_remote_code: bool,
) -> int:
    """Answer for each file; returns the number of files that failed."""
    if sources.count(STDIN) > 1:
        raise UsageError("'-' (stdin) can be given only once")
    decoded, failed = [], 0
    for source in sources:
        try:
            decoded.append(_decode(source))
        except InputError as exc:
            if len(sources) == 1:
                raise
            _err(str(exc))
            failed += 1
    if not decoded:
        return failed
    from swv.infer import batch

    pipe = batch.load_pipeline(model_dir, device, dtype, system, trust_remote_code)
    waveforms = []
    for samples, rate, name in decoded:
        try:
            waveforms.append(pipe.prepare(samples, rate, name, max_duration=max_duration))
        except InputError as exc:
            if len(sources) == 1:
                raise
            _err(str(exc))
            failed += 1
    if len(sources) == 1:
        result_stats = _print_stream(pipe, waveforms[0], prompt, settings)
        if stats:
            print(f"stats: {result_stats.format()}", file=sys.stderr)
        return failed
    results = pipe.generate(waveforms, [prompt] * len(waveforms), settings, batch_size=batch_size)
    for waveform, result in zip(waveforms, results):
        typer.echo(f"{waveform.name}\t{' '.join(result.text.splitlines())}")
        if stats:
            print(f"stats: {waveform.name}: {result.stats.format()}", file=sys.stderr)
    return failed


# -- manifest ----------------------------------------------------------------------------------
def _run_manifest(
    manifest: Path, output: Path, model_dir: Path, prompt: str, settings: GenerationSettings, *,
    system: str | None, device: str, dtype: str | None, batch_size: int, max_duration: float | None, stats: bool,
    trust_remote_code: bool,
) -> None:
    from swv.infer import batch

    items = batch.read_items(manifest, lambda record, where: batch.record_instruction(record, where) or prompt)
    summary = batch.run_manifest(
        lambda: batch.load_pipeline(model_dir, device, dtype, system, trust_remote_code), manifest, items, output, settings,
        batch_size=batch_size, max_duration=max_duration, with_stats=stats,
    )
    print(f"infer: {summary.format()}", file=sys.stderr)
    if summary.failed:
        raise InputError(
            f"{manifest}: {summary.failed} of {summary.total} item(s) failed (their 'error' is in {output}); "
            "rerun the same command to retry them"
        )


def infer(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by training / SpeechLM.save_pretrained.")],
    audio: Annotated[Optional[list[str]], typer.Argument(
        help="Audio files; '-' reads a WAV (or any soundfile format) from stdin.", show_default=False)] = None,
    prompt: Annotated[str, typer.Option(
        "--prompt", "-p", help="Instruction about the audio (manifest records use their own instruction/prompt "
        "when they have one).")] = DEFAULT_PROMPT,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Batch mode: a JSONL manifest (audio relative to it); needs --output.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Batch mode: JSONL predictions, appended and resumable (ids already there are "
        "skipped).")] = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    do_sample: DoSample = False,
    system: System = None,
    seed: Seed = None,
    device: Device = "cpu",
    dtype: Dtype = None,
    batch_size: BatchSize = 8,
    stats: Annotated[bool, typer.Option(
        "--stats", help="Report per request: audio seconds, encoder frames, audio tokens, compression ratio "
        "(audio tokens / encoder frames), time to first token, tokens/s (stderr; a 'stats' field in batch "
        "mode).")] = False,
    max_duration: MaxDuration = DEFAULT_MAX_DURATION,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Answer an instruction about speech.

    One file: the answer is streamed to stdout.
    Several files: one 'FILE<TAB>answer' line per file; unreadable files
    are reported on stderr and the exit code is 1.
    Batch mode (--manifest, --output): one JSON line per record with 'id',
    'prediction' (or 'error' for a bad item; the run goes on, then exits 1
    with the count of failed items) and the record's reference fields; rerun
    the same command to resume and retry the failed items.

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    split into consecutive windows whose encoder outputs are joined before
    the adapters; nothing is truncated. Clips longer than --max-duration
    (default 10 minutes) are rejected.
    """
    settings = generation_settings(max_new_tokens, do_sample, temperature, top_p, seed)
    common = dict(system=system, device=device, dtype=dtype, batch_size=batch_size, max_duration=max_duration,
                  stats=stats, trust_remote_code=trust_remote_code)
    if manifest is not None:
        if audio:
            raise UsageError("give AUDIO files or --manifest, not both")
        if output is None:
            raise UsageError("--manifest needs --output (the predictions JSONL)")
        _run_manifest(manifest, output, model_dir, prompt, settings, **common)
        return
    if output is not None:
        raise UsageError("--output is for batch mode; use it with --manifest")
    if not audio:
        raise UsageError("give one or more AUDIO files ('-' for stdin) or --manifest")
    failed = _run_files(list(audio), model_dir, prompt, settings, **common)
    if failed:
        raise typer.Exit(1)
