"""``swv serve``: an OpenAI-compatible chat server (and a web page) for a model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from swv.cli.options import (
    Device,
    Dtype,
    GenerationOptions,
    LengthBound,
    NoRepeatNgramSize,
    RepetitionPenalty,
    System,
)
from swv.core.errors import UsageError


def serve(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by training / SpeechLM.save_pretrained.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8000,
    model_name: Annotated[Optional[str], typer.Option(
        "--model-name", help="Model id clients send and /v1/models lists (default: the directory's name).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most requests generated together.")] = 8,
    batch_window_ms: Annotated[float, typer.Option(
        "--batch-window-ms", min=0.0, help="How long to collect concurrent requests into one batch.")] = 10.0,
    max_audio_seconds: Annotated[float, typer.Option(
        "--max-audio-seconds", min=0.0, help="Reject clips longer than this (400).")] = 60.0,
    max_context: Annotated[Optional[int], typer.Option(
        "--max-context", min=2, help="Most prompt tokens (text + audio) + max_tokens per request "
        "(default: the backbone's max_position_embeddings).")] = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", min=1, help="max_tokens of requests that do not set it.")] = 256,
    length_bound: LengthBound = None,
    no_repeat_ngram_size: NoRepeatNgramSize = None,
    repetition_penalty: RepetitionPenalty = None,
    system: System = None,
    device: Device = "cpu",
    dtype: Dtype = None,
) -> None:
    """Serve a model over HTTP: POST /v1/chat/completions (OpenAI-compatible,
    audio as input_audio parts, stream: true for server-sent events),
    GET /v1/models, GET /health, and a web page at /.

    Concurrent requests are batched: requests arriving within --batch-window-ms
    of each other (up to --max-batch) are generated together.

    Runaway answers: a transcript or translation stops where its audio runs
    out (finish_reason "length"), and no answer repeats a long run of tokens;
    the model's defaults, changed for every request by the options.
    """
    try:
        import uvicorn

        from swv.serve.app import create_app
        from swv.serve.settings import ServeSettings, model_context_length
    except ImportError as exc:
        raise UsageError(f"swv serve needs the 'serve' extra (pip install 'swv[serve]'): {exc}") from None
    from swv.infer import batch

    pipe = batch.load_pipeline(model_dir, device, dtype, system)
    context = max_context or model_context_length(pipe)
    if context is None:
        raise UsageError("the backbone config has no max_position_embeddings; give --max-context")
    settings = ServeSettings(
        model_id=model_name or model_dir.resolve().name,
        max_context=context,
        max_batch=max_batch,
        batch_window_seconds=batch_window_ms / 1000,
        max_audio_seconds=max_audio_seconds,
        default_max_tokens=max_tokens,
        generation=GenerationOptions(length_bound=length_bound, no_repeat_ngram_size=no_repeat_ngram_size,
                                     repetition_penalty=repetition_penalty).settings(),
    )
    app = create_app(pipe, settings)
    print(f"serve: model {settings.model_id!r}, context {context} tokens, batches of up to {max_batch}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info")
