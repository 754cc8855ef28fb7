"""``swv infer``: answer an instruction about audio files, stdin, or a whole manifest.

The generation options are shared with ``swv eval`` (:mod:`swv.cli.options`). Heavy modules
(torch, transformers) are imported inside the functions so ``swv --help`` stays fast.
"""

from __future__ import annotations

import os
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
    OnMissing,
    OnMissingOption,
    Revision,
    RunOptions,
    TrustRemoteCode,
    check_missing_audio,
    with_option_groups,
)
from swv.core.audio import DEFAULT_MAX_AUDIO_BYTES, DEFAULT_MAX_DURATION
from swv.core.errors import InputError, UsageError
from swv.infer.chat import DEFAULT_MAX_CHAT_BYTES

if TYPE_CHECKING:
    from swv.infer.pipeline import ChatRequest, GenerationSettings, Pipeline, Stats

STDIN = "-"

# -- the options only `swv infer` has ------------------------------------------------------------
Audio = Annotated[Optional[list[str]], typer.Argument(metavar="AUDIO",
    help="Audio files; '-' reads a WAV (or any soundfile format) from stdin.", show_default=False)]
Prompt = Annotated[Optional[str], typer.Option(
    "--prompt", "-p", help="Instruction about the audio (default: the model's ASR instruction; manifest records "
    "use their own instruction/prompt, else this, else their task's default).")]
Manifest = Annotated[Optional[Path], typer.Option(
    "--manifest", help="Batch mode: a JSONL manifest (audio relative to it); needs --output.")]
Output = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Batch mode: JSONL predictions, appended and resumable (ids already answered by the "
    "same model, settings, prompts and manifest are skipped; a file another run wrote is refused).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Batch mode: start over, discarding the --output file instead of resuming it (needed when "
    "another model, other generation settings or prompts, another manifest or an older swv wrote it).")]
ShowStats = Annotated[bool, typer.Option(
    "--stats", help="Report per request: audio seconds, encoder frames, audio tokens, compression ratio "
    "(audio tokens / encoder frames), time to first token, tokens/s (stderr; a 'stats' field in batch "
    "mode).")]
Cot = Annotated[bool, typer.Option(
    "--cot", help="The answer starts with a transcript (chain of thought): the token budget grows by the "
    "clip's audio tokens so the answer is not cut (manifest records with \"cot\": true get this anyway).")]
Chat = Annotated[Optional[Path], typer.Option(
    "--chat", help="Continue the conversation in this JSON file (OpenAI-style messages; audio parts as "
    "{'type': 'audio', 'path': ...} relative to the file, or input_audio): AUDIO and --prompt form a new "
    "user turn; the answer is streamed and appended to the file.")]
MaxAudioBytes = Annotated[int, typer.Option(
    "--max-audio-bytes", min=1, help="Largest audio read from stdin ('-'), in bytes; more is an error.")]
MaxChatBytes = Annotated[int, typer.Option(
    "--max-chat-bytes", min=1, help="Largest --chat conversation file read, in bytes; larger is an error.")]


@dataclass(frozen=True)
class _Job:
    """What every mode of ``swv infer`` needs: the model, how to load and run it, what to report."""

    model_dir: Path
    settings: GenerationSettings
    system: str | None
    run: RunOptions
    max_duration: float | None
    stats: bool
    trust_remote_code: bool
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES
    max_chat_bytes: int = DEFAULT_MAX_CHAT_BYTES
    on_missing: str = ON_MISSING_DEFAULT.value

    def load(self) -> Pipeline:
        from swv.infer import batch

        return batch.load_pipeline(self.model_dir, self.run.device, self.run.dtype, self.system, self.trust_remote_code)


def _err(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


# -- single files and stdin --------------------------------------------------------------------
def _decode(source: str, max_audio_bytes: int) -> tuple[Any, int, str]:
    """Decode a path or ``-`` (a WAV on stdin, at most ``max_audio_bytes``): ``(samples, rate, name)``."""
    from swv.core.io import read_stdin
    from swv.model.processor import decode_audio

    if source == STDIN:
        data = read_stdin(sys.stdin.buffer, "audio on stdin", max_audio_bytes, "--max-audio-bytes")
        return decode_audio(data, name="<stdin>")
    return decode_audio(Path(source))


def _print_answer(pipe: Pipeline, request: ChatRequest, settings: GenerationSettings) -> tuple[str, Stats]:
    """Print the answer as it is generated, or, for a transcript the CTC head rescores
    (``--ctc-weight``), once it is chosen; then a newline."""
    if pipe.rescores(request, settings):
        result = pipe.generate_requests([request], settings)[0]
        typer.echo(result.text)
        return result.text, result.stats
    return _print_stream(pipe, request, settings)


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


def _run_files(sources: list[str], prompt: str | None, job: _Job) -> int:
    """Answer for each file; returns the number of files that failed."""
    if sources.count(STDIN) > 1:
        raise UsageError("'-' (stdin) can be given only once")
    decoded, failed = [], 0
    for source in sources:
        try:
            decoded.append(_decode(source, job.max_audio_bytes))
        except InputError as exc:
            if len(sources) == 1:
                raise
            _err(str(exc))
            failed += 1
    if not decoded:
        return failed
    pipe = job.load()
    prompt = pipe.default_prompt() if prompt is None else prompt
    waveforms = []
    for samples, rate, name in decoded:
        try:
            waveforms.append(pipe.prepare(samples, rate, name, max_duration=job.max_duration))
        except InputError as exc:
            if len(sources) == 1:
                raise
            _err(str(exc))
            failed += 1
    if len(sources) == 1:
        _, result_stats = _print_answer(pipe, pipe.request(waveforms[0], prompt), job.settings)
        if job.stats:
            print(f"stats: {result_stats.format()}", file=sys.stderr)
        return failed
    results = pipe.generate(waveforms, [prompt] * len(waveforms), job.settings, batch_size=job.run.batch_size)
    for waveform, result in zip(waveforms, results):
        typer.echo(f"{waveform.name}\t{' '.join(result.text.splitlines())}")
        if job.stats:
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


def _run_chat(conversation: Path, sources: list[str], prompt: str | None, job: _Job) -> None:
    """Continue the conversation in ``conversation``: AUDIO files and --prompt (when AUDIO is
    given or the last turn is the assistant's) form a new user turn; the answer is streamed and
    the conversation, answer included, is written back to the file."""
    from swv.core.io import atomic_write_text
    from swv.infer.chat import load_conversation, user_turn

    if STDIN in sources:
        raise UsageError("--chat takes audio files, not '-' (stdin)")
    messages = load_conversation(conversation, job.max_chat_bytes)
    base = conversation.parent
    if sources or not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        messages.append(user_turn([_stored_path(s, base) for s in sources], prompt))
    pipe = job.load()
    request = pipe.chat_request(messages, max_duration=job.max_duration, base_dir=base)
    answer, result_stats = _print_answer(pipe, request, job.settings)
    if job.stats:
        print(f"stats: {result_stats.format()}", file=sys.stderr)
    messages.append({"role": "assistant", "content": answer})
    import json

    # written where a symlink points: the link stays a link
    atomic_write_text(os.path.realpath(conversation), json.dumps({"messages": messages}, indent=2, ensure_ascii=False) + "\n")


# -- manifest ----------------------------------------------------------------------------------
def _run_manifest(manifest: Path, output: Path, prompt: str | None, job: _Job, overwrite: bool) -> None:
    from swv.infer import batch

    check_missing_audio("infer", job.on_missing, manifest, then=COUNTED_AS_FAILED)  # before the model loads

    table = batch.saved_instructions(job.model_dir)
    items = batch.read_items(
        manifest, lambda record, where: batch.record_instruction(record, where) or prompt or batch.task_prompt(record, where, "asr", instructions=table)
    )  # a record's task is its own 'task' field; without one its instruction decides (the length bound)
    fingerprint = batch.manifest_fingerprint(job.model_dir, manifest, items, job.settings, job.system)
    summary = batch.run_manifest(
        job.load, manifest, items, output, job.settings,
        batch_size=job.run.batch_size, max_duration=job.max_duration, with_stats=job.stats,
        fingerprint=fingerprint, overwrite=overwrite, elsewhere="another --output file",
    )
    print(f"infer: {summary.format()}", file=sys.stderr)
    if summary.failed:
        raise InputError(
            f"{manifest}: {summary.failed} of {summary.total} item(s) failed (their 'error' is in {output}); "
            "rerun the same command to retry them"
        )


@with_option_groups
def infer(
    model: ModelSource,
    audio: Audio = None,
    prompt: Prompt = None,
    manifest: Manifest = None,
    output: Output = None,
    overwrite: Overwrite = False,
    *,
    generation: GenerationOptions,
    run: RunOptions,
    stats: ShowStats = False,
    max_duration: MaxDuration = DEFAULT_MAX_DURATION,
    cot: Cot = False,
    chat: Chat = None,
    revision: Revision = None,
    trust_remote_code: TrustRemoteCode = False,
    max_audio_bytes: MaxAudioBytes = DEFAULT_MAX_AUDIO_BYTES,
    max_chat_bytes: MaxChatBytes = DEFAULT_MAX_CHAT_BYTES,
    on_missing: OnMissingOption = ON_MISSING_DEFAULT,
) -> None:
    """Answer an instruction about speech.

    One file: the answer is streamed to stdout.
    Several files: one 'FILE<TAB>answer' line per file; unreadable files
    are reported on stderr and the exit code is 1.
    Batch mode (--manifest, --output): one JSON line per record with 'id',
    'prediction' (or 'error' for a bad item; the run goes on, then exits 1
    with the count of failed items) and the record's reference fields; rerun
    the same command to resume and retry the failed items. Lines carry the
    run's fingerprint (model, generation settings, prompts, manifest sha256):
    a file written by another run or an older swv is refused, naming what
    differs; give another --output, or --overwrite to start over. A record
    whose audio file does not exist stops the run before the model loads
    (--on-missing fail, the default) or is a counted failed item (skip).

    Conversation (--chat FILE): continue a multi-turn audio chat saved as
    JSON; the new answer is appended to FILE (a symlink stays one).

    Long audio: clips longer than the encoder window (30 s for Whisper) are
    split into consecutive windows whose encoder outputs are joined before
    the adapters; nothing is truncated. Clips longer than --max-duration
    (default 10 minutes) are rejected.

    Runaway answers: a transcript or translation stops where the audio runs out
    (--length-bound), no answer repeats a long run of tokens (--no-repeat-ngram-size).
    """
    from swv.core.hub import resolve_model

    settings = replace(generation.settings(), transcript_first=True) if cot else generation.settings()
    job = _Job(resolve_model(model, revision), settings, generation.system, run, max_duration, stats, trust_remote_code,
               max_audio_bytes, max_chat_bytes, OnMissing(on_missing).value)
    _dispatch(job, list(audio or []), prompt, manifest, output, overwrite, chat)


def _dispatch(job: _Job, audio: list[str], prompt: str | None, manifest: Path | None, output: Path | None,
              overwrite: bool, chat: Path | None) -> None:
    """Run the mode the options select: a conversation, a manifest, or audio files."""
    if chat is not None:
        if manifest is not None or output is not None:
            raise UsageError("--chat cannot be combined with --manifest/--output")
        _run_chat(chat, audio, prompt, job)
    elif manifest is not None:
        if audio:
            raise UsageError("give AUDIO files or --manifest, not both")
        if output is None:
            raise UsageError("--manifest needs --output (the predictions JSONL)")
        _run_manifest(manifest, output, prompt, job, overwrite)
    elif overwrite:
        raise UsageError("--overwrite is for batch mode; use it with --manifest/--output")
    elif output is not None:
        raise UsageError("--output is for batch mode; use it with --manifest")
    elif not audio:
        raise UsageError("give one or more AUDIO files ('-' for stdin) or --manifest")
    elif _run_files(audio, prompt, job):
        raise typer.Exit(1)
