"""Refused requests answered late per client (swv.serve.throttle): the budget's arithmetic on a
fake clock, and the server answering a client's refusals past its rate late while its accepted
requests, and other clients, are answered at once."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from swv.infer.pipeline import Pipeline
from swv.serve import limits
from swv.serve.app import create_app
from swv.serve.settings import ServeSettings
from swv.serve.throttle import MAX_CLIENTS, RefusalBudget, RefusalThrottle, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_free_then_refusals_wait_for_the_rate_up_to_the_longest_delay() -> None:
    clock = Clock()
    budget = RefusalBudget(per_second=2.0, burst=3, max_delay=1.2, clock=clock)
    assert [budget.charge("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [budget.charge("a") for _ in range(4)] == pytest.approx([0.5, 1.0, 1.2, 1.2])
    assert budget.charge("b") == 0.0  # another client has its own budget
    clock.now += 1.2 + 1.5  # the capped debt is paid off: the burst is free again
    assert [budget.charge("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.now += 0.5  # one refusal's interval later, one more is free
    assert budget.charge("a") == 0.0 and budget.charge("a") == pytest.approx(0.5)


def test_the_table_of_clients_is_bounded() -> None:
    clock = Clock()
    budget = RefusalBudget(per_second=1.0, burst=1, max_delay=5.0, clock=clock)
    for i in range(MAX_CLIENTS + 10):
        budget.charge(f"10.0.{i // 256}.{i % 256}")
    assert len(budget._full_at) <= MAX_CLIENTS


def test_the_client_is_the_peer_address() -> None:
    assert client_key({"client": ("10.1.2.3", 5555)}) == "10.1.2.3"
    assert client_key({"client": None}) == "-"


def _app_with(statuses: list[int]):
    async def app(scope, receive, send) -> None:
        status = statuses.pop(0)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_only_4xx_answers_wait_and_only_past_the_burst(anyio_backend: str) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    statuses = [400, 413, 200, 401, 500, 404, 200]
    throttle = RefusalThrottle(_app_with(list(statuses)), per_second=1.0, burst=2, max_delay=10.0, sleep=sleep)
    sent: list[int] = []

    async def send(message) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    for _ in statuses:
        await throttle({"type": "http", "client": ("127.0.0.1", 1)}, None, send)
    assert sent == statuses
    # 400, 413 free (the burst); 401 and 404 wait; 200s and the 500 are not counted
    assert slept == pytest.approx([1.0, 2.0], abs=0.05)
    assert RefusalThrottle(_app_with([400]), per_second=0.0, burst=1, max_delay=1.0).budget is None


@pytest.fixture(scope="module")
def pipe(save_tiny_model) -> Pipeline:
    return Pipeline.from_pretrained(save_tiny_model("throttle_model"))


def test_the_server_answers_a_flood_of_refusals_late_and_its_other_requests_at_once(pipe: Pipeline) -> None:
    settings = ServeSettings(model_id="m", max_context=256, refusals_per_second=4.0, refusal_burst=2)
    bad = b'{"model": "m", "messages": ['  # malformed JSON: 400
    with TestClient(create_app(pipe, settings), base_url="http://localhost") as client:
        started = time.perf_counter()
        statuses = [client.post("/v1/chat/completions", content=bad, headers={"Content-Type": "application/json"})
                    .status_code for _ in range(5)]
        flood = time.perf_counter() - started
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 200
        answered = time.perf_counter() - started
    assert statuses == [400] * 5
    # past the burst of 2, a client waiting for each answer is held to 4 refusals per second
    assert flood >= 3 * 0.25 - 0.05
    assert answered < 0.5


def test_the_throttle_is_on_by_default_and_its_bounds_are_checked() -> None:
    from swv.core.errors import UsageError

    settings = ServeSettings(model_id="m", max_context=64)
    assert (settings.refusals_per_second, settings.refusal_burst, settings.refusal_delay_max) == (
        limits.REFUSALS_PER_SECOND, limits.REFUSAL_BURST, limits.REFUSAL_DELAY_MAX)
    assert limits.REFUSALS_PER_SECOND > 0
    with pytest.raises(UsageError, match="^refusal_burst must be >= 1, got 0$"):
        ServeSettings(model_id="m", max_context=64, refusal_burst=0)
    with pytest.raises(UsageError, match="^refusal_delay_max must be > 0, got 0.0$"):
        ServeSettings(model_id="m", max_context=64, refusal_delay_max=0.0)
    with pytest.raises(UsageError, match="^refusals_per_second must be >= 0, got -1.0$"):
        ServeSettings(model_id="m", max_context=64, refusals_per_second=-1.0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_late_answer_holds_nothing_of_its_request(anyio_backend: str) -> None:
    """The refusal waits after the app has returned: what the request held (here a stand-in for
    the body read so far, kept by the handler's frame) is gone by then."""
    import gc
    import weakref

    class Body:
        pass

    refs: list[weakref.ref] = []
    alive_while_waiting: list[bool] = []

    async def app(scope, receive, send) -> None:
        body = Body()
        refs.append(weakref.ref(body))
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def sleep(seconds: float) -> None:
        gc.collect()
        alive_while_waiting.append(refs[-1]() is not None)

    throttle = RefusalThrottle(app, per_second=1.0, burst=1, max_delay=5.0, sleep=sleep)
    sent: list[dict] = []

    async def send(message) -> None:
        sent.append(message)

    for _ in range(2):
        await throttle({"type": "http", "client": ("127.0.0.1", 1)}, None, send)
    assert alive_while_waiting == [False]  # the second refusal waited, its request's objects gone
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] * 2
