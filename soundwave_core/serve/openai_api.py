"""The OpenAI chat-completions wire format: request parameters, responses, stream chunks and
errors (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swv.core.errors import InputError, first_line
from swv.infer.settings import GenerationSettings

#: Request fields swv serve does not implement, with the value that means "not used".
UNSUPPORTED = {
    "n": 1,
    "stop": None,
    "seed": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logprobs": False,
    "top_logprobs": None,
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


class ChatCompletionParams(BaseModel):
    """``POST /v1/chat/completions`` body. ``temperature`` 0 or absent means greedy decoding
    (deterministic); above 0 it samples, at least at :data:`MIN_TEMPERATURE`.
    ``max_completion_tokens`` is the newer name of ``max_tokens``. OpenAI's informational
    fields (:data:`IGNORED`) are ignored; those of :data:`UNSUPPORTED` refused unless they keep
    their neutral value; any other field is refused with a 400 naming it (OpenAI's policy)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Any] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None

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

    def settings(self, default_max_tokens: int, base: GenerationSettings | None = None) -> GenerationSettings:
        """The request's settings over the server's ``base`` (its decoding controls; what both
        leave open takes the model's defaults)."""
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens
        sample = bool(self.temperature)
        return replace(
            base or GenerationSettings(),
            max_new_tokens=max_tokens,
            do_sample=sample,
            temperature=max(self.temperature or 0.0, MIN_TEMPERATURE) if sample else 1.0,
            top_p=self.top_p if (sample and self.top_p is not None) else 1.0,
        )

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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes, max_depth: int, max_structure_bytes: int) -> Any:
    """A JSON body, its shape (:func:`json_shape`) checked before it is parsed; :class:`RequestError`
    (400) for one nested deeper than ``max_depth``, with more than ``max_structure_bytes``
    outside its strings, not UTF-8, not JSON, or using ``NaN``/``Infinity``."""
    depth, structure = json_shape(body, max_depth, max_structure_bytes)
    if depth > max_depth:
        raise RequestError(400, f"the request body is nested more than {max_depth} levels deep")
    if structure > max_structure_bytes:
        raise RequestError(400, f"the request body has more than {max_structure_bytes} bytes of JSON outside "
                                "its strings (keys, numbers, brackets)")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"the request body is not valid JSON ({first_line(exc)})") from None


def parse_params(body: bytes, max_depth: int = 32, max_structure_bytes: int = 1 << 20) -> ChatCompletionParams:
    """JSON body -> parameters; :class:`RequestError` (400) for anything malformed (see :func:`parse_json`)."""
    payload = parse_json(body, max_depth, max_structure_bytes)
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

    def completion(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason, "logprobs": None}],
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
