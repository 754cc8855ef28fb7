"""The OpenAI chat-completions wire format: request parameters, responses, stream chunks and
errors (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swv.core.errors import InputError
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
}


class ChatCompletionParams(BaseModel):
    """``POST /v1/chat/completions`` body. ``temperature`` 0 or absent means greedy decoding
    (deterministic); above 0 it samples. ``max_completion_tokens`` is the newer name of
    ``max_tokens``. Unknown informational fields (``user``, ``metadata``...) are ignored."""

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
            temperature=self.temperature if sample else 1.0,
            top_p=self.top_p if (sample and self.top_p is not None) else 1.0,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


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


def parse_params(body: bytes) -> ChatCompletionParams:
    """JSON body -> parameters; :class:`RequestError` (400) for anything malformed."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object")
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
