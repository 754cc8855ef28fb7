"""Issue 24: a request's audio is decoded cheapest-first (swv.serve.priority.PriorityLimiter):
the limiter grants its slots to the cheapest waiter (ties in arrival order, a starved waiter
first), a cancelled waiter takes no slot, and through the server a cheap request queued behind
heavy ones is decoded before them. No timing assertions: every test orders events explicitly."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from swv.serve import limits  # noqa: E402
from swv.serve.priority import PriorityLimiter  # noqa: E402


async def _until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds."""
    for _ in range(20_000):  # up to about 20 s (a worker thread has to start)
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def _run(scenario: Callable[[], Awaitable[list]]) -> list:
    return asyncio.run(scenario())


def _recording(limiter: PriorityLimiter, order: list[str]) -> Callable[[str, int], Awaitable[None]]:
    """A waiter that appends its label to ``order`` once it holds a slot of cost ``cost``."""

    async def waiter(label: str, cost: int) -> None:
        async with limiter.slot(cost):
            order.append(label)

    return waiter


async def _granted_order(limiter: PriorityLimiter, waiters: list[tuple[str, int]],
                         after_queued: Callable[[str], object] = lambda label: None) -> list[str]:
    """Hold the limiter's only slot, queue ``waiters`` (label, cost) one after the other (calling
    ``after_queued(label)`` once each is queued), release: the labels in the order their slots
    were granted."""
    order: list[str] = []
    waiter = _recording(limiter, order)
    await limiter.acquire()
    tasks = []
    for count, (label, cost) in enumerate(waiters, 1):
        tasks.append(asyncio.create_task(waiter(label, cost)))
        await _until(lambda: limiter.waiting == count)
        after_queued(label)
    limiter.release()
    await asyncio.gather(*tasks)
    assert limiter.borrowed == 0 and limiter.waiting == 0
    return order


def test_the_cheapest_waiter_is_granted_first() -> None:
    order = _run(lambda: _granted_order(PriorityLimiter(1), [("5", 5), ("1", 1), ("3", 3)]))
    assert order == ["1", "3", "5"]


def test_equal_costs_go_in_arrival_order() -> None:
    waiters = [("a", 2), ("b", 2), ("cheap", 1), ("c", 2), ("free", 0)]
    assert _run(lambda: _granted_order(PriorityLimiter(1), waiters)) == ["free", "cheap", "a", "b", "c"]


def test_a_starved_waiter_goes_first() -> None:
    now = [0.0]
    limiter = PriorityLimiter(1, clock=lambda: now[0])
    assert limiter.starvation_seconds == limits.STARVATION_SECONDS  # the scheduler's bound, not a copy

    def later() -> None:
        now[0] = 1.0 + limits.STARVATION_SECONDS  # "old" and "older" have starved, "new" has not

    waiters = [("older", 90), ("old", 50), ("new", 1)]
    order = _run(lambda: _granted_order(limiter, waiters, after_queued=lambda label: label == "old" and later()))
    assert order == ["older", "old", "new"]


@pytest.mark.parametrize("granted_first", [False, True], ids=["cancelled-while-waiting", "cancelled-as-granted"])
def test_a_cancelled_waiter_takes_no_slot_and_is_skipped(granted_first: bool) -> None:
    """A waiter cancelled while it waits leaves the queue; one cancelled after the slot was
    granted to it but before it resumed hands the slot on. Either way the next waiter runs."""
    limiter = PriorityLimiter(1)

    async def scenario() -> list[str]:
        order: list[str] = []
        waiter = _recording(limiter, order)
        await limiter.acquire()
        gone = asyncio.create_task(waiter("gone", 1))
        await _until(lambda: limiter.waiting == 1)
        kept = asyncio.create_task(waiter("kept", 5))
        await _until(lambda: limiter.waiting == 2)
        if granted_first:
            limiter.release()  # granted to "gone", which is cancelled before it resumes
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        if not granted_first:
            assert limiter.waiting == 1 and limiter.borrowed == 1  # the holder's slot only
            limiter.release()
        await kept
        return order

    assert _run(scenario) == ["kept"]
    assert limiter.borrowed == 0 and limiter.waiting == 0


def test_a_failing_or_cancelled_holder_releases_its_slot() -> None:
    limiter = PriorityLimiter(2)

    async def scenario() -> list:
        with pytest.raises(ValueError, match="bad clip"):
            async with limiter.slot(3) as slot:
                await slot.run(lambda: (_ for _ in ()).throw(ValueError("bad clip")))
        assert limiter.borrowed == 0
        started, release = threading.Event(), threading.Event()

        async def holder() -> None:
            async with limiter.slot() as slot:
                await slot.requeue(7)
                await slot.run(lambda: (started.set(), release.wait(10)))

        task = asyncio.create_task(holder())
        await _until(started.is_set)
        task.cancel()  # the client went away while its decode runs: the slot is held until it returns
        with pytest.raises(asyncio.CancelledError):
            await task
        assert limiter.borrowed == 1
        release.set()
        await _until(lambda: limiter.borrowed == 0)
        return [limiter.borrowed, limiter.waiting]

    assert _run(scenario) == [0, 0]


def test_requeueing_competes_for_the_slot_it_gives_up() -> None:
    """A request that learns it is cheap gets the slot it gives up ahead of queued heavy decodes;
    one that learns it is heavy lets a cheaper one go first."""
    limiter = PriorityLimiter(1)

    async def scenario() -> list[str]:
        order: list[str] = []

        async def request(label: str, cost: int) -> None:
            async with limiter.slot() as slot:
                await slot.requeue(cost)
                order.append(label)

        async def heavy_waiter() -> None:
            async with limiter.slot(1000):
                order.append("queued heavy")

        await limiter.acquire()
        queued = asyncio.create_task(heavy_waiter())
        await _until(lambda: limiter.waiting == 1)
        cheap = asyncio.create_task(request("cheap", 10))
        await _until(lambda: limiter.waiting == 2)
        limiter.release()
        await asyncio.gather(queued, cheap)
        return order

    assert _run(scenario) == ["cheap", "queued heavy"]


def test_worker_threads_stay_within_the_capacity() -> None:
    limiter = PriorityLimiter(2)
    running, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    async def one(cost: int) -> None:
        async with limiter.slot() as slot:
            await slot.run(work)
            await slot.requeue(cost)
            await slot.run(work)

    async def scenario() -> list[int]:
        await asyncio.gather(*(one(cost) for cost in range(8)))
        return [most[0], limiter.threads.total_tokens, limiter.borrowed]

    assert _run(scenario) == [2, 2, 0]


# -- through the server ---------------------------------------------------------------------------
MODEL_ID = "tiny-swv"
SR = 16000


def _clip(seconds: float, channels: int) -> dict:
    samples = (np.random.default_rng(0).standard_normal((int(SR * seconds), channels)) * 0.1).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format="WAV")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode(),
                                                   "format": "wav"}}


def _post(url: str, label: str, seconds: float, channels: int, statuses: dict[str, int]) -> None:
    content = [_clip(seconds, channels), {"type": "text", "text": f"Transcribe the speech. [{label}]"}]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        statuses[label] = response.status


def test_a_cheap_request_is_decoded_before_queued_heavy_ones(save_tiny_model, monkeypatch) -> None:
    """One worker thread, busy decoding a first request; three heavy requests (4 s of stereo) then a
    cheap one (0.5 s mono) arrive: the cheap one is decoded next, the heavy ones after it."""
    from swv.infer.pipeline import Pipeline
    from swv.serve.app import create_app
    from swv.serve.background import BackgroundServer
    from swv.serve.settings import ServeSettings, model_context_length

    pipeline = Pipeline.from_pretrained(save_tiny_model("priority_model"))
    settings = ServeSettings(model_id=MODEL_ID, max_context=model_context_length(pipeline), work_threads=1)
    app = create_app(pipeline, settings)
    decoded: list[str] = []
    entered, gate = threading.Event(), threading.Event()
    real_decode = pipeline.checked_request

    def recorded(parsed, **kwargs):
        decoded.append(parsed.messages[-1]["content"].rsplit("[", 1)[1].rstrip("]"))
        if len(decoded) == 1:
            entered.set()
            assert gate.wait(60)
        return real_decode(parsed, **kwargs)

    monkeypatch.setattr(pipeline, "checked_request", recorded)
    statuses: dict[str, int] = {}
    arrivals = [("first", 0.5, 1), ("heavy 1", 4.0, 2), ("heavy 2", 4.0, 2), ("heavy 3", 4.0, 2), ("cheap", 0.5, 1)]
    with BackgroundServer(app) as server:
        _arrive_in_order(app, entered, gate, [(_post, (server.url, label, seconds, channels, statuses))
                                              for label, seconds, channels in arrivals])
    assert statuses == {label: 200 for label, _, _ in arrivals}
    assert decoded == ["first", "cheap", "heavy 1", "heavy 2", "heavy 3"]
    assert app.state.limiter.borrowed == 0


def _arrive_in_order(app, entered: threading.Event, gate: threading.Event, posts: list) -> None:
    """Send each ``(function, args)`` request from its own thread, in order: the first until it
    holds the worker thread (``entered``), each later one until it is queued for a slot; then
    open ``gate`` and wait for them all."""
    threads = []
    for count, (post, args) in enumerate(posts):
        thread = threading.Thread(target=post, args=args)
        thread.start()
        threads.append(thread)
        if count == 0:
            assert entered.wait(60)
        else:  # each queued (for its slot) before the next arrives
            deadline = time.monotonic() + 60
            while app.state.limiter.waiting < count and time.monotonic() < deadline:
                time.sleep(0.01)
            assert app.state.limiter.waiting == count
    gate.set()
    for thread in threads:
        thread.join(120)


def _post_status(url: str, label: str, clips: int, statuses: dict[str, int]) -> None:
    """POST ``clips`` clips of 0.5 s (mono) labelled ``label``; its HTTP status into ``statuses``."""
    content = [_clip(0.5, 1) for _ in range(clips)] + [{"type": "text", "text": f"Transcribe the speech. [{label}]"}]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            statuses[label] = response.status
    except urllib.error.HTTPError as exc:
        statuses[label] = exc.code


def test_parsing_new_bodies_does_not_go_before_a_cheaper_queued_decode(save_tiny_model, monkeypatch) -> None:
    """A request's first step (parsing its body, reading its clips' headers) costs its body's
    bytes, not 0: one worker thread, busy; a normal request and then three big refused ones (nine
    clips each) queue to be parsed; once free, the thread parses the normal request, decodes it
    (its decode costs less than parsing a big body), and only then parses the big bodies."""
    from swv.infer.pipeline import Pipeline
    from swv.serve.app import create_app
    from swv.serve.background import BackgroundServer
    from swv.serve.settings import ServeSettings, model_context_length

    pipeline = Pipeline.from_pretrained(save_tiny_model("parse_cost_model"))
    settings = ServeSettings(model_id=MODEL_ID, max_context=model_context_length(pipeline), work_threads=1)
    app = create_app(pipeline, settings)
    app.state.limiter.starvation_seconds = float("inf")  # a slow machine starves no one here
    steps: list[str] = []
    entered, gate = threading.Event(), threading.Event()
    real_parse, real_decode = pipeline.parse_conversation, pipeline.checked_request

    def label(messages) -> str:
        return messages[-1]["content"].rsplit("[", 1)[1].split("]")[0]

    def parse(messages, **kwargs):
        parsed = real_parse(messages, **kwargs)
        steps.append(f"parse {label(parsed.messages)}")
        return parsed

    def decode(parsed, **kwargs):
        steps.append(f"decode {label(parsed.messages)}")
        if len(steps) == 2:  # the first request's decode holds the thread
            entered.set()
            assert gate.wait(60)
        return real_decode(parsed, **kwargs)

    monkeypatch.setattr(pipeline, "parse_conversation", parse)
    monkeypatch.setattr(pipeline, "checked_request", decode)
    statuses: dict[str, int] = {}
    arrivals = [("first", 1), ("normal", 1), ("big 1", 9), ("big 2", 9), ("big 3", 9)]
    with BackgroundServer(app) as server:
        _arrive_in_order(app, entered, gate, [(_post_status, (server.url, name, clips, statuses)) for name, clips in arrivals])
    assert statuses == {"first": 200, "normal": 200, "big 1": 400, "big 2": 400, "big 3": 400}  # nine clips: over 8
    assert steps == ["parse first", "decode first", "parse normal", "decode normal", "parse big 1", "parse big 2",
                     "parse big 3"]
    assert app.state.limiter.borrowed == 0


def test_the_starvation_bound_is_read_when_a_limiter_is_made(monkeypatch) -> None:
    """Like the scheduler, the limiter takes ``limits.STARVATION_SECONDS`` as it is when the limiter
    is made (it was bound once, when the module was imported)."""
    monkeypatch.setattr(limits, "STARVATION_SECONDS", 0.25)
    assert PriorityLimiter(1).starvation_seconds == 0.25
    assert PriorityLimiter(1, starvation_seconds=3.0).starvation_seconds == 3.0
