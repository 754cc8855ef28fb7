"""Per-token scheduling (swv.serve.scheduler, swv.infer.running) on a tiny random-init model,
without HTTP: requests that join a running batch mid-answer get the greedy answers they get
alone (and from the window batcher); a short request finishes while a long one still runs;
stop strings, logprobs, seeds and cancellation work per row; a failing step fails its rows only;
between two decoding steps at most ``prefill_audio_seconds`` of newcomers' audio is prefilled."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from swv.infer.pipeline import Pipeline
from swv.infer.running import RunningBatch
from swv.infer.settings import GenerationSettings
from swv.serve.batcher import Batcher, Delta, Failed, Finished, Job, Started
from swv.serve import limits as serve_limits
from swv.serve.scheduler import Scheduler

SR = 16000
LONG = 40
#: RunningBatch.prefill itself (tests wrap it to record the prefills).
REAL_PREFILL = RunningBatch.prefill


@pytest.fixture(scope="module")
def pipe(save_tiny_model) -> Pipeline:
    return Pipeline.from_pretrained(save_tiny_model("sched_model"))


def clip(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


def conversation(seconds: float, seed: int, text: str = "Describe it.") -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": clip(seconds, seed), "sample_rate": SR},
                                         {"type": "text", "text": text}]}]


def settings(max_tokens: int, **extra) -> GenerationSettings:
    # no length bound and no repetition control: long answers, not cut by the tiny model's audio
    return GenerationSettings(max_new_tokens=max_tokens, length_bound=False, **extra)


def make(worker_class, pipe: Pipeline, max_batch: int = 8):
    worker = worker_class(pipe, max_batch=max_batch, window_seconds=0.0, max_context=2048)
    worker.start()
    return worker


async def events_of(job: Job) -> list:
    out = []
    while not isinstance(out[-1] if out else None, (Finished, Failed)):
        out.append(await asyncio.wait_for(job.next_event(), 120))
    return out


def run_jobs(worker, pipe: Pipeline, specs: list[tuple[list[dict], GenerationSettings, dict]],
             gaps: list[float] | None = None) -> list[list]:
    """Submit one job per spec (``gaps[i]`` seconds after the one before) and collect their events."""

    async def main() -> list[list]:
        loop = asyncio.get_running_loop()
        jobs = [Job(pipe.chat_request(m), s, loop, **kw) for m, s, kw in specs]
        tasks = []
        for i, job in enumerate(jobs):
            if gaps and i:
                await asyncio.sleep(gaps[i])
            worker.submit(job)
            tasks.append(asyncio.create_task(events_of(job)))
        return list(await asyncio.gather(*tasks))

    return asyncio.run(main())


def finished(events: list) -> Finished:
    assert isinstance(events[-1], Finished), events[-1]
    return events[-1]


def test_rows_that_join_mid_answer_get_their_single_answers(pipe: Pipeline) -> None:
    specs = [(conversation(0.3 + 0.2 * i, i), settings([LONG, 5, 12, 1, 20][i]), {}) for i in range(5)]
    alone = [pipe.generate_requests([pipe.chat_request(m)], s)[0].text for m, s, _ in specs]
    scheduler = make(Scheduler, pipe)
    try:
        got = run_jobs(scheduler, pipe, specs, gaps=[0, 0.05, 0.02, 0.03, 0.0])
    finally:
        scheduler.close()
    assert [finished(e).text for e in got] == alone
    assert scheduler.batches_served >= 2  # some joined a running batch
    for events in got:  # streamed pieces add up to the answer
        assert isinstance(events[0], Started)
        assert "".join(e.text for e in events if isinstance(e, Delta)) == finished(events).text


def test_a_short_request_finishes_while_a_long_one_runs(pipe: Pipeline) -> None:
    long_settings = settings(400, no_repeat_ngram_size=0)
    specs = [(conversation(0.5, 1), long_settings, {}), (conversation(0.3, 2), settings(1), {})]
    scheduler = make(Scheduler, pipe)
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        long_job, short_job = (Job(pipe.chat_request(m), s, loop, **kw) for m, s, kw in specs)
        scheduler.submit(long_job)
        assert isinstance(await long_job.next_event(), Started)
        while not isinstance(await long_job.next_event(), Delta):  # the long answer is under way
            pass
        scheduler.submit(short_job)
        done = await asyncio.wait_for(events_of(short_job), 60)
        order.append(f"short {finished(done).completion_tokens}")
        rest = await asyncio.wait_for(events_of(long_job), 120)
        order.append(f"long {finished(rest).finish_reason}")

    try:
        asyncio.run(main())
    finally:
        scheduler.close()
    if order[1] == "long stop":  # the tiny model ended its answer early: only the order is checked
        pytest.skip("the long answer stopped early")
    assert order == ["short 1", "long length"]


def finish_order(worker, pipe: Pipeline, specs: list[tuple[str, float, int]], gap: float) -> list[str]:
    """Submit ``(name, audio seconds, max_tokens)`` jobs (the first, then the others ``gap`` s
    later, back to back); their names in the order they finish."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        jobs = {name: Job(pipe.chat_request(conversation(seconds, i)), settings(tokens), loop)
                for i, (name, seconds, tokens) in enumerate(specs)}
        order: list[str] = []

        async def follow(name: str) -> None:
            await events_of(jobs[name])
            order.append(name)

        tasks = []
        for i, (name, job) in enumerate(jobs.items()):
            await asyncio.sleep(gap if i == 1 else 0.0)
            worker.submit(job)
            tasks.append(asyncio.create_task(follow(name)))
        await asyncio.gather(*tasks)
        return order

    return asyncio.run(main())


@pytest.mark.parametrize("starvation, expected", [(5.0, ["running", "short", "long"]), (0.0, ["running", "long", "short"])])
def test_the_cheapest_waiting_request_joins_first_unless_one_starves(pipe: Pipeline, monkeypatch, starvation: float,
                                                                     expected: list[str]) -> None:
    monkeypatch.setattr(serve_limits, "STARVATION_SECONDS", starvation)
    worker = make(Scheduler, pipe, max_batch=1)
    try:
        specs = [("running", 0.5, LONG), ("long", 3.0, 2), ("short", 0.3, 2)]
        assert finish_order(worker, pipe, specs, gap=0.3) == expected
        assert worker.pending == 0
    finally:
        worker.close()


def test_greedy_answers_equal_the_window_batcher(pipe: Pipeline) -> None:
    """Rows with their own repetition controls included (the batcher runs them in batches of their own)."""
    specs = [(conversation(0.2 + 0.15 * i, 10 + i), settings(6 + 3 * i), {}) for i in range(4)]
    specs += [(conversation(0.3, 14), settings(12, no_repeat_ngram_size=1), {}),  # a ban at every step
              (conversation(0.3, 15), settings(12, repetition_penalty=1.8), {})]
    answers = {}
    for worker_class in (Batcher, Scheduler):
        worker = make(worker_class, pipe)
        try:
            answers[worker_class] = [(finished(e).text, finished(e).completion_tokens, finished(e).prompt_tokens)
                                     for e in run_jobs(worker, pipe, specs)]
        finally:
            worker.close()
    assert answers[Scheduler] == answers[Batcher]


def test_stop_strings_logprobs_and_seeds_per_row(pipe: Pipeline) -> None:
    messages = conversation(0.4, 3)
    full = pipe.generate_requests([pipe.chat_request(messages)], settings(16))[0].text
    assert len(full) >= 4, full
    stop = full[2:4]
    scheduler = make(Scheduler, pipe)
    try:
        got = run_jobs(scheduler, pipe, [
            (messages, settings(16), {"stop": [stop]}),
            (messages, settings(16), {"logprobs": 3}),
            (messages, settings(10, do_sample=True, temperature=1.5, seed=7), {}),
            (conversation(0.3, 4), settings(10, do_sample=True, temperature=1.5, seed=7), {}),
            (messages, settings(10, do_sample=True, temperature=1.5, seed=7), {}),
        ])
    finally:
        scheduler.close()
    cut, with_logprobs, seeded, other, again = (finished(e) for e in got)
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    assert "".join(e.text for e in got[0] if isinstance(e, Delta)) == cut.text
    assert with_logprobs.text == full and with_logprobs.logprobs is not None
    assert len(with_logprobs.logprobs) == with_logprobs.completion_tokens - (with_logprobs.finish_reason == "stop")
    for entry in with_logprobs.logprobs:  # greedy: the chosen token is the most likely one
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]
        assert abs(entry["top_logprobs"][0]["logprob"] - entry["logprob"]) < 1e-5
    assert seeded.text == again.text  # a seed repeats its draws, whatever else runs beside it


def test_a_cancelled_request_leaves_and_the_others_go_on(pipe: Pipeline) -> None:
    keep = (conversation(0.4, 5), settings(30))
    expected = pipe.generate_requests([pipe.chat_request(keep[0])], keep[1])[0].text
    scheduler = make(Scheduler, pipe)

    async def main() -> Finished:
        loop = asyncio.get_running_loop()
        gone = Job(pipe.chat_request(conversation(0.5, 6)), settings(400, no_repeat_ngram_size=0), loop)
        stays = Job(pipe.chat_request(keep[0]), keep[1], loop)
        scheduler.submit(gone)
        scheduler.submit(stays)
        assert isinstance(await gone.next_event(), Started)
        gone.cancelled.set()
        return finished(await events_of(stays))

    try:
        answer = asyncio.run(main())
        deadline = time.monotonic() + 30
        while scheduler._rows and time.monotonic() < deadline:  # the cancelled row left
            time.sleep(0.01)
        assert not scheduler._rows
    finally:
        scheduler.close()
    assert answer.text == expected


def test_a_failing_step_fails_its_rows_and_the_scheduler_goes_on(pipe: Pipeline, monkeypatch) -> None:
    scheduler = make(Scheduler, pipe)
    broken = threading.Event()
    real_step = RunningBatch.step

    def step(self, tokens):
        if not broken.is_set():
            broken.set()
            raise RuntimeError("boom")
        return real_step(self, tokens)

    monkeypatch.setattr(RunningBatch, "step", step)
    try:
        first = run_jobs(scheduler, pipe, [(conversation(0.3, 7), settings(8), {})])[0]
        second = run_jobs(scheduler, pipe, [(conversation(0.3, 7), settings(8), {})])[0]
    finally:
        scheduler.close()
    assert isinstance(first[-1], Failed) and first[-1].status == 500 and "boom" in first[-1].message
    assert finished(second).completion_tokens >= 1


def test_the_app_runs_the_scheduling_its_settings_name(pipe: Pipeline) -> None:
    from swv.core.errors import UsageError
    from swv.serve.app import create_app
    from swv.serve.settings import ServeSettings

    assert type(create_app(pipe, ServeSettings(model_id="m", max_context=64)).state.batcher) is Scheduler
    window = ServeSettings(model_id="m", max_context=64, scheduling="window")
    assert type(create_app(pipe, window).state.batcher) is Batcher
    with pytest.raises(UsageError, match="scheduling must be one of continuous, window, got 'paged'"):
        ServeSettings(model_id="m", max_context=64, scheduling="paged")


def test_swv_serve_refuses_an_unknown_scheduling_before_loading_the_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swv.cli.main import app
    from swv.core.errors import UsageError

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-model"), "--scheduling", "paged"])
    assert isinstance(result.exception, UsageError)
    assert str(result.exception) == "--scheduling must be one of continuous, window, got 'paged'"


Spec = tuple[list[dict], GenerationSettings, dict]


def run_backlog(pipe: Pipeline, monkeypatch, budget: float, specs: list[Spec],
                late: Spec | None = None, **options) -> tuple[list[list], list[tuple[int, list[int]]]]:
    """Queue one job per spec before a Scheduler with ``prefill_audio_seconds=budget`` (and the
    Scheduler ``options``) starts (so the first tick sees them all; ``late``: one more job,
    submitted during the first prefill). The jobs' events, and every prefill as ``(decoding steps
    taken before it, its jobs' indices)``."""
    options.setdefault("prefill_chunk_tokens", math.inf)  # prompts prefilled whole unless a test chunks them
    scheduler = Scheduler(pipe, max_batch=8, window_seconds=0.0, max_context=2048, prefill_audio_seconds=budget,
                          **options)
    prefills: list[tuple[int, list[int]]] = []
    jobs: list[Job] = []
    def prefill(batch: RunningBatch, prepared):
        index = {id(job.request): i for i, job in enumerate(jobs)}
        prefills.append((scheduler.steps, [index[id(request)] for request in prepared.requests]))
        if late is not None and len(prefills) == 1:
            scheduler.submit(jobs[-1])
        return REAL_PREFILL(batch, prepared)

    monkeypatch.setattr(RunningBatch, "prefill", prefill)

    async def main() -> list[list]:
        loop = asyncio.get_running_loop()
        jobs.extend(Job(pipe.chat_request(m), s, loop, **kw) for m, s, kw in specs + ([late] if late else []))
        for job in jobs[: len(specs)]:
            scheduler.submit(job)
        scheduler.start()
        return list(await asyncio.gather(*(events_of(job) for job in jobs)))

    try:
        events = asyncio.run(main())
    finally:
        scheduler.close()
    return events, prefills


def test_a_prefill_budget_spreads_a_backlog_over_ticks_with_decoding_steps_between(pipe: Pipeline, monkeypatch) -> None:
    seconds = [0.1] + [0.4] * 5 + [1.5]  # the first runs throughout; the last is longer than the budget
    specs = [(conversation(s, 20 + i), settings(400 if i == 0 else LONG, no_repeat_ngram_size=0), {})
             for i, s in enumerate(seconds)]
    events, prefills = run_backlog(pipe, monkeypatch, 1.0, specs)
    assert all(finished(e).completion_tokens >= 1 for e in events)
    # prefills between the same two decoding steps belong to one tick: 4 ticks, each within the
    # budget (cheapest first) but for the 1.5 s request, alone in its own
    ticks: dict[int, list[float]] = {}
    for steps, rows in prefills:
        ticks.setdefault(steps, []).extend(seconds[i] for i in rows)
    assert [sorted(audio) for audio in ticks.values()] == [[0.1, 0.4, 0.4], [0.4, 0.4], [0.4], [1.5]]


def text_only(words: int, seed: int) -> list[dict]:
    """A conversation without audio whose prompt grows with ``words``."""
    return [{"role": "user", "content": " ".join(f"word{(seed * 7 + i) % 50}" for i in range(words))}]


def test_a_prefill_token_budget_spreads_long_text_prompts_over_ticks(pipe: Pipeline, monkeypatch) -> None:
    """Text-only prompts have no audio for the audio budget: their tokens are counted against
    ``prefill_text_tokens`` (the first always joins, a longer prompt alone in its tick)."""
    words = [2, 60, 60, 60, 60, 300]  # the first runs throughout; the last passes the budget alone
    specs = [(text_only(n, i), settings(400 if i == 0 else LONG, no_repeat_ngram_size=0), {})
             for i, n in enumerate(words)]
    tokens = [len(pipe.chat_request(m).ids) for m, _, _ in specs]
    budget = tokens[0] + tokens[1] + tokens[2]
    assert tokens[0] + 3 * tokens[1] > budget and tokens[5] > budget
    events, prefills = run_backlog(pipe, monkeypatch, math.inf, specs, prefill_text_tokens=budget)
    assert all(finished(e).completion_tokens >= 1 for e in events)
    ticks: dict[int, list[int]] = {}
    for steps, rows in prefills:
        ticks.setdefault(steps, []).extend(rows)
    assert [sorted(rows) for rows in ticks.values()] == [[0, 1, 2], [3, 4], [5]]


def test_a_cheap_request_behind_a_backlog_is_prefilled_before_the_rest_of_it(pipe: Pipeline, monkeypatch) -> None:
    monkeypatch.setattr(serve_limits, "STARVATION_SECONDS", math.inf)  # a slow machine starves no one here
    backlog = [(conversation(0.9, 30 + i), settings(LONG), {}) for i in range(4)]
    cheap = (conversation(0.2, 34), settings(8), {})
    events, prefills = run_backlog(pipe, monkeypatch, 1.0, backlog, late=cheap)
    assert all(finished(e).completion_tokens >= 1 for e in events)
    order = ["cheap" if rows == [len(backlog)] else f"backlog x{len(rows)}" for _, rows in prefills]
    assert order == ["backlog x1", "cheap", "backlog x1", "backlog x1", "backlog x1"]


def test_greedy_answers_do_not_depend_on_the_prefill_budget(pipe: Pipeline, monkeypatch) -> None:
    specs = [(conversation(0.2 + 0.3 * i, 40 + i), settings(5 + 4 * i), {}) for i in range(5)]
    answers, prefill_counts = [], []
    for budget in (0.5, math.inf):
        events, prefills = run_backlog(pipe, monkeypatch, budget, specs)
        answers.append([(finished(e).text, finished(e).completion_tokens, finished(e).prompt_tokens) for e in events])
        prefill_counts.append(len(prefills))
    assert answers[0] == answers[1]
    assert prefill_counts[0] > prefill_counts[1]  # the small budget did split the batch


def test_a_request_over_the_context_costs_its_group_no_second_encoding(pipe: Pipeline, monkeypatch) -> None:
    """A newcomer whose prompt + max_tokens pass the context is refused after its group's audio is
    encoded; the others are prefilled from that encoding (not encoded again, which would spend the
    tick's audio budget twice) and get the answers they get alone."""
    specs = [(conversation(0.4, 50 + i), settings(6 + i), {}) for i in range(3)]
    specs[1] = (specs[1][0], settings(2048), {})  # its prompt + 2048 new tokens pass the 2048-token context
    kept = [0, 2]
    alone = [pipe.generate_requests([pipe.chat_request(specs[i][0])], specs[i][1])[0].text for i in kept]
    prompts = [pipe.encode_requests([pipe.chat_request(specs[i][0])]).prompt_tokens[0] for i in kept]
    encoded: list[float] = []
    real_encode = Pipeline.encode_requests

    def encode(self, requests, *args, **kwargs):
        encoded.append(round(sum(self.audio_seconds(request) for request in requests), 3))
        return real_encode(self, requests, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "encode_requests", encode)
    events, prefills = run_backlog(pipe, monkeypatch, 1.5, specs)
    assert encoded == [1.2]  # one group, encoded once: not again without the refused request
    assert prefills == [(0, kept)]
    refused = events[1][-1]
    assert isinstance(refused, Failed) and refused.status == 400 and refused.code == "context_length_exceeded"
    assert [(finished(events[i]).text, finished(events[i]).prompt_tokens) for i in kept] == list(zip(alone, prompts))


def test_selected_rows_of_an_encoded_batch_equal_the_batch_of_those_requests(pipe: Pipeline) -> None:
    """Prepared.select (what _fit_context keeps): rows in any order, a request without audio among
    them, equal to encoding the chosen requests alone (the shrinking adapter's lengths included)."""
    requests = [pipe.chat_request(conversation(0.3 + 0.2 * i, 60 + i)) for i in range(3)]
    requests.insert(1, pipe.chat_request([{"role": "user", "content": "No audio here, only a longer text prompt."}]))
    with torch.inference_mode():
        selected = pipe.encode_requests(requests).select([3, 1, 0])
        expected = pipe.encode_requests([requests[3], requests[1], requests[0]])
    assert selected.requests == expected.requests
    for name in ("input_ids", "attention_mask", "clip_owner"):
        assert torch.equal(getattr(selected, name), getattr(expected, name)), name
    assert selected.prompt_tokens == expected.prompt_tokens
    assert selected.state is not None and expected.state is not None
    assert torch.equal(selected.state.lengths, expected.state.lengths)
    for got, want, n in zip(selected.state.embeds, expected.state.embeds, expected.state.lengths.tolist()):
        torch.testing.assert_close(got[:n], want[:n], atol=1e-5, rtol=1e-4)
    text_only = pipe.encode_requests(requests).select([1])
    assert text_only.state is None and text_only.clip_owner.numel() == 0
    assert text_only.prompt_tokens == [len(requests[1].ids)]


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_a_non_positive_prefill_budget_is_refused(value: float) -> None:
    from swv.core.errors import UsageError
    from swv.serve.settings import ServeSettings

    with pytest.raises(UsageError, match=f"^prefill_audio_seconds must be > 0, got {value}$"):
        ServeSettings(model_id="m", max_context=64, prefill_audio_seconds=value)


@pytest.mark.parametrize("value", ["0", "-2.5", "nan"])
def test_swv_serve_refuses_a_non_positive_prefill_budget_before_loading_the_model(tmp_path: Path, value: str) -> None:
    from typer.testing import CliRunner

    from swv.cli.main import app
    from swv.core.errors import UsageError

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-model"), "--prefill-audio-seconds", value])
    assert isinstance(result.exception, UsageError), result.output
    assert str(result.exception) == f"--prefill-audio-seconds must be > 0, got {float(value)}"


def test_the_app_passes_its_prefill_budgets_to_the_scheduler(pipe: Pipeline) -> None:
    from swv.serve import limits
    from swv.serve.app import create_app
    from swv.serve.settings import ServeSettings

    default = create_app(pipe, ServeSettings(model_id="m", max_context=64)).state.batcher
    assert (default.prefill_audio_seconds, default.prefill_text_tokens) == (limits.PREFILL_AUDIO_SECONDS,
                                                                            limits.PREFILL_TEXT_TOKENS)
    budget = ServeSettings(model_id="m", max_context=64, prefill_audio_seconds=2.5, prefill_text_tokens=300)
    scheduler = create_app(pipe, budget).state.batcher
    assert (scheduler.prefill_audio_seconds, scheduler.prefill_text_tokens) == (2.5, 300)


def test_a_prefill_text_token_budget_below_one_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from swv.cli.main import app
    from swv.core.errors import UsageError
    from swv.serve.settings import ServeSettings

    with pytest.raises(UsageError, match="^prefill_text_tokens must be >= 1, got 0$"):
        ServeSettings(model_id="m", max_context=64, prefill_text_tokens=0)
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "no-model"), "--prefill-text-tokens", "0"])
    assert result.exit_code == 2, result.output  # a usage error, before the (missing) model is looked for
    assert "Invalid value for '--prefill-text-tokens'" in " ".join(result.output.replace("│", " ").split())


def test_long_requests_hold_at_most_max_long_rows_and_a_short_one_passes_them(pipe: Pipeline, monkeypatch) -> None:
    """With ``max_long_rows=2``, four long requests (audio over ``long_audio_seconds``) queued at
    once run two at a time, and a short request that arrives meanwhile joins at the next tick,
    ahead of the long ones still waiting (before, all four took rows first)."""
    monkeypatch.setattr(serve_limits, "STARVATION_SECONDS", math.inf)
    long_running: list[int] = []
    real_generate = Scheduler._generate

    def generate(self: Scheduler, jobs: list[Job]) -> None:
        long_running.append(sum(self.is_long(row.job) for row in self._rows) + sum(self.is_long(job) for job in jobs))
        real_generate(self, jobs)

    monkeypatch.setattr(Scheduler, "_generate", generate)
    backlog = [(conversation(1.5, 70 + i), settings(LONG, no_repeat_ngram_size=0), {}) for i in range(4)]
    short = (conversation(0.2, 75), settings(4), {})
    events, prefills = run_backlog(pipe, monkeypatch, math.inf, backlog, late=short, long_audio_seconds=1.0,
                                   max_long_rows=2)
    assert all(finished(e).completion_tokens >= 1 for e in events)
    assert max(long_running) <= 2
    assert sorted(prefills[0][1]) == [0, 1] and prefills[1] == (1, [len(backlog)])  # the short one: next tick


def test_long_rows_run_in_a_batch_of_their_own_stepped_every_few_ticks_while_short_rows_run(
        pipe: Pipeline, monkeypatch) -> None:
    """Two long requests run; a short one that joins meanwhile runs in a batch of its own (its
    steps never read the long rows' caches), which steps every tick while the long batch steps
    every ``long_step_every`` ticks, and at every tick once the short one is done; greedy answers
    are those the requests get alone."""
    monkeypatch.setattr(serve_limits, "STARVATION_SECONDS", math.inf)
    steps: list[tuple[str, int, int]] = []  # (lane, rows, cached positions) of every step
    real_step = RunningBatch.step
    made: list[Scheduler] = []
    real_init = Scheduler.__init__

    def init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        made.append(self)

    def step(batch: RunningBatch, tokens):
        steps.append(("long" if batch is made[0]._lanes[True].batch else "short", batch.rows, batch.length))
        return real_step(batch, tokens)

    monkeypatch.setattr(Scheduler, "__init__", init)
    monkeypatch.setattr(RunningBatch, "step", step)
    backlog = [(conversation(1.5, 60 + i), settings(LONG, no_repeat_ngram_size=0), {}) for i in range(2)]
    short = (conversation(0.2, 65), settings(12, no_repeat_ngram_size=0), {})
    alone = [pipe.generate_requests([pipe.chat_request(m)], s)[0].text for m, s, _ in backlog + [short]]
    events, _ = run_backlog(pipe, monkeypatch, math.inf, backlog, late=short, long_audio_seconds=1.0,
                            long_step_every=3)
    assert [finished(e).text for e in events] == alone
    lanes = [lane for lane, _, _ in steps]
    first, last = lanes.index("short"), len(lanes) - 1 - lanes[::-1].index("short")
    while_short = lanes[first : last + 1]
    assert while_short.count("short") >= 8
    assert abs(while_short.count("long") - while_short.count("short") / 3) <= 1  # every third tick
    assert lanes[last + 1 :] and set(lanes[last + 1 :]) == {"long"}  # at full rate again
    short_steps = [(rows, length) for lane, rows, length in steps if lane == "short"]
    long_lengths = [length for lane, _, length in steps if lane == "long"]
    assert {rows for rows, _ in short_steps} == {1} and max(length for _, length in short_steps) < min(long_lengths)


def test_short_requests_are_not_long_and_the_default_long_rows_are_a_quarter_of_the_batch(pipe: Pipeline) -> None:
    from swv.serve.app import create_app
    from swv.serve.settings import ServeSettings

    scheduler = create_app(pipe, ServeSettings(model_id="m", max_context=64, max_batch=8)).state.batcher
    assert scheduler.max_long_rows == 2
    assert (scheduler.long_audio_seconds, scheduler.long_text_tokens) == (serve_limits.LONG_AUDIO_SECONDS,
                                                                          serve_limits.LONG_TEXT_TOKENS)
    loop = asyncio.new_event_loop()
    try:
        short, long_audio = (Job(pipe.chat_request(conversation(s, 80)), settings(4), loop) for s in (1.0, 31.0))
        long_text = Job(pipe.chat_request(text_only(600, 81)), settings(4), loop)
    finally:
        loop.close()
    assert [scheduler.is_long(job) for job in (short, long_audio, long_text)] == [False, True, True]
    custom = ServeSettings(model_id="m", max_context=64, max_batch=1, long_audio_seconds=5.0, max_long_rows=3)
    scheduler = create_app(pipe, custom).state.batcher
    assert (scheduler.max_long_rows, scheduler.long_audio_seconds) == (3, 5.0)
    assert create_app(pipe, ServeSettings(model_id="m", max_context=64, max_batch=1)).state.batcher.max_long_rows == 1


@pytest.mark.parametrize("field, value, message", [("max_long_rows", 0, "max_long_rows must be >= 1, got 0"),
                                                    ("long_audio_seconds", 0.0, "long_audio_seconds must be > 0, got 0.0"),
                                                    ("long_text_tokens", 0, "long_text_tokens must be >= 1, got 0")])
def test_non_positive_long_request_bounds_are_refused(field: str, value: float, message: str) -> None:
    from swv.core.errors import UsageError
    from swv.serve.settings import ServeSettings

    with pytest.raises(UsageError, match=f"^{message}$"):
        ServeSettings(model_id="m", max_context=64, **{field: value})


def test_a_prompt_run_in_chunks_gives_the_cache_and_logits_of_one_prefill(pipe: Pipeline) -> None:
    requests = [pipe.chat_request(conversation(1.2, 90)), pipe.chat_request(conversation(0.4, 91))]
    with torch.inference_mode():
        prepared = pipe.encode_requests(requests)
        whole, chunked = RunningBatch(pipe.model), RunningBatch(pipe.model)
        expected = whole.prefill(prepared)
        partial = chunked.start(prepared)
        runs = 0
        while not partial.run(7):
            runs += 1
        assert runs >= 3 and partial.remaining == 0
        torch.testing.assert_close(chunked.join(partial), expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(chunked.mask, whole.mask)
        tokens = expected.argmax(dim=-1)
        torch.testing.assert_close(chunked.step(tokens), whole.step(tokens), atol=1e-4, rtol=1e-4)


def test_a_long_prompt_is_prefilled_in_chunks_with_decoding_steps_between(pipe: Pipeline, monkeypatch) -> None:
    """A newcomer whose prompt passes ``prefill_chunk_tokens`` is prefilled a chunk per tick while
    a running request takes a decoding step between two chunks; greedy answers are unchanged."""
    from swv.infer.running import PartialPrefill

    monkeypatch.setattr(serve_limits, "STARVATION_SECONDS", math.inf)
    specs = [(conversation(0.1, 95), settings(400, no_repeat_ngram_size=0), {}),
             (conversation(1.5, 96, text=" ".join(f"word{i % 50}" for i in range(200))), settings(6), {})]
    short, long = (pipe.encode_requests([pipe.chat_request(m)]).prompt_tokens[0] for m, _, _ in specs)
    chunk = short  # the short prompt is prefilled whole, the long one in chunks
    assert long > 3 * chunk
    alone = [pipe.generate_requests([pipe.chat_request(m)], s)[0].text for m, s, _ in specs]
    runs: list[int] = []
    real_run = PartialPrefill.run
    scheduler: list[Scheduler] = []

    def run(self: PartialPrefill, positions: int) -> bool:
        assert positions == chunk
        runs.append(scheduler[0].steps)
        return real_run(self, positions)

    monkeypatch.setattr(PartialPrefill, "run", run)
    real_init = Scheduler.__init__

    def init(self: Scheduler, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        scheduler.append(self)

    monkeypatch.setattr(Scheduler, "__init__", init)
    events, prefills = run_backlog(pipe, monkeypatch, math.inf, specs, prefill_chunk_tokens=chunk)
    assert [finished(e).text for e in events] == alone
    assert len(runs) == -(-long // chunk)  # ceil: one chunk per tick
    assert runs == sorted(set(runs))  # a decoding step of the running row between any two chunks
    assert prefills == [(0, [0])]  # only the short prompt ran whole


def test_long_audio_is_encoded_in_a_lower_priority_thread_while_running_rows_step(pipe: Pipeline, monkeypatch) -> None:
    """A long request's audio is encoded outside the worker thread (in the encoder thread, its nice
    value raised on Linux): the running request takes decoding steps meanwhile (here its encoding
    waits for them; in the worker thread it would wait forever), and the answers are unchanged."""
    import os
    import sys

    monkeypatch.setattr(serve_limits, "STARVATION_SECONDS", math.inf)
    specs = [(conversation(0.1, 97), settings(400, no_repeat_ngram_size=0), {}), (conversation(1.5, 98), settings(5), {})]
    alone = [pipe.generate_requests([pipe.chat_request(m)], s)[0].text for m, s, _ in specs]
    made: list[Scheduler] = []
    real_init = Scheduler.__init__
    monkeypatch.setattr(Scheduler, "__init__", lambda self, *a, **k: (real_init(self, *a, **k), made.append(self))[0])
    seen: list[tuple[str, int, int]] = []
    real_encode = Pipeline.encode_requests

    def encode(self, requests, *args, **kwargs):
        if any(self.audio_seconds(request) > 1.0 for request in requests):
            deadline = time.monotonic() + 30
            while made[0].steps < 5 and time.monotonic() < deadline:  # the running row steps meanwhile
                time.sleep(0.01)
            nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if sys.platform.startswith("linux") else 0
            seen.append((threading.current_thread().name, made[0].steps, nice))
        return real_encode(self, requests, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "encode_requests", encode)
    base = os.getpriority(os.PRIO_PROCESS, 0) if sys.platform.startswith("linux") else 0
    # the 1.5 s request is long; it arrives once the short one runs
    events, prefills = run_backlog(pipe, monkeypatch, math.inf, specs[:1], late=specs[1], long_audio_seconds=1.0,
                                   long_encode_nice=3)
    assert [finished(e).text for e in events] == alone
    ((thread, steps, nice),) = seen
    assert thread.startswith("swv-encode") and steps >= 5
    if sys.platform.startswith("linux"):
        assert nice == min(19, base + 3)
