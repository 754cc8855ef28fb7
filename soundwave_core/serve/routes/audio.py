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
declared length, then while it is read; a text field is at most 1 MiB, Starlette's part
limit) and the body deadline (408), one file (each field at most once), the clip's duration,
channels and rate checked from its header before decoding, the text cap, decoding in the
worker threads of ``--work-threads`` (cheapest first, :mod:`swv.serve.priority`). The access
controls (API key, Origin and Host checks; ``multipart/form-data`` is the one content type these
routes take), request ids, metrics (the clip's seconds, the tokens generated) and the drain are
every ``/v1`` route's.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

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
from swv.serve.ops import REQUEST_ID
from swv.serve.priority import PriorityLimiter, parse_cost
from swv.serve.body import held_body
from swv.serve.routes.chat import finish, started
from swv.serve.routes.deps import BatcherDep, LimiterDep, MetricsDep, PipelineDep, SettingsDep
from swv.serve.settings import ServeSettings

#: The fields of each endpoint (``timestamp_granularities[]`` as the openai client names it).
_COMMON = ("file", "model", "prompt", "temperature", "response_format", "timestamp_granularities[]")
FIELDS = {"transcribe": (*_COMMON, "language"), "translate": _COMMON}
#: The target language of ``/v1/audio/translations``.
TRANSLATION_TARGET = "English"
#: The routes' paths; their bodies are ``multipart/form-data`` (the access controls let it through).
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
FORM_PATHS = (TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH)


class _BufferedBody(APIRoute):
    """A route whose body is read whole by the chat endpoint's reader before the form is parsed:
    refused (413) past the server's ``max_body_bytes`` (by its declared length, then while it is
    read: a chunked body declares none), and (408) when it has not all arrived
    ``body_timeout_seconds`` after the headers (:func:`~swv.serve.body.read_body`), held in the
    server's :class:`~swv.serve.body.BodyBudget` while it is read."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def buffered(request: Request) -> Response:
            settings = request.app.state.settings
            async with held_body(request, request.app.state.body_budget, settings.max_body_bytes,
                                 settings.body_timeout_seconds) as body:  # held while it is read
                replayed = Request(request.scope, _replay(body, request.receive))
            return await handler(replayed)

        return buffered


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` answering ``body`` (already read) first, then what the client sends next (its
    disconnect)."""
    pending = [body]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


router = APIRouter(route_class=_BufferedBody)
FileField = Annotated[UploadFile | None, File()]
TextField = Annotated[str | None, Form()]
Granularities = Annotated[list[str] | None, Form(alias="timestamp_granularities[]")]


@router.post(TRANSCRIPTIONS_PATH, response_model=None)
async def transcriptions(request: Request, settings: SettingsDep, batcher: BatcherDep, pipeline: PipelineDep,
                         limiter: LimiterDep, metrics: MetricsDep, file: FileField = None, model: TextField = None,
                         prompt: TextField = None, language: TextField = None, temperature: TextField = None,
                         response_format: TextField = None, granularities: Granularities = None) -> Response:
    """Transcribe ``file`` with the model's transcription instruction (module docstring)."""
    form = _Form("transcribe", file, model, prompt, language, temperature, response_format, granularities)
    return await _answer(request, form, settings, batcher, pipeline, limiter, metrics)


@router.post(TRANSLATIONS_PATH, response_model=None)
async def translations(request: Request, settings: SettingsDep, batcher: BatcherDep, pipeline: PipelineDep,
                       limiter: LimiterDep, metrics: MetricsDep, file: FileField = None, model: TextField = None,
                       prompt: TextField = None, temperature: TextField = None, response_format: TextField = None,
                       granularities: Granularities = None) -> Response:
    """Translate ``file`` into English with the model's translation instruction (module docstring)."""
    form = _Form("translate", file, model, prompt, TRANSLATION_TARGET.lower(), temperature, response_format,
                 granularities)
    return await _answer(request, form, settings, batcher, pipeline, limiter, metrics)


class _Form:
    """One audio request's fields, checked by :meth:`check`."""

    def __init__(self, task: str, file: UploadFile | None, model: str | None, prompt: str | None,
                 language: str | None, temperature: str | None, response_format: str | None,
                 granularities: list[str] | None) -> None:
        self.task, self.file, self.model, self.prompt, self.language = task, file, model, prompt or "", language
        self.temperature, self.granularities = temperature, granularities or []
        self.response_format = response_format or "json"

    def check(self, names: list[str], settings: ServeSettings) -> SamplingParams:
        """Refuse an unknown, repeated or missing field or a bad value (400 naming it); the
        sampling fields. ``names``: the form's field names, a repeated one as often as it came."""
        for name in names:
            if name not in FIELDS[self.task]:
                raise RequestError(400, f"Unrecognized request argument supplied: {name}", param=name)
            if names.count(name) > 1 and name != "timestamp_granularities[]":
                raise RequestError(400, f"{name}: given more than once", param=name)
        if self.file is None:
            raise RequestError(400, "file: an audio file is required", param="file")
        if self.model is None:
            raise RequestError(400, "model: required (GET /v1/models lists the served model)", param="model")
        if self.model != settings.model_id:
            raise unknown_model(self.model)
        if self.response_format not in AUDIO_FORMATS:
            raise RequestError(400, f"response_format: expected one of {', '.join(AUDIO_FORMATS)}, "
                                    f"got {self.response_format!r}", param="response_format")
        if set(self.granularities) - {"segment"} or (self.granularities and self.response_format != "verbose_json"):
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


def _sampling(temperature: str | None) -> SamplingParams:
    """``temperature`` in OpenAI's audio range 0-1 (400 naming it otherwise)."""
    if temperature is None:
        return SamplingParams()
    try:
        value = float(temperature)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise RequestError(400, f"temperature: expected a number from 0 to 1, got {temperature!r}",
                           param="temperature")
    return SamplingParams(temperature=value)


async def _answer(request: Request, form: _Form, settings: ServeSettings, batcher: Batcher, pipeline: Pipeline,
                  limiter: PriorityLimiter, metrics: Metrics) -> Response:
    """Check the form, queue the request on the batcher, count what was served, render the answer."""
    sampling = form.check([name for name, _ in (await request.form()).multi_items()], settings)
    assert form.file is not None
    data = await form.file.read()
    if not data:
        raise RequestError(400, "file: the uploaded file is empty", param="file")
    async with limiter.slot(parse_cost(len(data))) as slot:  # the header read, priced by the file's size
        parsed, samples = await slot.run(partial(_checked_upload, pipeline, data, form.instruction(pipeline), settings))
        del data
        await slot.requeue(samples)  # decoded cheapest-first (swv.serve.priority)
        chat_request = await slot.run(partial(_decoded, pipeline, parsed, settings, form.transcribes))
    generation = replace(settings.generation, max_new_tokens=settings.default_max_tokens, **sampling.sampling())
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
