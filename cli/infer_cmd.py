"""``swv infer``: answer an instruction about audio files, stdin, or a whole manifest.

The generation options are defined once here and shared with ``swv eval``. Heavy modules
(torch, transformers) are imported inside the functions so ``swv --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from swv.core.audio import DEFAULT_MAX_DURATION
from swv.core.errors import InputError, UsageError
from swv.model.defaults import GenerationDefaults

if TYPE_CHECKING:
    from swv.infer.pipeline import ChatRequest, GenerationSettings, Pipeline, Stats

STDIN = "-"

# -- options shared with `swv eval` ----------------------------------------------------------
MaxNewTokens = Annotated[Optional[int], typer.Option(
    "--max-new-tokens", min=1, help="Most tokens generated per answer (default: the model's, 256 unless it says otherwise).")]
Temperature = Annotated[Optional[float], typer.Option(
    "--temperature", help="Sampling temperature (> 0; with --do-sample; default: the model's).")]
TopP = Annotated[Optional[float], typer.Option(
    "--top-p", help="Nucleus sampling mass in (0, 1] (with --do-sample; default: the model's).")]
DoSample = Annotated[Optional[bool], typer.Option(
    "--do-sample/--greedy", help="Sample instead of greedy decoding (default: the model's; greedy unless it says otherwise).")]
_DECODING = GenerationDefaults()
LengthBound = Annotated[Optional[bool], typer.Option(
    "--length-bound/--no-length-bound",
    help="Cap transcripts and translations (task asr/st, or the model's default instruction of one) at what the "
    f"audio can hold: ceil(max({_DECODING.length_bound_tokens_per_second:g} tokens per second of audio, "
    f"{_DECODING.length_bound_per_audio_token:g} per audio token)) + {_DECODING.length_bound_margin} new tokens "
    "unless the model says otherwise, never above --max-new-tokens (default: the model's; on for swv-trained "
    "models, off for imported released ones).")]
NoRepeatNgramSize = Annotated[Optional[int], typer.Option(
    "--no-repeat-ngram-size", min=0,
    help="Never repeat a run of this many tokens within an answer; 0: off (default: the model's; "
    f"{_DECODING.no_repeat_ngram_size} for swv-trained models, 0 for imported released ones).")]
RepetitionPenalty = Annotated[Optional[float], typer.Option(
    "--repetition-penalty",
    help="Divide the scores of tokens already in the answer by this (> 0; 1.0: off, the default unless the "
    "model says otherwise; above 1 discourages repeats, also of words a normal answer repeats).")]
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
ModelSource = Annotated[str, typer.Argument(
    metavar="MODEL", help="Model directory written by training / SpeechLM.save_pretrained, or a Hugging Face Hub id.")]
Revision = Annotated[Optional[str], typer.Option(
    "--revision", help="Branch, tag or commit of a Hub id MODEL (offline with HF_HUB_OFFLINE=1: from the cache).")]
MaxDuration = Annotated[float, typer.Option(
    "--max-duration", min=0.0,
    help="Longest clip accepted, in seconds; longer ones are an error. Memory grows linearly with the "
    "duration: raise it for longer audio.")]


def generation_settings(
    max_new_tokens: int | None, do_sample: bool | None, temperature: float | None, top_p: float | None, seed: int | None,
    length_bound: bool | None = None, no_repeat_ngram_size: int | None = None, repetition_penalty: float | None = None,
) -> GenerationSettings:
    from swv.infer.pipeline import GenerationSettings

    return GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                              top_p=top_p, seed=seed, length_bound=length_bound,
                              no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty)


def _err(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


# -- single files and stdin --------------------------------------------------------------------
def _decode(source: str) -> tuple[Any, int, str]:
    """Decode a path or ``-`` (a WAV on stdin): ``(samples, rate, name)``."""
    from swv.model.processor import decode_audio

    if source == STDIN:
        return decode_audio(sys.stdin.buffer.read(), name="<stdin>")
    return decode_audio(Path(source))


def _print_stream(pipe: Pipeline, request: ChatRequest, settings: GenerationSettings) -> tuple[str, Stats]:
    """Print the answer as it is generated (surrounding whitespace dropped), then a newline."""
    from swv.infer.pipeline import TextStream

    stream = TextStream(pipe, request, settings)
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
    assert stream.stats is not None and stream.text is not None
    return stream.text, stream.stats


def _run_files(
    sources: list[str], model_dir: Path, prompt: str | None, settings: GenerationSettings, *, system: str | None,
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
    prompt = pipe.default_prompt() if prompt is None else prompt
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
        _, result_stats = _print_stream(pipe, pipe.request(waveforms[0], prompt), settings)
        if stats:
            print(f"stats: {result_stats.format()}", file=sys.stderr)
        return failed
    results = pipe.generate(waveforms, [prompt] * len(waveforms), settings, batch_size=batch_size)
    for waveform, result in zip(waveforms, results):
        typer.echo(f"{waveform.name}\t{' '.join(result.text.splitlines())}")
        if stats:
            print(f"stats: {waveform.name}: {result.stats.format()}", file=sys.stderr)
    return failed


# -- conversation ------------------------------------------------------------------------------
def _stored_path(source: str, base: Path) -> str:
    """An audio path as written into a conversation file: relative to the file when below it."""
    path = Path(source).resolve()
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _run_chat(
    conversation: Path, sources: list[str], model_dir: Path, prompt: str | None, settings: GenerationSettings, *,
    system: str | None, device: str, dtype: str | None, max_duration: float | None, stats: bool,
    trust_remote_code: bool,
) -> None:
    """Continue the conversation in ``conversation``: AUDIO files and --prompt (when AUDIO is
    given or the last turn is the assistant's) form a new user turn; the answer is streamed and
    the conversation, answer included, is written back to the file."""
    from swv.core.io import atomic_write_text
    from swv.infer import batch
    from swv.infer.chat import load_conversation, user_turn

    if STDIN in sources:
        raise UsageError("--chat takes audio files, not '-' (stdin)")
    messages = load_conversation(conversation)
    base = conversation.parent
    if sources or not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        messages.append(user_turn([_stored_path(s, base) for s in sources], prompt))
    pipe = batch.load_pipeline(model_dir, device, dtype, system, trust_remote_code)
    request = pipe.chat_request(messages, max_duration=max_duration, base_dir=base)
    answer, result_stats = _print_stream(pipe, request, settings)
    if stats:
        print(f"stats: {result_stats.format()}", file=sys.stderr)
    messages.append({"role": "assistant", "content": answer})
    import json

    atomic_write_text(conversation, json.dumps({"messages": messages}, indent=2, ensure_ascii=False) + "\n")


# -- manifest ----------------------------------------------------------------------------------
def _run_manifest(
    manifest: Path, output: Path, model_dir: Path, prompt: str | None, settings: GenerationSettings, *,
    system: str | None, device: str, dtype: str | None, batch_size: int, max_duration: float | None, stats: bool,
    trust_remote_code: bool,
) -> None:
    from swv.infer import batch

    table = batch.saved_instructions(model_dir)
    items = batch.read_items(
        manifest, lambda record, where: batch.record_instruction(record, where) or prompt or batch.task_prompt(record, where, "asr", instructions=table)
    )  # a record's task is its own 'task' field; without one its instruction decides (the length bound)
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
    model: ModelSource,
    audio: Annotated[Optional[list[str]], typer.Argument(
        help="Audio files; '-' reads a WAV (or any soundfile format) from stdin.", show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", "-p", help="Instruction about the audio (default: the model's ASR instruction; manifest records "
        "use their own instruction/prompt, else this, else their task's default).")] = None,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="Batch mode: a JSONL manifest (audio relative to it); needs --output.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Batch mode: JSONL predictions, appended and resumable (ids already there are "
        "skipped).")] = None,
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
    stats: Annotated[bool, typer.Option(
        "--stats", help="Report per request: audio seconds, encoder frames, audio tokens, compression ratio "
        "(audio tokens / encoder frames), time to first token, tokens/s (stderr; a 'stats' field in batch "
        "mode).")] = False,
    max_duration: MaxDuration = DEFAULT_MAX_DURATION,
    cot: Annotated[bool, typer.Option(
        "--cot", help="The answer starts with a transcript (chain of thought): the token budget grows by the "
        "clip's audio tokens so the answer is not cut (manifest records with \"cot\": true get this anyway).")] = False,
    chat: Annotated[Optional[Path], typer.Option(
        "--chat", help="Continue the conversation in this JSON file (OpenAI-style messages; audio parts as "
        "{'type': 'audio', 'path': ...} relative to the file, or input_audio): AUDIO and --prompt form a new "
        "user turn; the answer is streamed and appended to the file.")] = None,
    revision: Revision = None,
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

    Conversation (--chat FILE): continue a multi-turn audio chat saved as
    JSON; the new answer is appended to FILE, so the next call goes on.

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    split into consecutive windows whose encoder outputs are joined before
    the adapters; nothing is truncated. Clips longer than --max-duration
    (default 10 minutes) are rejected.

    Runaway answers: a transcript or translation stops where the audio runs
    out (--length-bound), and no answer repeats a long run of tokens
    (--no-repeat-ngram-size); both are the model's defaults, see the options.
    """
    from swv.core.hub import resolve_model

    settings = generation_settings(max_new_tokens, do_sample, temperature, top_p, seed, length_bound,
                                   no_repeat_ngram_size, repetition_penalty)
    if cot:
        from dataclasses import replace

        settings = replace(settings, transcript_first=True)
    model_dir = resolve_model(model, revision)
    common = dict(system=system, device=device, dtype=dtype, batch_size=batch_size, max_duration=max_duration,
                  stats=stats, trust_remote_code=trust_remote_code)
    if chat is not None:
        if manifest is not None or output is not None:
            raise UsageError("--chat cannot be combined with --manifest/--output")
        _run_chat(chat, list(audio or []), model_dir, prompt, settings, system=system, device=device, dtype=dtype,
                  max_duration=max_duration, stats=stats, trust_remote_code=trust_remote_code)
        return
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
