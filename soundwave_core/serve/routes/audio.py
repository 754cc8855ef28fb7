"""``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``: OpenAI's audio API
(``multipart/form-data``) answered by the speech LLM.

Fields: ``file`` (required: wav, flac, mp3 or any format the decoder reads), ``model`` (the
served id), ``prompt``, ``temperature`` (0-1; omitted: the model's saved decoding defaults, see
:class:`~swv.serve.openai_api.SamplingParams`), ``response_format`` (``json``, ``text``,
``verbose_json``, ``srt``, ``vtt``), ``timestamp_granularities[]`` (``segment`` only), and for
transcriptions ``language``. Any other field is refused with a 400 naming it (OpenAI's policy).

* The instruction is the model's own: its default transcription instruction, or its
  translation instruction with ``English`` as the target (the tables training used,
  ``processor_config.json``); the answer keeps the transcript length bound either way.
* ``prompt`` is appended to that instruction, after a space (a vocabulary or style hint, as
  Whisper's prompt is); Soundwave was not trained with such hints, so it may or may not help.
* ``language`` (transcriptions) is a hint the instruction does not carry (the model's
  transcription instruction names no language); it is only echoed in ``verbose_json``.
* A transcription is a transcript of its clip (with or without ``prompt``): with a ``ctc_weight``
  above 0 (``swv serve --ctc-weight``, else the model's) it is rescored with the CTC head, in
  every ``response_format``, as ``swv infer`` rescores it (:mod:`swv.infer.rescoring`; the
  answer is never streamed). When the CTC head's reading replaces the generated answer,
  ``verbose_json``'s ``avg_logprob`` is ``null`` (the generated tokens' logprobs do not describe
  it). A translation is never rescored.
* No timestamps: the model gives none, so ``verbose_json`` has ONE segment spanning the whole
  clip (``start`` 0, ``end`` its duration, ``avg_logprob`` of the answer's tokens; no
  ``tokens``, ``compression_ratio`` or ``no_speech_prob``), ``srt``/``vtt`` one cue spanning
  the clip, and word timestamps are refused, never invented.

The answer gets at most the server's ``--max-tokens`` default of new tokens, and the
transcript length bound of the clip. Bounds are the chat endpoint's: the body cap (by its
declared length, then while it is read), the body deadline (408) and the body budget (the body
is held in it until the request is queued or refused), one file (each field at most once), the
clip's duration, channels and rate checked from its header before decoding, the text cap. The
form is parsed as the chat endpoint's JSON is: from the body's bytes, in a worker thread of
``--work-threads`` granted at the body's size (:func:`~swv.serve.priority.parse_cost`), never
in the event loop (:mod:`swv.serve.form`; FastAPI does not parse it: the routes declare no form
parameters); at most :data:`MAX_FORM_PARTS` parts, a text field at most
:func:`max_field_bytes`, a malformed form refused with a 400 naming the problem. The clip is
then decoded in a worker thread granted at its samples (cheapest first, :mod:`swv.serve.priority`).
An empty text field counts as not sent, as does a file part with neither filename nor bytes
(FastAPI's rule); ``file`` must be a file part and the other fields text (400 naming the field).
The access controls (API key, Origin and Host checks; ``multipart/form-data`` is the one content
type these routes take), request ids, metrics (the clip's seconds, the tokens generated) and the
drain are every ``/v1`` route's.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from swv.core.errors import SwvError
from swv.infer.chat import AudioPart, ParsedConversation, checked_text
from swv.infer.pipeline import Pipeline
from swv.model.processor import ChatRequest
from swv.serve.batcher import Batcher, Finished, Job
from swv.serve.metrics import Metrics
from swv.serve.openai_api import (
    AUDIO_FORMATS,
    RequestError,
    SamplingParams,
    cue_time,
    unknown_model,
)
from swv.serve.body import BodyBudget, held_body
from swv.serve.form import Part, parse_form
from swv.serve.ops import REQUEST_ID
from swv.serve.priority import PriorityLimiter, parse_cost
from swv.serve.routes.chat import finish, started
from swv.serve.routes.deps import BatcherDep, BodyBudgetDep, LimiterDep, MetricsDep, PipelineDep, SettingsDep
from swv.serve.settings import ServeSettings

#: The fields of each endpoint (``timestamp_granularities[]`` as the openai client names it: the
#: one field that may come more than once).
GRANULARITIES = "timestamp_granularities[]"
#: The one timestamp granularity the model can give (one segment spanning the clip).
SEGMENT = "segment"
#: OpenAI's ``temperature`` range on the audio endpoints.
TEMPERATURE_RANGE = (0.0, 1.0)
_COMMON = ("file", "model", "prompt", "temperature", "response_format", GRANULARITIES)
FIELDS = {"transcribe": (*_COMMON, "language"), "translate": _COMMON}
#: Most parts of a form. A valid one has at most 8 (the 7 fields of a transcription once each,
#: ``timestamp_granularities[]`` twice: OpenAI's ``segment`` and ``word``); twice that leaves room
#: for a client repeating a granularity and still refuses a form of many tiny parts at its 17th.
#: Fixed, not a flag: the fields are a closed set.
MAX_FORM_PARTS = 16
#: Bytes a text field may hold besides the prompt's characters (:func:`max_field_bytes`): the model
#: name, a language, a number.
OTHER_FIELD_BYTES = 1024
#: The target language of ``/v1/audio/translations``.
TRANSLATION_TARGET = "English"
#: The routes' paths; their bodies are ``multipart/form-data`` (the access controls let it through).
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
FORM_PATHS = (TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH)


router = APIRouter()


def form_schema(kind: str) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of an endpoint's form (:data:`FIELDS`): the routes read their
    bodies themselves (:func:`_answer`), so FastAPI cannot derive it from their parameters."""
    types: dict[str, dict[str, Any]] = {
        "file": {"type": "string", "format": "binary"},
        "temperature": {"type": "number", "minimum": TEMPERATURE_RANGE[0], "maximum": TEMPERATURE_RANGE[1]},
        "response_format": {"type": "string", "enum": list(AUDIO_FORMATS)},
        GRANULARITIES: {"type": "array", "items": {"type": "string", "enum": [SEGMENT]}},
    }
    properties = {name: types.get(name, {"type": "string"}) for name in FIELDS[kind]}
    schema = {"type": "object", "properties": properties, "required": ["file", "model"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


@router.post(TRANSCRIPTIONS_PATH, response_model=None, openapi_extra=form_schema("transcribe"))
async def transcriptions(request: Request, settings: SettingsDep, batcher: BatcherDep, pipeline: PipelineDep,
                         limiter: LimiterDep, metrics: MetricsDep, body_budget: BodyBudgetDep) -> Response:
    """Transcribe the form's ``file`` with the model's transcription instruction (module docstring)."""
    return await _answer(request, "transcribe", settings, batcher, pipeline, limiter, metrics, body_budget)


@router.post(TRANSLATIONS_PATH, response_model=None, openapi_extra=form_schema("translate"))
async def translations(request: Request, settings: SettingsDep, batcher: BatcherDep, pipeline: PipelineDep,
                       limiter: LimiterDep, metrics: MetricsDep, body_budget: BodyBudgetDep) -> Response:
    """Translate the form's ``file`` into English with the model's translation instruction (module docstring)."""
    return await _answer(request, "translate", settings, batcher, pipeline, limiter, metrics, body_budget)


def max_field_bytes(settings: ServeSettings) -> int:
    """The most bytes of a text field: the prompt at ``max_text_chars`` characters of at most 4
    UTF-8 bytes each, plus :data:`OTHER_FIELD_BYTES`."""
    return 4 * settings.max_text_chars + OTHER_FIELD_BYTES


class _Form:
    """One audio request's fields, read from the form's parts (:meth:`check` checks them)."""

    def __init__(self, task: str, parts: list[Part]) -> None:
        _check_parts(task, parts)
        self.task, self.parts = task, [part for part in parts if not _omitted(part)]
        self.file = next((part.data for part in self.parts if part.name == "file"), None)
        self.granularities = [part.text() for part in self.parts if part.name == GRANULARITIES]
        text = {part.name: part.text() for part in self.parts if part.name not in ("file", GRANULARITIES)}
        self.model, self.prompt, self.temperature = text.get("model"), text.get("prompt", ""), text.get("temperature")
        self.response_format = text.get("response_format", "json")
        self.language = text.get("language") if task == "transcribe" else TRANSLATION_TARGET.lower()

    def check(self, settings: ServeSettings) -> SamplingParams:
        """Refuse a missing field or a bad value (400 naming it); the sampling fields."""
        if self.file is None:
            raise RequestError(400, "file: an audio file is required", param="file")
        if self.model is None:
            raise RequestError(400, "model: required (GET /v1/models lists the served model)", param="model")
        if self.model != settings.model_id:
            raise unknown_model(self.model)
        if self.response_format not in AUDIO_FORMATS:
            raise RequestError(400, f"response_format: expected one of {', '.join(AUDIO_FORMATS)}, "
                                    f"got {self.response_format!r}", param="response_format")
        if set(self.granularities) - {SEGMENT} or (self.granularities and self.response_format != "verbose_json"):
            raise RequestError(400, "timestamp_granularities: only 'segment' with verbose_json (one segment "
                                    "spanning the clip: the model gives no timestamps)",
                               param="timestamp_granularities")
        if len(self.prompt) > settings.max_text_chars:
            raise RequestError(400, f"prompt: {len(self.prompt)} characters exceed the limit of "
                                    f"{settings.max_text_chars}", param="prompt")
        if self.language is not None and not (0 < len(self.language) <= 64):
            raise RequestError(400, "language: expected a language code or name", param="language")
        return _sampling(self.temperature)

    @property
    def transcribes(self) -> bool:
        """Whether the answer is a transcript (``/v1/audio/transcriptions``)."""
        return self.task == "transcribe"

    def instruction(self, pipeline: Pipeline) -> str:
        """The model's instruction for the task, the prompt after it."""
        base = pipeline.default_prompt("asr") if self.transcribes else \
            pipeline.default_prompt("st", TRANSLATION_TARGET)
        return f"{base} {self.prompt}" if self.prompt.strip() else base


def _check_parts(task: str, parts: list[Part]) -> None:
    """Refuse an unknown or repeated field (OpenAI's policy) and a file where a text field belongs
    or the reverse (400 naming it)."""
    names = [part.name for part in parts]
    for name in names:
        if name not in FIELDS[task]:
            raise RequestError(400, f"Unrecognized request argument supplied: {name}", param=name)
        if names.count(name) > 1 and name != GRANULARITIES:
            raise RequestError(400, f"{name}: given more than once", param=name)
    for part in parts:
        if part.is_file != (part.name == "file") and not _omitted(part):
            expected = "an uploaded file (a part with a filename)" if part.name == "file" else "a text field"
            raise RequestError(400, f"{part.name}: expected {expected}, got {'a file' if part.is_file else 'text'}",
                               param=part.name)


def _omitted(part: Part) -> bool:
    """Whether ``part`` counts as a field not sent (FastAPI's rule for forms): an empty text field
    but for ``timestamp_granularities[]``, or a file part with no filename and no bytes (what a
    browser sends when no file is chosen)."""
    if part.is_file:
        return part.filename == "" and not part.data
    return not part.data and part.name != GRANULARITIES


def _sampling(temperature: str | None) -> SamplingParams:
    """``temperature`` in OpenAI's audio range 0-1 (400 naming it otherwise)."""
    if temperature is None:
        return SamplingParams()
    try:
        value = float(temperature)
    except ValueError:
        value = float("nan")
    low, high = TEMPERATURE_RANGE
    if not low <= value <= high:
        raise RequestError(400, f"temperature: expected a number from {low:g} to {high:g}, got {temperature!r}",
                           param="temperature")
    return SamplingParams(temperature=value)


class _Checked(NamedTuple):
    """An upload read in a worker thread, before its clip is decoded: its form, its sampling
    fields, the parsed conversation and the samples its clip decodes to."""

    form: _Form
    sampling: SamplingParams
    parsed: ParsedConversation
    samples: int


def _checked(body: bytes, content_type: str, task: str, settings: ServeSettings, pipeline: Pipeline) -> _Checked:
    """The form parsed from ``body`` (:func:`~swv.serve.form.parse_form`: at most
    :data:`MAX_FORM_PARTS` parts, text fields of at most :func:`max_field_bytes`), its fields
    checked, the upload's header checked against every bound (nothing decoded)."""
    form = _Form(task, parse_form(body, content_type, MAX_FORM_PARTS, max_field_bytes(settings)))
    sampling = form.check(settings)
    if not form.file:
        raise RequestError(400, "file: the uploaded file is empty", param="file")
    parsed, samples = _checked_upload(pipeline, form.file, form.instruction(pipeline), settings)
    form.file = None  # the conversation holds the bytes now
    return _Checked(form, sampling, parsed, samples)


async def _answer(request: Request, task: str, settings: ServeSettings, batcher: Batcher, pipeline: Pipeline,
                  limiter: PriorityLimiter, metrics: Metrics, body_budget: BodyBudget) -> Response:
    """Read the body, parse and check the form in a worker thread granted at the body's size, decode
    the upload in one granted at its samples, queue the request on the batcher, count what was
    served, render the answer. The body is held in ``body_budget`` until the request is queued or
    refused (as the chat endpoint's)."""
    content_type = request.headers.get("content-type", "")
    async with held_body(request, body_budget, settings.max_body_bytes, settings.body_timeout_seconds) as body, \
            limiter.slot(parse_cost(len(body))) as slot:
        checked = await slot.run(partial(_checked, body, content_type, task, settings, pipeline))
        del body
        await slot.requeue(checked.samples)  # decoded cheapest-first (swv.serve.priority)
        chat_request = await slot.run(partial(_decoded, pipeline, checked.parsed, settings, checked.form.transcribes))
    form = checked.form
    generation = replace(settings.generation, max_new_tokens=settings.default_max_tokens, **checked.sampling.sampling())
    verbose = form.response_format == "verbose_json"
    job = Job(chat_request, generation, asyncio.get_running_loop(), logprobs=0 if verbose else None,
              request_id=REQUEST_ID.get(), rescore=True)
    batcher.submit(job)
    await started(job)
    try:
        finished = await finish(job)
    finally:
        job.cancelled.set()
    seconds = pipeline.audio_seconds(chat_request)
    metrics.served(finished.completion_tokens, seconds)
    resolved = pipeline.resolve(generation)
    return _render(form, finished, seconds, float(resolved.temperature or 0.0) if resolved.do_sample else 0.0)


def _checked_upload(pipeline: Pipeline, data: bytes, instruction: str,
                    settings: ServeSettings) -> tuple[ParsedConversation, int]:
    """The upload and instruction as one transcription-like conversation, every bound of
    :meth:`ServeSettings.request_limits` checked from the clip's header (nothing decoded), and
    the samples the clip decodes to."""
    token = pipeline.processor.audio_token
    try:
        text = checked_text(instruction, "prompt", token)
        parsed = ParsedConversation([{"role": "user", "content": f"{token}\n{text}"}], [AudioPart(data, None, "file")])
        samples = pipeline.check_conversation(parsed, max_duration=settings.max_audio_seconds,
                                              limits=settings.request_limits())
    except SwvError as exc:
        raise _file_error(exc) from None
    return parsed, samples


def _decoded(pipeline: Pipeline, parsed: ParsedConversation, settings: ServeSettings, transcript: bool) -> ChatRequest:
    """The checked upload decoded and its prompt tokenized, as a transcription request (its
    answer renders the speech: the length bound), and with ``transcript`` a transcript of its clip
    (CTC rescoring; a ``prompt`` after the instruction does not change that)."""
    try:
        request = pipeline.checked_request(parsed, max_duration=settings.max_audio_seconds,
                                           max_channels=settings.max_audio_channels)
    except SwvError as exc:
        raise _file_error(exc) from None
    return replace(request, transcription=True, transcript=transcript)


def _file_error(exc: SwvError) -> RequestError:
    """The 400 of a refused upload or prompt, naming the field."""
    message = " ".join(str(exc).split()).replace("messages:", "file:")
    param = message.split(":", 1)[0] if message.startswith(("file", "prompt")) else None
    return RequestError(400, message, param=param)


def _render(form: _Form, finished: Finished, seconds: float, temperature: float) -> Response:
    """The answer in the requested ``response_format`` (``temperature``: the one it was sampled at, 0: greedy)."""
    text = finished.text
    kind = form.response_format
    if kind == "text":
        return PlainTextResponse(text)
    if kind in ("srt", "vtt"):
        cue = " ".join(text.split()).replace("-->", "->")
        start, end = cue_time(0.0, kind), cue_time(seconds, kind)
        body = f"1\n{start} --> {end}\n{cue}\n" if kind == "srt" else f"WEBVTT\n\n{start} --> {end}\n{cue}\n"
        return PlainTextResponse(body, media_type="text/vtt" if kind == "vtt" else "text/plain")
    if kind == "json":
        return JSONResponse({"text": text})
    logprobs = [entry["logprob"] for entry in finished.logprobs or []]
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 3), "text": text,
               "temperature": temperature,
               "avg_logprob": sum(logprobs) / len(logprobs) if logprobs else None}
    return JSONResponse({"task": form.task, "language": form.language or "unknown", "duration": round(seconds, 3),
                         "text": text, "segments": [segment]})
