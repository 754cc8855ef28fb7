"""`swv serve`: the real server on 127.0.0.1 driven with the official openai client
(streaming and not, multi-turn, wav/flac/mp3), OpenAI-format 4xx errors that never stop the
server, a bounded 16-client load test whose batched answers equal the single-request ones,
and the `swv serve` command in a subprocess."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from swv.infer.pipeline import Pipeline  # noqa: E402
from swv.model.speechlm import SpeechLM  # noqa: E402
from swv.serve.app import create_app  # noqa: E402
from swv.serve.background import BackgroundServer  # noqa: E402
from swv.serve.settings import ServeSettings, model_context_length  # noqa: E402

SR = 16000
MODEL_ID = "tiny-swv"
MAX_TOKENS = 8


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


def encoded(samples: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format=fmt.upper())
    return buffer.getvalue()


def audio_part(data: bytes, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def turn(data: bytes, text: str, fmt: str = "wav") -> dict:
    return {"role": "user", "content": [audio_part(data, fmt), {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def model_dir(model_config_factory, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("serve_model") / "model"
    SpeechLM(model_config_factory()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Pipeline:
    """A pipeline of its own, for the single-request answers."""
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model_dir: Path):
    pipe = Pipeline.from_pretrained(model_dir)
    settings = ServeSettings(model_id=MODEL_ID, max_context=model_context_length(pipe), max_batch=8,
                             batch_window_seconds=0.05, max_audio_seconds=5.0, default_max_tokens=MAX_TOKENS)
    app = create_app(pipe, settings)
    with BackgroundServer(app) as running:
        running.app = app
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def expected(reference: Pipeline, messages: list[dict], max_tokens: int = MAX_TOKENS) -> str:
    return reference.chat(messages, max_new_tokens=max_tokens)


def post(server, body: bytes | dict, path: str = "/v1/chat/completions", method: str = "POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_health_and_page(server, client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).owned_by == "swv"
    status, body = post(server, b"", "/health", "GET")
    assert status == 200 and body["status"] == "ok" and body["model"] == MODEL_ID
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        page = response.read().decode()
    assert response.headers["content-type"].startswith("text/html") and 'id="record"' in page


def test_model_lookup_and_body_limit(server, reference: Pipeline) -> None:
    status, listed = post(server, b"", "/v1/models", "GET")
    status, card = post(server, b"", f"/v1/models/{MODEL_ID}", "GET")
    assert status == 200 and card == listed["data"][0] and card["id"] == MODEL_ID
    status, reply = post(server, b"", "/v1/models/gpt-4o", "GET")
    assert status == 404 and reply["error"]["code"] == "model_not_found" and reply["error"]["param"] == "model"
    settings = ServeSettings(model_id=MODEL_ID, max_context=model_context_length(reference), max_body_bytes=256)
    with BackgroundServer(create_app(reference, settings)) as small:
        status, reply = post(small, {"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 1000}]})
        assert status == 413 and "exceeds 256 bytes" in reply["error"]["message"]
        status, health = post(small, b"", "/health", "GET")
        assert status == 200 and health["pending"] == 0 and health["batches_served"] == 0


def test_completion_equals_the_pipeline_answer(server, client, reference: Pipeline) -> None:
    messages = [turn(encoded(noise(1.0, 1), "wav"), "Transcribe the speech.")]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected(reference, messages)
    assert choice.finish_reason in ("stop", "length")
    prepared = reference.encode_requests([reference.chat_request(messages)])
    assert reply.usage.prompt_tokens == prepared.prompt_tokens[0]
    assert 1 <= reply.usage.completion_tokens <= MAX_TOKENS
    assert reply.model == MODEL_ID and reply.id.startswith("chatcmpl-")


def test_streaming_gives_the_same_answer(server, client, reference: Pipeline) -> None:
    messages = [turn(encoded(noise(0.8, 2), "flac"), "What is said?", "flac")]
    stream = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert text == expected(reference, messages)


def test_multi_turn_with_wav_flac_and_mp3(server, client, reference: Pipeline) -> None:
    messages = [
        turn(encoded(noise(0.7, 3), "wav"), "Transcribe the speech."),
        {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": [{"type": "text", "text": "Now compare"}, audio_part(encoded(noise(0.5, 4), "flac"), "flac"),
                                     {"type": "text", "text": "with"}, audio_part(encoded(noise(0.6, 5), "mp3"), "mp3")]},
    ]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == expected(reference, messages)


def test_temperature_samples_and_max_tokens_limits(server, client) -> None:
    messages = [turn(encoded(noise(0.5, 6), "wav"), "Describe.")]
    reply = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=3, temperature=1.3, top_p=0.9)
    assert reply.usage.completion_tokens <= 3
    if reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length":
        assert len(reply.choices[0].message.content.split()) <= 3 * 4


BAD = [
    ("malformed JSON", b'{"model": "tiny-swv", "messages": [', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("no messages", {"model": MODEL_ID}, 400, "messages"),
    ("unknown model", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ("not audio", {"model": MODEL_ID, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"hello, not audio").decode(), "format": "wav"}}]}]},
     400, "messages[0].content[0].input_audio"),
    ("bad base64", {"model": MODEL_ID, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "mp3"}}]}]}, 400, "messages[0].content[0].input_audio.data"),
    ("server file path", {"model": MODEL_ID, "messages": [{"role": "user", "content": [
        {"type": "audio", "path": "/etc/hostname"}]}]}, 400, "messages[0].content[0].type"),
    ("bad role", {"model": MODEL_ID, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("negative max_tokens", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
     400, "max_tokens"),
    ("too many tokens", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
     400, "messages"),
    ("unsupported n", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ("temperature out of range", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "temperature": 7},
     400, "temperature"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(server, case: str, body, status: int, param: str | None) -> None:
    got, reply = post(server, body)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if case == "too many tokens":
        assert error["code"] == "context_length_exceeded"


def test_too_long_audio_and_other_routes_then_the_server_still_answers(server, client, reference: Pipeline) -> None:
    long_clip = [turn(encoded(noise(6.0, 7), "wav"), "Transcribe.")]
    status, reply = post(server, {"model": MODEL_ID, "messages": long_clip})
    assert status == 400 and "exceeds the maximum duration of 5 s" in reply["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_ID, messages=long_clip)
    status, reply = post(server, b"", "/v1/nothing", "GET")
    assert status == 404 and reply["error"]["type"] == "not_found_error"
    status, reply = post(server, b"", "/v1/chat/completions", "GET")
    assert status == 405 and "error" in reply
    messages = [turn(encoded(noise(0.4, 8), "wav"), "Transcribe.")]
    assert client.chat.completions.create(model=MODEL_ID, messages=messages).choices[0].message.content == \
        expected(reference, messages)


def test_sixteen_concurrent_clients_get_their_single_request_answers(server, reference: Pipeline) -> None:
    """Bounded load: 16 clients at once (mixed lengths: left padding in the batch), half streaming."""
    conversations = []
    for i in range(16):
        messages = [turn(encoded(noise(0.3 + 0.1 * i, 100 + i), "wav"), ["Transcribe.", "What is the emotion?"][i % 2])]
        if i % 3 == 0:
            messages += [{"role": "assistant", "content": "ok"},
                         turn(encoded(noise(0.2 + 0.05 * i, 200 + i), "wav"), "And this?")]
        conversations.append(messages)
    singles = [expected(reference, m) for m in conversations]
    batches_before = server.app.state.batcher.batches_served

    def ask(i: int) -> str:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        if i % 2:
            stream = client.chat.completions.create(model=MODEL_ID, messages=conversations[i], max_tokens=MAX_TOKENS,
                                                    stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        reply = client.chat.completions.create(model=MODEL_ID, messages=conversations[i], max_tokens=MAX_TOKENS)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16), timeout=300))
    assert answers == singles
    assert server.app.state.batcher.batches_served - batches_before < 16  # requests were batched


def test_swv_serve_command(model_dir: Path, reference: Pipeline, swv_serve) -> None:
    with swv_serve(model_dir, "--model-name", "m", "--max-tokens", "5") as (port, _):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [turn(encoded(noise(0.5, 9), "wav"), "Transcribe.")]
        reply = client.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content == expected(reference, messages, 5)
