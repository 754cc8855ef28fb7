"""The OpenAI chat-completions wire format: request parameters, responses, stream chunks and
errors (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swv.core.errors import InputError, first_line
from swv.infer.settings import GenerationSettings
from swv.serve.text_meter import AUDIO_KEY

#: Request fields swv serve does not implement, with the value that means "not used".
UNSUPPORTED = {
    "n": 1,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "audio": None,
    "prediction": None,
    "reasoning_effort": None,
    "verbosity": None,
    "web_search_options": None,
}
#: OpenAI request fields that only inform (logging, storage, routing), accepted and ignored.
IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
           "parallel_tool_calls")
#: Below this (and above 0), ``temperature`` is taken as this (vLLM's rule): dividing the
#: logits by less overflows them.
MIN_TEMPERATURE = 1e-2
_QUOTE = ord('"')
#: The nesting step of each byte outside strings: +1 for ``[{``, -1 for ``]}``.
_STEP = np.zeros(256, np.int8)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1
#: A JSON string (in a body whose escaped quotes and backslashes are dropped), and what makes the
#: string before it a key.
_STRING = re.compile(rb'"[^"]*"')
_COLON = re.compile(rb"[ \t\r\n]*:")
#: The most bytes one character of text takes in JSON (outside the BMP: two ``\uXXXX`` escapes).
MAX_JSON_BYTES_PER_CHAR = 12
#: Bytes of strings a request may hold besides its text and audio (keys, model, roles, types, stop strings).
OTHER_STRING_BYTES = 64 * 1024


#: Most ``stop`` sequences of a request (OpenAI's), and most characters of each.
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
#: Most ``top_logprobs`` (OpenAI's range is 0-20).
MAX_TOP_LOGPROBS = 20
#: The ``repetition_penalty`` range: dividing logits by less could overflow them to inf.
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.1, 10.0
#: Integers a ``seed`` may be (torch's seed range).
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)


class SamplingParams(BaseModel):
    """The decoding fields shared by chat completions and the audio endpoints. ``temperature``
    0 means greedy decoding; above 0 it samples, at least at :data:`MIN_TEMPERATURE`. When a
    request omits ``temperature`` (or ``top_p``), the server's ``--temperature``-style controls,
    else the model's saved decoding defaults (:class:`~swv.model.defaults.GenerationDefaults`,
    ``generation_config.json`` of the export: vLLM's convention) decide, not greedy decoding;
    ``top_p`` alone applies only when those defaults sample."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)

    def sampling(self) -> dict[str, Any]:
        """The :class:`GenerationSettings` fields this request sets (none: the defaults decide)."""
        out: dict[str, Any] = {}
        if self.temperature is not None:
            sample = self.temperature > 0
            out.update(do_sample=sample, temperature=max(self.temperature, MIN_TEMPERATURE) if sample else None)
        if self.top_p is not None:
            out["top_p"] = self.top_p
        return out


class ChatCompletionParams(SamplingParams):
    """``POST /v1/chat/completions`` body (decoding: see :class:`SamplingParams`).
    ``max_completion_tokens`` is the newer name of ``max_tokens``. ``stop``: up to 4 strings;
    the answer ends before the first of them appears (it is not part of the answer,
    ``finish_reason`` ``"stop"``). ``seed``: sampling is deterministic for a request and seed
    (transformers' ``generate`` samples from torch's global generator, so a seeded request is
    generated in a batch of its own, the generator seeded for it and restored afterwards).
    swv extensions (the ``openai`` client sends them with ``extra_body``): ``top_k`` (0: off),
    ``repetition_penalty`` (1: off, 0.1-10; over the server's) and ``ctc_weight`` (0-1, 0: off;
    over the server's ``--ctc-weight``: a non-streamed transcript is rescored with the CTC head,
    :mod:`swv.infer.rescoring`). ``logprobs``/``top_logprobs`` (0-20): each answer token's
    log-probability and the most likely alternatives, from the distribution after the
    repetition controls and before temperature/top-p (non-streamed answers only; an answer with
    logprobs is not rescored, :attr:`may_rescore`). ``n`` above 1,
    ``presence_penalty``/``frequency_penalty`` other than 0 are refused (400 naming the field), as
    are the other fields of :data:`UNSUPPORTED` unless they keep their neutral value; OpenAI's
    informational fields (:data:`IGNORED`) are ignored; any other field is refused with a 400
    naming it (OpenAI's policy)."""

    model: str
    messages: list[Any] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    top_k: int | None = Field(default=None, ge=0, le=1 << 31)
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    ctc_weight: float | None = Field(default=None, ge=0, le=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def check_supported(self) -> None:
        extra = self.model_extra or {}
        for name in extra:
            if name not in UNSUPPORTED and name not in IGNORED:
                raise RequestError(400, f"Unrecognized request argument supplied: {name}", param=name)
        for name, unused in UNSUPPORTED.items():
            if name in extra and extra[name] is not None and extra[name] != unused:
                raise RequestError(400, f"'{name}' is not supported by swv serve", param=name)
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise RequestError(400, "only the 'text' response_format is supported", param="response_format")
        if self.modalities is not None and set(self.modalities) - {"text"}:
            raise RequestError(400, "only the 'text' output modality is supported", param="modalities")
        self.check_options()

    def check_options(self) -> None:
        """``stop``, ``logprobs`` and ``top_logprobs`` within OpenAI's rules."""
        stops = self.stop_sequences
        if len(stops) > MAX_STOP_SEQUENCES or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise RequestError(400, f"stop: up to {MAX_STOP_SEQUENCES} non-empty strings of at most "
                                    f"{MAX_STOP_CHARS} characters", param="stop")
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.logprobs and self.stream:
            raise RequestError(400, "logprobs are returned for non-streamed answers only", param="logprobs")

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def may_rescore(self) -> bool:
        """Whether the answer, if a transcript with a ``ctc_weight``, is rescored with the CTC head:
        when it is not streamed (streamed tokens are out before the scores exist) and asks for no
        logprobs (they describe the tokens generated, which the CTC head's reading would replace)."""
        return not self.stream and self.logprob_count is None

    @property
    def logprob_count(self) -> int | None:
        """``None`` (no logprobs) or how many alternatives each token lists."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def settings(self, default_max_tokens: int, base: GenerationSettings | None = None) -> GenerationSettings:
        """The request's settings over the server's ``base`` (its decoding controls; what both
        leave open takes the model's defaults)."""
        fields = self.sampling()
        for name in ("top_k", "repetition_penalty", "ctc_weight", "seed"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens
        return replace(base or GenerationSettings(), max_new_tokens=max_tokens, **fields)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        message, param = _printable(message), None if param is None else _printable(param)
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def _printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates a client sent) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def body_too_large(limit: int) -> RequestError:
    """413 for a request body over ``limit`` bytes."""
    return RequestError(413, f"the request body exceeds {limit} bytes")


#: The ``response_format`` values of the audio endpoints.
AUDIO_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def cue_time(seconds: float, kind: str) -> str:
    """``HH:MM:SS,mmm`` (srt) or ``HH:MM:SS.mmm`` (vtt)."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{',' if kind == 'srt' else '.'}{millis:03d}"


def unknown_model(name: str) -> RequestError:
    """404 for a request naming a model this server does not serve."""
    return RequestError(404, f"the model {name!r} does not exist (GET /v1/models lists it)",
                        code="model_not_found", param="model")


def model_card(model_id: str, created: int) -> dict[str, Any]:
    """The ``/v1/models`` entry of the served model."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "swv"}


def json_shape(body: bytes, max_depth: int, max_structure_bytes: int, chunk: int = 1 << 20) -> tuple[int, int]:
    """``(deepest nesting, bytes outside strings)`` of a JSON text, measured without parsing it
    (escaped backslashes and quotes dropped, then quotes counted ``chunk`` bytes at a time, so
    memory stays a few MB); it stops at the first chunk passing ``max_depth`` or
    ``max_structure_bytes`` (the values it returns then are lower bounds)."""
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = deepest = outside = inside = 0
    for start in range(0, len(text), chunk):
        block = np.frombuffer(text, np.uint8, count=min(chunk, len(text) - start), offset=start)
        quotes = block == _QUOTE
        in_string = (np.cumsum(quotes, dtype=np.int32) + inside) & 1
        structure = block[(in_string == 0) & ~quotes]
        levels = depth + np.cumsum(_STEP[structure], dtype=np.int64)
        if levels.size:
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
        outside += int(structure.size)
        inside = (inside + int(np.count_nonzero(quotes))) & 1
        if deepest > max_depth or outside > max_structure_bytes:
            break
    return deepest, outside


def string_bytes(body: bytes, limit: int) -> int:
    """Bytes of a JSON text's keys and string values, but for the values of ``"data"`` keys (the
    audio), measured without parsing it (escaped quotes and backslashes count whole); it stops
    once past ``limit`` (the value it returns then is a lower bound)."""
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    total, key = len(body) - len(text), b""
    for match in _STRING.finditer(text):
        start, end = match.span()
        if _COLON.match(text, end):
            key = text[start + 1:end - 1] if end - start <= len(AUDIO_KEY) + 2 else b""
        elif key == AUDIO_KEY:
            continue
        total += end - start - 2
        if total > limit:
            break
    return total


def text_bytes_limit(max_text_chars: int) -> int:
    """The string bytes (:func:`string_bytes`) of a body whose text has at most ``max_text_chars``
    characters: each character at its longest in JSON, plus :data:`OTHER_STRING_BYTES`."""
    return max_text_chars * MAX_JSON_BYTES_PER_CHAR + OTHER_STRING_BYTES


def too_much_text(max_text_chars: int) -> RequestError:
    """400 for a body with more string bytes besides audio than ``max_text_chars`` characters take."""
    return RequestError(400, f"the request body has more than {text_bytes_limit(max_text_chars)} bytes of strings "
                             f"besides audio data: more than its limit of {max_text_chars} characters of text can take")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes, max_depth: int, max_structure_bytes: int, max_text_chars: int | None = None) -> Any:
    """A JSON body, its shape (:func:`json_shape`) and, given ``max_text_chars``, its strings
    outside audio (:func:`string_bytes`, against :func:`text_bytes_limit`) checked before it is
    parsed; :class:`RequestError` (400) for one nested deeper than ``max_depth``, with more than
    ``max_structure_bytes`` outside its strings, with more string bytes than its text limit
    allows, not UTF-8, not JSON, or using ``NaN``/``Infinity``."""
    depth, structure = json_shape(body, max_depth, max_structure_bytes)
    if depth > max_depth:
        raise RequestError(400, f"the request body is nested more than {max_depth} levels deep")
    if structure > max_structure_bytes:
        raise RequestError(400, f"the request body has more than {max_structure_bytes} bytes of JSON outside "
                                "its strings (keys, numbers, brackets)")
    if max_text_chars is not None and string_bytes(body, limit := text_bytes_limit(max_text_chars)) > limit:
        raise too_much_text(max_text_chars)
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"the request body is not valid JSON ({first_line(exc)})") from None


def parse_params(body: bytes, max_depth: int = 32, max_structure_bytes: int = 1 << 20,
                 max_text_chars: int | None = None) -> ChatCompletionParams:
    """JSON body -> parameters; :class:`RequestError` (400) for anything malformed or, given
    ``max_text_chars``, holding more strings than that much text (see :func:`parse_json`)."""
    payload = parse_json(body, max_depth, max_structure_bytes, max_text_chars)
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object")
    for name in payload:
        if _printable(name) != name:
            raise RequestError(400, f"the field name {name!r} is not a valid Unicode string", param=name)
    try:
        params = ChatCompletionParams.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RequestError(400, f"{where}: {first['msg']}", param=where or None) from None
    params.check_supported()
    return params


def input_error(exc: InputError) -> RequestError:
    """An :class:`InputError` about the messages -> 400 naming the offending part."""
    message = " ".join(str(exc).split())
    where = message.split(":", 1)[0]
    return RequestError(400, message, param=where if where.startswith("messages") else None)


class CompletionIds:
    """The id/created/model header every response and chunk of one completion shares."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def completion(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                   logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason,
                         "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}],
            "usage": usage(prompt_tokens, completion_tokens),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
