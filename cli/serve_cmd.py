"""``swv serve``: an OpenAI-compatible chat server (and a web page) for a model."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from swv.cli.options import (
    CtcWeight,
    Device,
    Dtype,
    GenerationOptions,
    LengthBound,
    NoRepeatNgramSize,
    RepetitionPenalty,
    System,
    with_option_groups,
)
from swv.core.devices import AUTO_DEVICE
from swv.core.errors import UsageError
from swv.serve import limits


@dataclasses.dataclass(frozen=True)
class RequestBounds:
    """What one request may cost, each checked before the work it bounds (the fields of
    :class:`swv.serve.settings.ServeSettings` of the same names)."""

    max_audio_seconds: Annotated[float, typer.Option(
        "--max-audio-seconds", min=0.0,
        help="Reject clips longer than this (400; read from the header).")] = limits.MAX_AUDIO_SECONDS
    max_request_audio_seconds: Annotated[float, typer.Option(
        "--max-request-audio-seconds", min=0.0,
        help="Reject requests whose clips last longer than this together.")] = limits.MAX_REQUEST_AUDIO_SECONDS
    max_clips: Annotated[int, typer.Option("--max-clips", min=1, help="Most audio clips per request.")] = limits.MAX_CLIPS
    max_audio_channels: Annotated[int, typer.Option(
        "--max-audio-channels", min=1, help="Reject clips with more channels than this.")] = limits.MAX_AUDIO_CHANNELS
    max_text_chars: Annotated[int, typer.Option(
        "--max-text-chars", min=0,
        help="Most characters of text per request (checked before tokenizing).")] = limits.MAX_TEXT_CHARS
    max_body_bytes: Annotated[int, typer.Option(
        "--max-body-bytes", min=0, help="Largest request body (413), chunked bodies included.")] = limits.MAX_BODY_BYTES
    body_buffer_bytes: Annotated[int, typer.Option(
        "--body-buffer-bytes", min=1,
        help="Bytes of request bodies read and parsed at once, over all requests (others wait; 503 after "
             "--body-timeout).")] = limits.BODY_BUFFER_BYTES
    body_buffer_reserve: Annotated[int, typer.Option(
        "--body-buffer-reserve", min=0,
        help="The last bytes of --body-buffer-bytes (at most half), which only bodies of at most this size may "
             "take, so big bodies in flight do not make small requests wait.")] = limits.BODY_BUFFER_RESERVE
    max_json_depth: Annotated[int, typer.Option(
        "--max-json-depth", min=1, help="Deepest JSON nesting of a request body.")] = limits.MAX_JSON_DEPTH
    max_json_structure_bytes: Annotated[int, typer.Option(
        "--max-json-structure-bytes", min=0,
        help="Most bytes of a body's JSON outside its strings (keys, numbers, brackets).")] = limits.MAX_JSON_STRUCTURE_BYTES
    work_threads: Annotated[int, typer.Option(
        "--work-threads", min=1, help="Requests parsed, decoded and tokenized at once (the cheapest step first).")] = limits.WORK_THREADS


@dataclasses.dataclass(frozen=True)
class Batching:
    """How concurrent requests share the model (see swv.serve.scheduler and swv.serve.batcher)."""

    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most requests generated together.")] = 8
    batch_window_ms: Annotated[float, typer.Option(
        "--batch-window-ms", min=0.0, help="How long an idle server collects concurrent requests into one batch.")] = 10.0
    scheduling: Annotated[str, typer.Option(
        "--scheduling", help="continuous: requests join and leave the running batch at token boundaries; "
        "window: a batch runs to completion.")] = limits.CONTINUOUS
    prefill_audio_seconds: Annotated[float, typer.Option(
        "--prefill-audio-seconds", help="Continuous scheduling: most seconds of newcomers' audio encoded and "
        "prefilled between two decoding steps (a longer request alone; the others wait a step).")
    ] = limits.PREFILL_AUDIO_SECONDS
    prefill_text_tokens: Annotated[int, typer.Option(
        "--prefill-text-tokens", min=1, help="Continuous scheduling: most text tokens of newcomers' prompts "
        "prefilled between two decoding steps (a longer prompt alone; the others wait a step).")
    ] = limits.PREFILL_TEXT_TOKENS
    prefill_chunk_tokens: Annotated[int, typer.Option(
        "--prefill-chunk-tokens", min=1, help="Continuous scheduling: a prompt longer than this many positions "
        "(text and audio) is prefilled this many per decoding step (chunked prefill).")] = limits.PREFILL_CHUNK_TOKENS
    long_encode_nice: Annotated[int, typer.Option(
        "--long-encode-nice", min=0, max=19, help="Continuous scheduling: the audio of long requests is encoded in a "
        "thread of its own, its nice value raised by this (Linux; 0: unchanged).")] = limits.LONG_ENCODE_NICE
    long_step_every: Annotated[int, typer.Option(
        "--long-step-every", min=1, help="Continuous scheduling: long requests' rows run in a batch of their own, "
        "stepped every this many decoding steps while short requests run (1: every step).")] = limits.LONG_STEP_EVERY
    long_audio_seconds: Annotated[float, typer.Option(
        "--long-audio-seconds", help="Continuous scheduling: a request with more audio than this is long "
        "(see --max-long-rows).")] = limits.LONG_AUDIO_SECONDS
    long_text_tokens: Annotated[int, typer.Option(
        "--long-text-tokens", min=1, help="Continuous scheduling: a request with more prompt text tokens than "
        "this is long (see --max-long-rows).")] = limits.LONG_TEXT_TOKENS
    max_long_rows: Annotated[Optional[int], typer.Option(
        "--max-long-rows", min=1, help="Continuous scheduling: most long requests running at once, so the other "
        "rows stay free for short ones (default: a quarter of --max-batch, at least 1).")] = limits.MAX_LONG_ROWS

    def __post_init__(self) -> None:
        """A misspelt --scheduling, or a non-positive --prefill-audio-seconds or --long-audio-seconds, is refused
        before the model loads."""
        if self.scheduling not in limits.SCHEDULING:
            raise UsageError(f"--scheduling must be one of {', '.join(limits.SCHEDULING)}, got {self.scheduling!r}")
        for flag, value in (("--prefill-audio-seconds", self.prefill_audio_seconds),
                            ("--long-audio-seconds", self.long_audio_seconds)):
            if not value > 0:  # NaN included
                raise UsageError(f"{flag} must be > 0, got {value}")

    def settings_fields(self) -> dict[str, Any]:
        """The ServeSettings fields of these options."""
        return {"max_batch": self.max_batch, "batch_window_seconds": self.batch_window_ms / 1000,
                "scheduling": self.scheduling, "prefill_audio_seconds": self.prefill_audio_seconds,
                "prefill_text_tokens": self.prefill_text_tokens, "long_audio_seconds": self.long_audio_seconds,
                "long_text_tokens": self.long_text_tokens, "max_long_rows": self.max_long_rows,
                "prefill_chunk_tokens": self.prefill_chunk_tokens, "long_encode_nice": self.long_encode_nice,
                "long_step_every": self.long_step_every}


@dataclasses.dataclass(frozen=True)
class Access:
    """Who may use the server (see swv.serve.security)."""

    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="SWV_API_KEY", show_envvar=True,
        help="Require 'Authorization: Bearer KEY' on /v1/ routes (prefer the environment variable: "
             "a flag shows in the process list).")] = None
    allowed_origins: Annotated[Optional[list[str]], typer.Option(
        "--allowed-origins", help="Web origins allowed to call the API from a browser (CORS; repeat or "
        "comma-separate; default: none).")] = None
    allowed_hosts: Annotated[Optional[list[str]], typer.Option(
        "--allowed-hosts", help="Host header names answered besides the loopback ones (repeat or comma-separate; "
        "a non-loopback --host answers any Host unless some are given).")] = None
    refusals_per_second: Annotated[float, typer.Option(
        "--refusals-per-second", min=0.0, help="Refused requests (4xx) per client address and second answered at "
        "once, after --refusal-burst; past that they are answered late (0: off).")] = limits.REFUSALS_PER_SECOND
    refusal_burst: Annotated[int, typer.Option(
        "--refusal-burst", min=1, help="Refused requests a client may have at once before they are answered late.")
    ] = limits.REFUSAL_BURST
    refusal_delay_max: Annotated[float, typer.Option(
        "--refusal-delay-max", min=0.001, help="Longest delay of a refused request's answer (seconds).")
    ] = limits.REFUSAL_DELAY_MAX

    def settings_fields(self) -> dict[str, Any]:
        """The ServeSettings fields of these options."""
        return {"api_key": self.api_key, "allowed_origins": _names(self.allowed_origins),
                "allowed_hosts": _names(self.allowed_hosts), "refusals_per_second": self.refusals_per_second,
                "refusal_burst": self.refusal_burst, "refusal_delay_max": self.refusal_delay_max}


@dataclasses.dataclass(frozen=True)
class Connections:
    """Bounds on slow or many clients, and the drain on SIGTERM (see swv.serve.server)."""

    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", min=0.001, help="Seconds a request body may take to arrive (408).")] = limits.BODY_TIMEOUT_SECONDS
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", min=0.001,
        help="Seconds a request line + headers may take to arrive (408, connection closed).")] = limits.HEADER_TIMEOUT_SECONDS
    keep_alive: Annotated[float, typer.Option(
        "--keep-alive", min=1.0, help="Seconds an idle connection stays open.")] = limits.KEEP_ALIVE_SECONDS
    max_header_bytes: Annotated[int, typer.Option(
        "--max-header-bytes", min=1, help="Largest request line + headers (400).")] = limits.MAX_HEADER_BYTES
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=1, help="Connections at once; past it requests get 503.")] = limits.MAX_CONNECTIONS
    drain_timeout: Annotated[float, typer.Option(
        "--drain-timeout", min=0.001, help="On SIGTERM, seconds in-flight requests get to finish (new ones: 503).")
    ] = limits.DRAIN_TIMEOUT_SECONDS
    forwarded_allow_ips: Annotated[Optional[list[str]], typer.Option(
        "--forwarded-allow-ips", help="Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto headers are "
        "believed: IP addresses or networks (10.0.0.5, 10.0.0.0/24, ::1; repeat or comma-separate), or '*' for every "
        "peer. Behind a proxy, give its address so each end client has its own refusal budget. Default: none, "
        "proxy headers are ignored and the client is the peer address (uvicorn's FORWARDED_ALLOW_IPS environment "
        "variable is not read).")] = None

    def __post_init__(self) -> None:
        """Bad --forwarded-allow-ips values are refused, and uvicorn's FORWARDED_ALLOW_IPS left in the
        environment is said to be ignored, before the model loads."""
        from swv.serve.proxies import trusted_proxies

        if not trusted_proxies(self.forwarded_allow_ips or (), "--forwarded-allow-ips") and os.environ.get(
                "FORWARDED_ALLOW_IPS"):
            print("serve: FORWARDED_ALLOW_IPS is ignored, proxy headers are not read (trust a proxy with "
                  "--forwarded-allow-ips)", file=sys.stderr)

    def server_options(self) -> Any:
        """swv.serve.server.ServerOptions of these options (the serve extra is imported by then)."""
        from swv.serve.server import ServerOptions

        return ServerOptions(keep_alive_seconds=self.keep_alive, max_header_bytes=self.max_header_bytes,
                             max_connections=self.max_connections, drain_timeout_seconds=self.drain_timeout,
                             header_timeout_seconds=self.header_timeout,
                             forwarded_allow_ips=tuple(self.forwarded_allow_ips or ()))


def _names(values: Optional[list[str]]) -> tuple[str, ...]:
    """Repeated and comma-separated option values, as one tuple."""
    return tuple(name.strip() for value in values or () for name in value.split(",") if name.strip())


def _context_length(pipe: Any) -> int:
    """The backbone's context (its max_position_embeddings)."""
    from swv.serve.settings import model_context_length

    context = model_context_length(pipe)
    if context is None:
        raise UsageError("the backbone config has no max_position_embeddings; give --max-context")
    return context


@with_option_groups
def serve(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory written by training / SpeechLM.save_pretrained.")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8000,
    model_name: Annotated[Optional[str], typer.Option(
        "--model-name", help="Model id clients send and /v1/models lists (default: the directory's name).")] = None,
    max_context: Annotated[Optional[int], typer.Option(
        "--max-context", min=2, help="Most prompt tokens (text + audio) + max_tokens per request "
        "(default: the backbone's max_position_embeddings).")] = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", min=1, help="max_tokens of requests that do not set it.")] = 256,
    length_bound: LengthBound = None,
    no_repeat_ngram_size: NoRepeatNgramSize = None,
    repetition_penalty: RepetitionPenalty = None,
    ctc_weight: CtcWeight = None,
    system: System = None,
    device: Device = AUTO_DEVICE,
    dtype: Dtype = None,
    *,
    batching: Batching,
    bounds: RequestBounds,
    access: Access,
    connections: Connections,
) -> None:
    """Serve a model over HTTP: POST /v1/chat/completions (OpenAI-compatible,
    audio as input_audio parts, stream: true for server-sent events),
    GET /v1/models, GET /health, GET /metrics (Prometheus), a web page at /.

    Concurrent requests are generated together (up to --max-batch), joining
    and leaving the running batch at token boundaries (see --scheduling).
    Each cost of a request is bounded before it is paid (the --max-* options).

    Runaway answers: a transcript or translation stops where its audio runs
    out (finish_reason "length"), and no answer repeats a long run of tokens;
    the model's defaults, changed for every request by the options.

    Who may call: --api-key (or SWV_API_KEY), --allowed-origins, --allowed-hosts.
    SIGTERM drains: in-flight requests finish (--drain-timeout), new ones get 503.
    """
    try:
        from swv.serve.app import create_app
        from swv.serve.server import run
        from swv.serve.settings import ServeSettings
    except ImportError as exc:
        raise UsageError(f"swv serve needs the 'serve' extra (pip install 'swv[serve]'): {exc}") from None
    from swv.infer import batch

    pipe = batch.load_pipeline(model_dir, device, dtype, system)
    context = max_context or _context_length(pipe)
    settings = ServeSettings(
        model_id=model_name or model_dir.resolve().name, max_context=context, **batching.settings_fields(),
        default_max_tokens=max_tokens, **dataclasses.asdict(bounds),
        body_timeout_seconds=connections.body_timeout, bind_host=host, **access.settings_fields(),
        generation=GenerationOptions(length_bound=length_bound, no_repeat_ngram_size=no_repeat_ngram_size,
                                     repetition_penalty=repetition_penalty, ctc_weight=ctc_weight).settings(),
    )
    app = create_app(pipe, settings)
    print(f"serve: model {settings.model_id!r}, context {context} tokens, {settings.scheduling} batches of up to "
          f"{settings.max_batch}", file=sys.stderr)
    run(app, host, port, connections.server_options())
