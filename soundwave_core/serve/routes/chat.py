"""``POST /v1/chat/completions``: check the request, decode its audio, queue it on the batcher
and answer with the whole completion or, with ``stream: true``, server-sent events. A refused
request raises :class:`~swv.serve.openai_api.RequestError` (the app renders it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import NamedTuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from swv.core.errors import InputError, SwvError
from swv.infer.chat import ParsedConversation
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings
from swv.serve.batcher import Delta, Failed, Finished, Job, Started
from swv.serve.openai_api import (
    ChatCompletionParams,
    CompletionIds,
    RequestError,
    error_body,
    input_error,
    parse_params,
    sse,
    unknown_model,
)
from swv.serve.ops import REQUEST_ID
from swv.serve.body import TextBudget, held_body
from swv.serve.priority import Slot, parse_cost
from swv.serve.routes.deps import BatcherDep, BodyBudgetDep, LimiterDep, MetricsDep, PipelineDep, SettingsDep
from swv.serve.settings import ServeSettings

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    request: Request, settings: SettingsDep, batcher: BatcherDep, pipeline: PipelineDep, limiter: LimiterDep,
    metrics: MetricsDep, body_budget: BodyBudgetDep,
) -> JSONResponse | StreamingResponse:
    """An OpenAI chat completion. Decoding: a request without ``temperature``/``top_p`` takes the
    model's saved decoding defaults (``generation_config.json``; greedy unless the model says
    otherwise), ``temperature: 0`` is greedy; ``stop``, ``seed``, ``logprobs``/``top_logprobs``
    and the swv extensions ``top_k``, ``repetition_penalty`` and ``ctc_weight`` are honoured; a
    non-streamed transcript without logprobs is rescored with the CTC head when the resolved
    ``ctc_weight`` is above 0 (:attr:`~swv.serve.openai_api.ChatCompletionParams.may_rescore`);
    ``n`` > 1 and the presence/frequency penalties are refused (see
    :class:`~swv.serve.openai_api.ChatCompletionParams`).
    The body is held in the server's :class:`~swv.serve.body.BodyBudget` until the request is
    queued or refused (one whose text passes ``--max-text-chars`` is refused while it arrives,
    :class:`~swv.serve.body.TextBudget`); it is parsed in a worker thread granted at its size's cost, and its audio
    decoded in one granted at its decoding cost (:mod:`swv.serve.priority`)."""
    text = TextBudget(settings.max_text_chars)  # a body of text past the limit is refused while it arrives
    async with held_body(request, body_budget, settings.max_body_bytes, settings.body_timeout_seconds, text) as body, \
            limiter.slot(parse_cost(len(body))) as slot:
        checked = await slot.run(partial(_checked, body, settings, pipeline))
        del body
        params = checked.params
        job = await _submit(checked, settings, pipeline, slot)
    batcher.submit(job)
    await started(job)
    ids = CompletionIds(settings.model_id)
    audio_seconds = pipeline.audio_seconds(job.request)
    served = partial(metrics.served, audio_seconds=audio_seconds)
    if params.stream:
        return StreamingResponse(_stream(job, ids, params.include_usage, served), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        finished = await finish(job)
    finally:
        job.cancelled.set()
    served(finished.completion_tokens)
    return JSONResponse(ids.completion(finished.text, finished.finish_reason, finished.prompt_tokens,
                                       finished.completion_tokens, finished.logprobs))


class _Checked(NamedTuple):
    """A request read in a worker thread, before its audio is decoded: its parameters, its
    generation settings, its parsed conversation and the samples its clips decode to."""

    params: ChatCompletionParams
    generation: GenerationSettings
    parsed: ParsedConversation
    samples: int


def _checked(body: bytes, settings: ServeSettings, pipeline: Pipeline) -> _Checked:
    """The body parsed, its model and settings checked, its messages parsed and its clips'
    headers checked against every bound of :meth:`ServeSettings.request_limits` (nothing decoded)."""
    params = parse_params(body, settings.max_json_depth, settings.max_json_structure_bytes, settings.max_text_chars)
    if params.model != settings.model_id:
        raise unknown_model(params.model)
    try:
        generation = params.settings(settings.default_max_tokens, settings.generation)
        pipeline.check_rescoring(generation)
        parsed = pipeline.parse_conversation(params.messages, local_audio=False)
        samples = pipeline.check_conversation(parsed, max_duration=settings.max_audio_seconds,
                                              limits=settings.request_limits())
    except SwvError as exc:
        raise _refusal(exc) from None
    return _Checked(params, generation, parsed, samples)


def _refusal(exc: SwvError) -> RequestError:
    """The 400 of a request whose messages or settings are refused."""
    if isinstance(exc, InputError):
        return input_error(exc)
    return RequestError(400, " ".join(str(exc).split()))


async def _submit(checked: _Checked, settings: ServeSettings, pipeline: Pipeline, slot: Slot) -> Job:
    """The batcher's job for a checked request: its audio decoded and its prompt tokenized in a
    worker thread, once ``slot`` is granted again at the request's decoding cost (the samples of
    its clips: cheapest first, see :class:`~swv.serve.priority.PriorityLimiter`)."""
    await slot.requeue(checked.samples)
    load = partial(pipeline.checked_request, checked.parsed, max_duration=settings.max_audio_seconds,
                   max_channels=settings.max_audio_channels)
    try:
        chat_request = await slot.run(load)
    except SwvError as exc:
        raise _refusal(exc) from None
    params = checked.params
    return Job(chat_request, checked.generation, asyncio.get_running_loop(), params.stop_sequences,
               params.logprob_count, request_id=REQUEST_ID.get(), rescore=params.may_rescore)


async def started(job: Job) -> None:
    """Wait until generation of ``job`` starts (a client that goes away cancels it)."""
    try:
        first = await job.next_event()
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    if isinstance(first, Failed):
        raise failed(first)
    assert isinstance(first, Started)


def failed(event: Failed) -> RequestError:
    return RequestError(event.status, event.message, type=event.type, code=event.code, param=event.param)


async def finish(job: Job) -> Finished:
    while True:
        event = await job.next_event()
        if isinstance(event, Finished):
            return event
        if isinstance(event, Failed):
            raise failed(event)


async def _stream(job: Job, ids: CompletionIds, include_usage: bool,
                  served: Callable[[int], None]) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, usage (if asked), [DONE]."""
    try:
        yield sse(ids.chunk({"role": "assistant", "content": ""}))
        while True:
            event = await job.next_event()
            if isinstance(event, Delta):
                yield sse(ids.chunk({"content": event.text}))
            elif isinstance(event, Finished):
                served(event.completion_tokens)
                yield sse(ids.chunk({}, event.finish_reason))
                if include_usage:
                    yield sse(ids.usage_chunk(event.prompt_tokens, event.completion_tokens))
                break
            elif isinstance(event, Failed):
                yield sse(error_body(event.message, event.type, event.param, event.code))
                break
        yield sse("[DONE]")
    finally:
        job.cancelled.set()
