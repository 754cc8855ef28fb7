"""The limits and decoding controls ``swv serve`` applies to every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from swv.core.errors import UsageError
from swv.infer.chat import RequestLimits
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings
from swv.serve import limits

#: The bounds that must be at least 1 (the others: at least 0).
_POSITIVE = ("max_batch", "max_clips", "max_audio_channels", "max_json_depth", "work_threads", "body_buffer_bytes",
             "prefill_text_tokens", "long_text_tokens", "refusal_burst", "prefill_chunk_tokens",
             "long_step_every")


@dataclass(frozen=True)
class ServeSettings:
    """Server limits, each checked before the work it bounds.

    ``scheduling``: ``"continuous"`` (requests join and leave the running batch at token
    boundaries, :class:`~swv.serve.scheduler.Scheduler`; at most ``max_batch`` run at once) or
    ``"window"`` (requests arriving within ``batch_window_seconds`` form a batch that runs to
    completion, :class:`~swv.serve.batcher.Batcher`); both wait ``batch_window_seconds`` for
    company when idle. ``prefill_audio_seconds`` (continuous scheduling only, > 0) bounds the
    newcomers' audio encoded and prefilled between two decoding steps and ``prefill_text_tokens``
    (>= 1) their prompts' text tokens (a single request over either is prefilled alone); the others
    wait for the next step. Long requests (over ``long_audio_seconds`` of audio or
    ``long_text_tokens`` of prompt text) hold at most ``max_long_rows`` rows of the running batch
    (``None``: a quarter of ``max_batch``, at least 1), so short ones find a row; a prompt longer
    than ``prefill_chunk_tokens`` positions is prefilled that many per tick (chunked prefill); a
    group with a long request is encoded in a thread of its own whose nice value is raised by
    ``long_encode_nice`` (0-19; Linux); long rows run in a batch of their own, which takes a step
    every ``long_step_every`` ticks while short rows run (every tick otherwise).

    ``max_context`` bounds prompt tokens (text + audio) + ``max_tokens``; ``max_body_bytes`` the
    request body (a body without Content-Length is cut off once it passes it);
    ``body_buffer_bytes`` the bodies held in memory at once, from before they are read until their
    request is queued or refused (a request waits for room, at most ``body_timeout_seconds``, then
    503; see :mod:`swv.serve.body`), of which the last ``body_buffer_reserve`` bytes (at most half)
    only bodies of at most that size take; ``max_json_depth`` the body's nesting and ``max_json_structure_bytes`` its JSON outside strings (keys, numbers,
    brackets: what parsing turns into objects), both measured before it is parsed;
    ``max_text_chars`` the characters of text over all messages (before tokenizing);
    ``max_clips`` the audio clips of a request, ``max_audio_seconds`` each clip,
    ``max_request_audio_seconds`` all of them and ``max_audio_channels`` each clip's channels (all
    read from the clips' headers before decoding); ``work_threads`` the requests parsed, decoded
    and tokenized at once (in worker threads, never in the event loop; the cheapest step first, a
    body's parse priced by its bytes and a decode by its samples, see :mod:`swv.serve.priority`); ``body_timeout_seconds``
    the time a body may take to arrive (408). ``refusals_per_second`` (0: off), ``refusal_burst``
    and ``refusal_delay_max``: a client's refused requests past that rate are answered late (see
    :mod:`swv.serve.throttle`).

    Access (see :mod:`swv.serve.security`): ``api_key``, when set, is required as
    ``Authorization: Bearer <key>`` on every ``/v1/`` route; ``allowed_origins`` are the web
    origins answered with CORS headers (none by default); a server bound to a loopback
    ``bind_host`` answers only requests whose Host header names a loopback address or one of
    ``allowed_hosts`` (another bind checks ``allowed_hosts`` when any are given). ``generation``: the
    decoding controls of every request (length bound, repetition controls; ``None`` fields take
    the model's defaults)."""

    model_id: str
    max_context: int
    max_batch: int = 8
    batch_window_seconds: float = 0.01
    scheduling: str = limits.CONTINUOUS
    prefill_audio_seconds: float = limits.PREFILL_AUDIO_SECONDS
    prefill_text_tokens: int = limits.PREFILL_TEXT_TOKENS
    long_audio_seconds: float = limits.LONG_AUDIO_SECONDS
    long_text_tokens: int = limits.LONG_TEXT_TOKENS
    max_long_rows: int | None = limits.MAX_LONG_ROWS
    prefill_chunk_tokens: int = limits.PREFILL_CHUNK_TOKENS
    long_encode_nice: int = limits.LONG_ENCODE_NICE
    long_step_every: int = limits.LONG_STEP_EVERY
    max_audio_seconds: float = limits.MAX_AUDIO_SECONDS
    max_request_audio_seconds: float = limits.MAX_REQUEST_AUDIO_SECONDS
    max_clips: int = limits.MAX_CLIPS
    max_audio_channels: int = limits.MAX_AUDIO_CHANNELS
    max_text_chars: int = limits.MAX_TEXT_CHARS
    default_max_tokens: int = 256
    max_body_bytes: int = limits.MAX_BODY_BYTES
    body_buffer_bytes: int = limits.BODY_BUFFER_BYTES
    body_buffer_reserve: int = limits.BODY_BUFFER_RESERVE
    max_json_depth: int = limits.MAX_JSON_DEPTH
    max_json_structure_bytes: int = limits.MAX_JSON_STRUCTURE_BYTES
    work_threads: int = limits.WORK_THREADS
    body_timeout_seconds: float = limits.BODY_TIMEOUT_SECONDS
    refusals_per_second: float = limits.REFUSALS_PER_SECOND
    refusal_burst: int = limits.REFUSAL_BURST
    refusal_delay_max: float = limits.REFUSAL_DELAY_MAX
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_window_seconds", "max_audio_seconds", "max_request_audio_seconds", "max_text_chars",
                     "max_body_bytes", "max_json_structure_bytes", "refusals_per_second", "body_buffer_reserve"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.scheduling not in limits.SCHEDULING:
            raise UsageError(f"scheduling must be one of {', '.join(limits.SCHEDULING)}, got {self.scheduling!r}")
        if self.max_context < 2:
            raise UsageError(f"max_context must be >= 2, got {self.max_context}")
        if not 0 <= self.long_encode_nice <= 19:
            raise UsageError(f"long_encode_nice must be within 0-19, got {self.long_encode_nice}")
        if self.max_long_rows is not None and self.max_long_rows < 1:
            raise UsageError(f"max_long_rows must be >= 1, got {self.max_long_rows}")
        for name in ("body_timeout_seconds", "prefill_audio_seconds", "long_audio_seconds", "refusal_delay_max"):
            if not getattr(self, name) > 0:  # NaN included
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()
                                             and self.api_key.strip() == self.api_key and self.api_key):
            raise UsageError("the API key must be non-empty printable ASCII without surrounding spaces")

    def request_limits(self) -> RequestLimits:
        """The per-conversation bounds :meth:`Pipeline.chat_request` checks."""
        return RequestLimits(max_text_chars=self.max_text_chars, max_clips=self.max_clips,
                             max_total_seconds=self.max_request_audio_seconds, max_channels=self.max_audio_channels)


def model_context_length(pipeline: Pipeline) -> int | None:
    """The backbone config's ``max_position_embeddings``, if it declares one."""
    value = pipeline.model.backbone.hf_model.config.to_dict().get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None
