"""`swv serve` operations: the API key, CORS, the Host allow-list and cross-site refusals, body
and connection timeouts, Prometheus metrics, request ids, and the graceful drain on SIGTERM
(a `swv serve` subprocess). Servers run on 127.0.0.1 with a tiny random-init model."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from swv.core.errors import UsageError  # noqa: E402
from swv.infer.pipeline import Pipeline  # noqa: E402
from swv.model.speechlm import SpeechLM  # noqa: E402
from swv.serve.app import create_app  # noqa: E402
from swv.serve.background import BackgroundServer  # noqa: E402
from swv.serve.body import BodyBudget  # noqa: E402
from swv.serve.openai_api import RequestError  # noqa: E402
from swv.serve.ops import request_id  # noqa: E402
from swv.serve.security import is_loopback  # noqa: E402
from swv.serve.server import ServerOptions  # noqa: E402
from swv.serve.settings import ServeSettings  # noqa: E402

MODEL_ID = "tiny-swv"
KEY = "s3cret-key"
SR = 16000


@pytest.fixture(scope="module")
def model_dir(model_config_factory, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ops_model") / "model"
    SpeechLM(model_config_factory()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipeline(model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(model_dir)


def serving(pipeline: Pipeline, options: ServerOptions | None = None, **fields) -> BackgroundServer:
    settings = ServeSettings(model_id=MODEL_ID, max_context=2048, default_max_tokens=4, **fields)
    return BackgroundServer(create_app(pipeline, settings), options=options)


def call(server: BackgroundServer | Listening, method: str, path: str, body: bytes | dict | None = None,
         **headers: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request; ``headers`` with ``_`` for ``-`` (``Host`` replaces the real one)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=data, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def wav(seconds: float, seed: int = 0) -> str:
    buffer = io.BytesIO()
    samples = (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)
    sf.write(buffer, samples, SR, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def chat_body(seconds: float = 0.5) -> dict:
    content = [{"type": "input_audio", "input_audio": {"data": wav(seconds), "format": "wav"}},
               {"type": "text", "text": "Transcribe."}]
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


JSON = {"Content_Type": "application/json"}


# -- the API key ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(pipeline):
    with serving(pipeline, api_key=KEY) as server:
        yield server


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", f"Basic {KEY}", f"Bearer {KEY[:-1]}",
                                           f"Bearer {KEY}x", f"Bearer{KEY}", f"Bearer {KEY.upper()}",
                                           "Bearer s\u00e9cret-key", f"Bearer {KEY} {KEY}"])
def test_a_wrong_or_missing_key_is_refused(keyed, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat_body()),
                               ("GET", "/v1/no-such-route", None)):
        status, _, reply = call(keyed, method, path, body, **headers, **JSON)
        assert status == 401, (authorization, path)
        error = json.loads(reply)["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key" and error["message"]


def test_the_right_key_is_served_and_open_routes_stay_open(keyed) -> None:
    status, _, reply = call(keyed, "GET", "/v1/models", Authorization=f"Bearer {KEY}")
    assert status == 200 and json.loads(reply)["data"][0]["id"] == MODEL_ID
    status, _, reply = call(keyed, "POST", "/v1/chat/completions", chat_body(), Authorization=f"bearer {KEY}", **JSON)
    assert status == 200 and json.loads(reply)["choices"][0]["finish_reason"] in ("stop", "length")
    assert call(keyed, "GET", "/health")[0] == 200
    status, _, page = call(keyed, "GET", "/")
    assert status == 200 and b'id="api-key"' in page and b"Authorization: `Bearer ${state.key}`" in page


#: Runs the page's script in node with a minimal DOM against a real server (argv: the script, the
#: server's URL, the key): it loads, is refused, gets the key typed in, then chats.
PAGE_DRIVER = r"""
// Runs the page's script with a minimal DOM against a real server: argv = page.js, base url, key.
const fs = require("fs");
const [script, base, key] = process.argv.slice(2);
const elements = {};
function element(id) {
  const el = { id, hidden: id === "key-row", value: "", textContent: id === "model-id" ? "…" : "", children: [],
    className: "", dataset: {}, disabled: false, listeners: {},
    classList: { add(name) { el.className += ` ${name}`; } },
    addEventListener(kind, fn) { el.listeners[kind] = fn; }, focus() {},
    appendChild(child) { el.children.push(child); return child; },
    querySelector(sel) { return el.children.find((c) => `.${c.className}` === sel); },
    set innerHTML(v) { el.children = []; } };
  return el;
}
globalThis.document = {
  getElementById: (id) => (elements[id] ||= element(id)),
  createElement: () => element(""),
};
const store = {};
globalThis.sessionStorage = { getItem: (k) => store[k] ?? null, setItem: (k, v) => { store[k] = v; } };
const realFetch = fetch;
globalThis.fetch = (url, opts) => realFetch(base + url, opts);
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  eval(fs.readFileSync(script, "utf8"));
  await wait(1000);
  const $ = document.getElementById;
  const before = { keyRowHidden: $("key-row").hidden, model: $("model-id").textContent, status: $("status").textContent };
  $("api-key").value = ` ${key} `;
  $("api-key").listeners.change();
  await wait(1000);
  const after = { model: $("model-id").textContent, stored: store["swv-api-key"] };
  $("prompt").value = "Say something."; $("max-tokens").value = "4";
  await $("send").listeners.click();
  const turn = $("log").children[1];
  console.log(JSON.stringify({ before, after, done: turn.dataset.done, reply: turn.children[0].textContent }));
})();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (the page's script runs in it)")
def test_the_page_asks_for_the_key_then_chats(keyed, tmp_path: Path) -> None:
    page = call(keyed, "GET", "/")[2].decode()
    (tmp_path / "page.js").write_text(page.split("<script>", 1)[1].split("</script>", 1)[0], encoding="utf-8")
    (tmp_path / "driver.js").write_text(PAGE_DRIVER, encoding="utf-8")
    done = subprocess.run(["node", str(tmp_path / "driver.js"), str(tmp_path / "page.js"), f"http://127.0.0.1:{keyed.port}",
                           KEY], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] == {"keyRowHidden": False, "model": "\u2026", "status": "enter the server's API key"}
    assert seen["after"] == {"model": MODEL_ID, "stored": KEY}
    assert seen["done"] == "1" and isinstance(seen["reply"], str)


@pytest.mark.parametrize("key", ["", " padded", "tab\tkey", "cl\u00e9"])
def test_an_unusable_key_is_refused_at_startup(key: str) -> None:
    with pytest.raises(UsageError, match="API key"):
        ServeSettings(model_id="m", max_context=16, api_key=key)


# -- CORS, Host, Origin and content type --------------------------------------------------------
@pytest.fixture(scope="module")
def plain(pipeline):
    with serving(pipeline) as server:
        yield server


@pytest.fixture(scope="module")
def cors(pipeline):
    with serving(pipeline, allowed_origins=("https://app.example",), allowed_hosts=("swv.lan",)) as server:
        yield server


PREFLIGHT = {"Access_Control_Request_Method": "POST", "Access_Control_Request_Headers": "authorization,content-type"}


def test_cors_preflight_answers_only_allowed_origins(plain, cors) -> None:
    status, headers, _ = call(cors, "OPTIONS", "/v1/chat/completions", Origin="https://app.example", **PREFLIGHT)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers, _ = call(cors, "OPTIONS", "/v1/chat/completions", Origin="https://evil.example", **PREFLIGHT)
    assert status == 400 and "access-control-allow-origin" not in headers
    status, headers, _ = call(plain, "OPTIONS", "/v1/chat/completions", Origin="https://app.example", **PREFLIGHT)
    assert status >= 400 and not [name for name in headers if name.lower().startswith("access-control-")]
    status, headers, _ = call(plain, "GET", "/v1/models", Origin="https://app.example")
    assert status == 200 and "access-control-allow-origin" not in headers


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:1", "[::1]", "[::1]:80",
                                  "LOCALHOST"])
def test_loopback_host_names_are_answered(plain, host: str) -> None:
    assert call(plain, "GET", "/health", Host=host)[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "[::1", "127.0.0.2", "", "swv.lan"])
def test_other_host_names_get_400(plain, host: str) -> None:
    assert call(plain, "GET", "/health", Host=host)[0] == 400


def test_allowed_hosts_extend_the_list_and_other_binds_answer_any(cors, pipeline) -> None:
    assert call(cors, "GET", "/health", Host="swv.lan:8000")[0] == 200
    assert call(cors, "GET", "/health", Host="localhost")[0] == 200
    assert call(cors, "GET", "/health", Host="evil.example")[0] == 400
    with serving(pipeline, bind_host="0.0.0.0") as anywhere:
        assert call(anywhere, "GET", "/health", Host="evil.example")[0] == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert is_loopback("127.8.9.1") and not is_loopback("0.0.0.0") and not is_loopback("example.com")


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example", "file://",
                                    "http://localhost:1"])
def test_cross_site_posts_are_refused(plain, cors, origin: str) -> None:
    for server in (plain, cors):
        status, _, reply = call(server, "POST", "/v1/chat/completions", chat_body(), Origin=origin, **JSON)
        assert status == 403 and json.loads(reply)["error"]["code"] == "origin_not_allowed"


def test_same_site_and_allowed_origin_posts_pass(plain, cors) -> None:
    body = {**chat_body(), "model": "other"}  # passes the checks, then 404 from the route
    status, _, _ = call(plain, "POST", "/v1/chat/completions", body, Origin=f"http://127.0.0.1:{plain.port}", **JSON)
    assert status == 404
    status, headers, _ = call(cors, "POST", "/v1/chat/completions", body, Origin="https://app.example", **JSON)
    assert status == 404 and headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx", "text/json"])
def test_non_json_bodies_get_415(plain, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content_Type": content_type}
    status, _, reply = call(plain, "POST", "/v1/chat/completions", json.dumps(chat_body()).encode(), **headers)
    assert status == 415 and json.loads(reply)["error"]["code"] == "unsupported_media_type"
    body = {**chat_body(), "model": "other"}
    assert call(plain, "POST", "/v1/chat/completions", body, Content_Type="Application/JSON; charset=utf-8")[0] == 404


# -- slow clients --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def strict(pipeline):
    options = ServerOptions(keep_alive_seconds=1, max_header_bytes=4096, max_connections=4, header_timeout_seconds=1)
    with serving(pipeline, options, body_timeout_seconds=0.5) as server:
        yield server


def raw(server: BackgroundServer, data: bytes, wait: float = 0.0, more: bytes = b"") -> bytes:
    """Send ``data``, after ``wait`` s ``more``, then read until the server closes or 5 s pass."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(data)
        time.sleep(wait)
        if more:
            conn.sendall(more)
        reply = b""
        try:
            while chunk := conn.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
        return reply


def test_a_body_that_trickles_is_cut_off_with_408(strict) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    started = time.monotonic()
    reply = raw(strict, head + b'{"model": ')
    assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in reply, reply[:300]
    assert time.monotonic() - started < 4.5
    chunked = head.replace(b"Content-Length: 1000", b"Transfer-Encoding: chunked")
    assert raw(strict, chunked + b"5\r\n{\"mo\"\r\n").startswith(b"HTTP/1.1 408")


def test_oversized_headers_and_idle_connections_are_cut_off(strict) -> None:
    bloated = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 8000
    assert raw(strict, bloated, 0.3, b"\r\n\r\n").startswith(b"HTTP/1.1 400")
    started = time.monotonic()
    reply = raw(strict, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # keep-alive: closed when idle
    assert reply.startswith(b"HTTP/1.1 200") and 0.8 < time.monotonic() - started < 4.5


def trickle(server: BackgroundServer, pieces: list[bytes], pause: float) -> tuple[bytes, float]:
    """Send ``pieces`` ``pause`` s apart (stopping if the server closes); the reply and when it ended."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        try:
            for piece in pieces:
                conn.sendall(piece)
                time.sleep(pause)
        except OSError:  # closed by the server while sending
            pass
        reply = b""
        try:
            while chunk := conn.recv(65536):
                reply += chunk
        except (TimeoutError, OSError):
            pass
        return reply, time.monotonic() - started


def test_headers_that_trickle_in_are_cut_off_with_408(strict) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40
    reply, seconds = trickle(strict, [head[i:i + 4] for i in range(0, len(head), 4)], 0.1)  # 1.6 s of headers
    assert reply.startswith(b"HTTP/1.1 408") and 0.9 < seconds < 4, (reply[:200], seconds)
    reply, seconds = trickle(strict, [], 0.0)  # a connection that sends nothing
    assert reply.startswith(b"HTTP/1.1 408") and 0.9 < seconds < 4, (reply[:200], seconds)
    # headers within the deadline, sent in pieces, are served; so is a second request on the connection
    normal = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reply, _ = trickle(strict, [normal[:10], normal[10:], normal], 0.3)
    assert reply.count(b"HTTP/1.1 200") == 2, reply[:300]
    # a second request whose headers trickle in after the first answer is cut off as well
    reply, seconds = trickle(strict, [normal, *[head[i:i + 8] for i in range(0, len(head), 8)]], 0.2)
    assert reply.startswith(b"HTTP/1.1 200") and reply.rstrip().endswith(b"HTTP/1.1 408 Request Timeout\r\n"
                                                                           b"content-length: 0\r\nconnection: close"), reply
    assert call(strict, "GET", "/health")[0] == 200


def test_connections_past_the_limit_get_503(strict) -> None:
    idle = [socket.create_connection(("127.0.0.1", strict.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)
        assert call(strict, "GET", "/health")[0] == 503
    finally:
        for conn in idle:
            conn.close()
    time.sleep(0.3)
    assert call(strict, "GET", "/health")[0] == 200


def test_the_body_budget_lets_what_fits_pass_and_refuses_after_the_timeout() -> None:
    async def scenario() -> list[tuple[str, int]]:
        budget, seen = BodyBudget(100), []

        async def big() -> None:
            async with budget.reserve(50, 2.0):
                seen.append(("big", budget.held))

        async with budget.reserve(70, 1.0):
            waiting = asyncio.create_task(big())
            async with budget.reserve(30, 1.0):
                seen.append(("small", budget.held))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            with pytest.raises(RequestError) as refused:
                async with budget.reserve(50, 0.05):
                    pass
            assert refused.value.status == 503 and refused.value.code == "server_busy"
        await waiting
        async with budget.reserve(10**9, 0.1):  # a body over the whole budget holds all of it
            seen.append(("huge", budget.held))
        return [*seen, ("after", budget.held)]

    assert asyncio.run(scenario()) == [("small", 100), ("big", 50), ("huge", 100), ("after", 0)]


def test_big_bodies_leave_the_budget_s_reserve_to_small_ones() -> None:
    """A body larger than the reserve (a chunked body reserves the largest body allowed) never
    takes the budget's last ``reserve`` bytes: a small body finds room while big ones fill the
    rest (before, a chunked body's reservation could take the whole budget)."""
    async def scenario() -> list[tuple[str, int]]:
        budget, seen = BodyBudget(100, reserve=20), []
        async with budget.reserve(10**9, 0.1):  # chunked: as much as a big body may hold
            seen.append(("chunked", budget.held))
            async with budget.reserve(15, 0.1):
                seen.append(("small", budget.held))
            with pytest.raises(RequestError):
                async with budget.reserve(21, 0.05):  # bigger than the reserve: no room
                    pass
        assert BodyBudget(100, reserve=80).small_reserve == 50  # at most half the budget
        return seen

    assert asyncio.run(scenario()) == [("chunked", 80), ("small", 95)]
    assert ServeSettings(model_id="m", max_context=16).body_buffer_reserve == 8 * 1024 * 1024


def test_a_body_waits_for_room_in_the_budget_while_small_ones_pass(pipeline) -> None:
    with serving(pipeline, body_buffer_bytes=120_000, body_buffer_reserve=0, body_timeout_seconds=2.0) as server:
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 90000\r\n\r\n")
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            slow = pool.submit(raw, server, head + b'{"model": ')  # holds 90 kB until cut off (408 at 2 s)
            time.sleep(0.3)
            big = pool.submit(call, server, "POST", "/v1/chat/completions",
                              {"model": MODEL_ID, "pad": "a" * 40_000}, **JSON)  # 40 kB: waits for room
            assert call(server, "POST", "/v1/chat/completions", chat_body(), **JSON)[0] == 200  # 22 kB fits
            assert not big.done()
            assert big.result()[0] == 400 and time.monotonic() - started > 1.8  # read once the slow one left
            assert slow.result().startswith(b"HTTP/1.1 408")


def test_connection_bounds_must_be_positive() -> None:
    with pytest.raises(UsageError, match="drain_timeout_seconds"):
        ServerOptions(drain_timeout_seconds=0)
    with pytest.raises(UsageError, match="body_buffer_bytes"):
        ServeSettings(model_id="m", max_context=16, body_buffer_bytes=0)
    with pytest.raises(UsageError, match="header_timeout_seconds"):
        ServerOptions(header_timeout_seconds=0)
    with pytest.raises(UsageError, match="body_timeout_seconds"):
        ServeSettings(model_id="m", max_context=16, body_timeout_seconds=0)


# -- metrics and request ids ---------------------------------------------------------------------
def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} not in metrics"
    return float(found.group(1))


def test_metrics_count_requests_tokens_and_audio_per_app(pipeline) -> None:
    pytest.importorskip("prometheus_client")
    with serving(pipeline) as first, serving(pipeline) as second:
        for _ in range(2):
            status, _, reply = call(first, "POST", "/v1/chat/completions", chat_body(0.5), **JSON)
            assert status == 200
        tokens = json.loads(reply)["usage"]["completion_tokens"]
        call(first, "GET", "/no/such/path/123")
        call(second, "GET", "/health")
        status, headers, text = call(first, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        text = text.decode()
        assert metric(text, "swv_requests_total", route="/v1/chat/completions", status="200") == 2
        assert metric(text, "swv_requests_total", route="unmatched", status="404") == 1
        assert metric(text, "swv_request_duration_seconds_count", route="/v1/chat/completions") == 2
        assert metric(text, "swv_queue_depth") == 0
        assert metric(text, "swv_generated_tokens_total") >= tokens >= 1
        assert metric(text, "swv_audio_seconds_total") == pytest.approx(1.0)
        assert "/no/such/path" not in text and 'route="/health"' not in text
        other = call(second, "GET", "/metrics")[2].decode()
        assert metric(other, "swv_requests_total", route="/health", status="200") == 1
        assert "/v1/chat/completions" not in other and metric(other, "swv_generated_tokens_total") == 0


def test_without_prometheus_client_metrics_answer_501(pipeline, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import prometheus_client raises ImportError
    with serving(pipeline) as server:
        status, _, text = call(server, "GET", "/metrics")
        assert status == 501 and text.decode().count("\n") == 1 and "pip install 'swv[serve]'" in text.decode()
        assert call(server, "GET", "/health")[0] == 200


@pytest.mark.parametrize("incoming", [None, "", "x" * 129, "bad\x01id", "caf\u00e9", "two words\ttab"])
def test_unusable_request_ids_are_replaced(plain, incoming: str | None) -> None:
    headers = {} if incoming is None else {"X_Request_Id": incoming}
    _, response, _ = call(plain, "GET", "/health", **headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response["x-request-id"]) and response["x-request-id"] != incoming
    assert request_id(incoming) != incoming


def test_request_ids_are_returned_and_logged(plain, keyed, caplog) -> None:
    caplog.set_level(logging.INFO, logger="swv.serve")
    ids = set()
    for server, path in ((plain, "/health"), (keyed, "/v1/models"), (plain, "/v1/models/%0Aforged")):
        _, response, _ = call(server, "GET", path, X_Request_Id=f"trace-{path}")
        ids.add(response["x-request-id"])
    assert ids == {"trace-/health", "trace-/v1/models", "trace-/v1/models/%0Aforged"}
    _, first, _ = call(plain, "GET", "/health")
    _, second, _ = call(plain, "GET", "/health", Host="evil.example")
    assert first["x-request-id"] != second["x-request-id"]

    def logged(rid: str, status: int) -> bool:  # the line is written once the answer is sent
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = [record.getMessage() for record in caplog.records if record.name == "swv.serve"]
            if any(line.startswith(f"request {rid}: ") and f"-> {status} " in line for line in lines):
                return all("\n" not in line for line in lines)
            time.sleep(0.05)
        return False

    assert logged("trace-/v1/models", 401) and logged("trace-/v1/models/%0Aforged", 404)
    assert logged(second["x-request-id"], 400)


# -- the audio API under the same controls ------------------------------------------------------
AUDIO = "/v1/audio/transcriptions"


def audio_form(seconds: float = 0.5, model: str = MODEL_ID) -> tuple[bytes, dict[str, str]]:
    """A multipart transcription request: its body and its Content-Type header."""
    boundary = "swv-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + base64.b64decode(wav(seconds)) + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content_Type": f"multipart/form-data; boundary={boundary}"}


def test_audio_routes_want_the_key_carry_request_ids_and_are_counted(pipeline) -> None:
    pytest.importorskip("prometheus_client")
    body, form = audio_form(0.5)
    with serving(pipeline, api_key=KEY) as server:
        for headers in ({}, {"Authorization": f"Bearer {KEY}x"}):
            status, _, reply = call(server, "POST", AUDIO, body, **headers, **form)
            assert status == 401 and json.loads(reply)["error"]["code"] == "invalid_api_key"
        status, response, reply = call(server, "POST", AUDIO, body, Authorization=f"Bearer {KEY}",
                                       X_Request_Id="audio-1", **form)
        assert status == 200 and isinstance(json.loads(reply)["text"], str)
        assert response["x-request-id"] == "audio-1"
        text = call(server, "GET", "/metrics")[2].decode()
    assert metric(text, "swv_requests_total", route=AUDIO, status="200") == 1
    assert metric(text, "swv_requests_total", route="unmatched", status="401") == 2  # refused before routing
    assert metric(text, "swv_audio_seconds_total") == pytest.approx(0.5)
    assert metric(text, "swv_generated_tokens_total") >= 1


def test_audio_forms_pass_the_content_type_check_but_not_the_origin_checks(plain) -> None:
    body, form = audio_form(0.2, model="other")  # passes the checks, then 404 from the route
    assert call(plain, "POST", AUDIO, body, **form)[0] == 404
    assert call(plain, "POST", AUDIO, body, Origin=f"http://127.0.0.1:{plain.port}", **form)[0] == 404
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec_Fetch_Site": "cross-site"},
                    {"Sec_Fetch_Site": "same-site"}):
        status, _, reply = call(plain, "POST", AUDIO, body, **headers, **form)
        assert status == 403 and json.loads(reply)["error"]["code"] == "origin_not_allowed", headers
    for kind in ("application/json", "text/plain", "application/x-www-form-urlencoded", None):
        headers = {} if kind is None else {"Content_Type": kind}
        status, _, reply = call(plain, "POST", AUDIO, body, **headers)
        assert status == 415 and json.loads(reply)["error"]["code"] == "unsupported_media_type", kind
    status, _, _ = call(plain, "POST", "/v1/chat/completions", body, Sec_Fetch_Site="same-origin", **form)
    assert status == 415  # multipart only where the audio routes take it


def test_an_audio_body_that_trickles_is_cut_off_with_408(strict) -> None:
    head = (f"POST {AUDIO} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: 1000\r\n\r\n").encode()
    reply = raw(strict, head + b"--b\r\n")
    assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in reply, reply[:300]


def test_a_draining_server_refuses_new_audio_requests(pipeline) -> None:
    app = create_app(pipeline, ServeSettings(model_id=MODEL_ID, max_context=2048, default_max_tokens=4))
    with BackgroundServer(app) as server:
        app.state.drain.begin(30)
        body, form = audio_form(0.2)
        status, _, reply = call(server, "POST", AUDIO, body, **form)
    assert status == 503 and json.loads(reply)["error"]["code"] == "shutting_down"


# -- drain on SIGTERM (a `swv serve` subprocess) ------------------------------------------------
@dataclass(frozen=True)
class Listening:
    """A server known by its port (what :func:`call` needs)."""

    port: int


def test_sigterm_drains_in_flight_requests_and_exits_0(model_dir: Path, swv_serve) -> None:
    with swv_serve(model_dir, "--model-name", MODEL_ID, "--max-tokens", "4", "--drain-timeout", "60",
                   env={"SWV_API_KEY": KEY}) as (port, proc):
        server = Listening(port)
        assert call(server, "GET", "/v1/models")[0] == 401  # the key came from SWV_API_KEY
        body = json.dumps(chat_body()).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as slow:
            slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:100])
            time.sleep(0.5)  # the request is in flight: its body is half sent
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            status, headers, reply = call(server, "GET", "/health")
            assert status == 503 and json.loads(reply)["error"]["code"] == "shutting_down"
            assert proc.poll() is None
            slow.sendall(body[100:])
            answer = b""
            while chunk := slow.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["choices"][0]["finish_reason"] in ("stop", "length")
        assert proc.wait(timeout=60) == 0, proc.stdout.read().decode()
        log = proc.stdout.read().decode()  # one line per request, with its id
        assert re.search(r"request [0-9a-f]{32}: POST '/v1/chat/completions' -> 200 ", log), log
        assert re.search(r"request [0-9a-f]{32}: GET '/health' -> 503 ", log), log
