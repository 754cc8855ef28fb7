"""`swv serve`: OpenAI's audio API (/v1/audio/transcriptions and /translations, every
response_format, through the official openai client), the chat request options (stop, seed,
top_k, repetition_penalty, logprobs; n and the penalties refused), sampling from the model's
saved decoding defaults, and hostile uploads answered with a clean 4xx."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import urllib.error
import urllib.request
import uuid
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
BODY_LIMIT = 1 << 20


def wav(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    sf.write(buffer, (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(model_config_factory, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("audio_api_model") / "model"
    SpeechLM(model_config_factory()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(model_dir)


def serve(pipe: Pipeline, **bounds):
    settings = ServeSettings(model_id=MODEL_ID, max_context=model_context_length(pipe), max_audio_seconds=5.0,
                             default_max_tokens=MAX_TOKENS, max_text_chars=2000, **bounds)
    return BackgroundServer(create_app(pipe, settings))


@pytest.fixture(scope="module")
def server(model_dir: Path):
    # refused requests answered at once (the refusal throttle has tests of its own)
    with serve(Pipeline.from_pretrained(model_dir), max_body_bytes=BODY_LIMIT, refusals_per_second=0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.wav"
    path.write_bytes(wav(1.0, 1))
    return path


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="a.wav"\r\n'
              f"Content-Type: audio/wav\r\n\r\n".encode() + data + b"\r\n" for k, data in files.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(server, fields: dict[str, str], files: dict[str, bytes], path: str = "transcriptions") -> tuple[int, dict]:
    return post_form(server, *multipart(fields, files), path)


def post_form(server, body: bytes, kind: str, path: str = "transcriptions") -> tuple[int, dict]:
    """POST ``body`` as Content-Type ``kind``: the status and the JSON reply."""
    request = urllib.request.Request(f"{server.url}/v1/audio/{path}", data=body, method="POST",
                                     headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def refused(server, fields: dict[str, str], files: dict[str, bytes], status: int = 400, param: str | None = None,
            match: str = "", path: str = "transcriptions") -> None:
    got, reply = upload(server, fields, files, path)
    assert got == status, reply
    assert match in reply["error"]["message"] and reply["error"]["param"] == param, reply


def greedy(reference: Pipeline, path: Path, prompt: str) -> str:
    return reference(str(path), prompt=prompt, max_new_tokens=MAX_TOKENS)


# -- the audio endpoints -----------------------------------------------------------------------
def test_transcription_formats_through_the_openai_client(client, reference: Pipeline, clip_path: Path) -> None:
    want = greedy(reference, clip_path, reference.default_prompt("asr"))
    with clip_path.open("rb") as f:
        assert client.audio.transcriptions.create(model=MODEL_ID, file=f, temperature=0).text == want
    with clip_path.open("rb") as f:
        assert client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="text",
                                                  temperature=0).strip() == want
    with clip_path.open("rb") as f:
        srt = client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="srt", temperature=0)
    assert srt.splitlines()[:2] == ["1", "00:00:00,000 --> 00:00:01,000"]
    with clip_path.open("rb") as f:
        vtt = client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="vtt", temperature=0)
    assert vtt.splitlines()[:3] == ["WEBVTT", "", "00:00:00.000 --> 00:00:01.000"]
    with clip_path.open("rb") as f:
        verbose = client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="verbose_json",
                                                     language="en", temperature=0,
                                                     timestamp_granularities=["segment"])
    assert (verbose.text, verbose.language, verbose.duration) == (want, "en", 1.0)
    segment = verbose.segments[0]
    assert len(verbose.segments) == 1 and (segment.start, segment.end, segment.text) == (0.0, 1.0, want)
    assert segment.avg_logprob is None or segment.avg_logprob <= 0


def test_translation_uses_the_models_translation_instruction(client, reference: Pipeline, clip_path: Path) -> None:
    want = greedy(reference, clip_path, reference.default_prompt("st", "English"))
    with clip_path.open("rb") as f:
        assert client.audio.translations.create(model=MODEL_ID, file=f, temperature=0).text == want
    with clip_path.open("rb") as f:
        verbose = client.audio.translations.create(model=MODEL_ID, file=f, response_format="verbose_json")
    assert verbose.task == "translate" and verbose.language == "english" and verbose.text == want


def test_the_prompt_follows_the_instruction(server, reference: Pipeline, clip_path: Path) -> None:
    status, reply = upload(server, {"model": MODEL_ID, "prompt": "Names: Ada."}, {"file": clip_path.read_bytes()})
    assert status == 200
    assert reply["text"] == greedy(reference, clip_path, f"{reference.default_prompt('asr')} Names: Ada.")


def test_hostile_uploads_are_refused_cleanly(server, reference: Pipeline, clip_path: Path) -> None:
    placeholder = reference.processor.audio_token
    audio = {"file": clip_path.read_bytes()}
    model = {"model": MODEL_ID}
    refused(server, model, {}, param="file", match="an audio file is required")
    refused(server, model, {"file": b""}, param="file", match="empty")
    refused(server, model, {"file": b"<html>not audio</html>" * 10}, param="file", match="not a readable audio file")
    refused(server, {**model, "prompt": "w" * 2001}, audio, param="prompt", match="2001 characters exceed")
    refused(server, {**model, "prompt": "w" * 600_000}, audio, param="prompt", match="more than 9024 bytes")
    refused(server, {**model, "prompt": f"x {placeholder} y"}, audio, param="prompt", match="audio placeholder")
    refused(server, {**model, "response_format": "mp3"}, audio, param="response_format", match="expected one of")
    refused(server, {**model, "best_of": "2"}, audio, param="best_of", match="Unrecognized request argument")
    refused(server, {**model, "language": "fr"}, audio, param="language", path="translations")
    refused(server, {**model, "temperature": "3"}, audio, param="temperature")
    refused(server, {**model, "temperature": "nan"}, audio, param="temperature")
    refused(server, {**model, "timestamp_granularities[]": "word", "response_format": "verbose_json"}, audio,
            param="timestamp_granularities")
    refused(server, {"model": "whisper-1"}, audio, status=404, param="model")
    refused(server, {}, audio, param="model", match="required")
    refused(server, model, {"file": wav(6.0)}, param="file", match="exceeds")
    refused(server, model, {"file": wav(0.2), "other": wav(0.2)}, param="other", match="Unrecognized")
    body, kind = multipart(model, {"file": wav(0.2)})
    start = body.index(b'name="file"')
    start = body.rindex(b"--", 0, start)
    part = body[start : body.rindex(b"--" + kind.split("=", 1)[1].encode() + b"--")]
    request = urllib.request.Request(f"{server.url}/v1/audio/transcriptions", data=body.replace(part, part + part),
                                     method="POST", headers={"Content-Type": kind})
    with pytest.raises(urllib.error.HTTPError) as caught:  # two files named "file"
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 400 and json.loads(caught.value.read())["error"]["param"] == "file"
    for kind, body, status in (("application/json", b'{"model": "tiny-swv"}', 415),
                               ("multipart/form-data; boundary=z", b"--q\r\n", 400),
                               ("multipart/form-data", b"garbage", 400)):
        request = urllib.request.Request(f"{server.url}/v1/audio/transcriptions", data=body, method="POST",
                                         headers={"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        assert caught.value.code == status and "error" in json.loads(caught.value.read())
    status, reply = upload(server, model, audio)
    assert status == 200, reply


def raw_reply(server, head: bytes, body: bytes = b"") -> bytes:
    """The server's reply to ``head`` and ``body`` sent on a socket (no more of the body is sent)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head + body)
        reply = b""
        while b"}}" not in reply and (data := conn.recv(65536)):
            reply += data
    return reply


def test_a_declared_oversized_upload_is_refused_before_it_is_read(server) -> None:
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b"
            f"\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n").encode()
    reply = raw_reply(server, head, b"--b\r\n")
    assert reply.startswith(b"HTTP/1.1 413") and b"the request body exceeds" in reply, reply[:300]


def test_a_chunked_upload_is_capped_while_read(server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        conn.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        for _ in range(BODY_LIMIT // 65536 + 2):
            conn.sendall(chunk)
        reply = b""
        while b"}}" not in reply and (data := conn.recv(65536)):
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]


# -- the form: parsed in a worker thread, bounded ----------------------------------------------
BOUNDARY = "B0undary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
CLOSE = f"--{BOUNDARY}--\r\n".encode()


def part(name: str, value: str | bytes, filename: str | None = None, headers: str = "") -> bytes:
    """One part of a form with :data:`BOUNDARY` (``filename``: a file part)."""
    data = value.encode() if isinstance(value, str) else value
    file = "" if filename is None else f'; filename="{filename}"'
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{file}\r\n{headers}\r\n'.encode() + data + b"\r\n"


def test_the_form_is_parsed_in_a_worker_thread_granted_at_the_bodys_size(server, monkeypatch, clip_path: Path) -> None:
    """Neither FastAPI nor Starlette parses the form in the event loop: the one multipart parse
    of a request runs in a worker thread holding a slot of the limiter, granted at the body's bytes."""
    from python_multipart import MultipartParser

    limiter = server.server.config.app.state.limiter
    writes, costs = [], []
    real_write, real_acquire = MultipartParser.write, limiter.acquire

    def write(parser, data):
        try:
            asyncio.get_running_loop()
            writes.append("in the event loop")
        except RuntimeError:  # no loop runs in this thread
            writes.append(f"in a worker thread holding {limiter.borrowed} slot")
        return real_write(parser, data)

    async def acquire(cost: int = 0) -> None:
        costs.append(cost)
        await real_acquire(cost)

    monkeypatch.setattr(MultipartParser, "write", write)
    monkeypatch.setattr(limiter, "acquire", acquire)
    body, kind = multipart({"model": MODEL_ID}, {"file": clip_path.read_bytes()})
    status, reply = post_form(server, body, kind)
    assert status == 200, reply
    assert writes == ["in a worker thread holding 1 slot"]
    assert costs[0] == len(body)


OK_FORM = part("model", MODEL_ID) + part("file", wav(0.2), "a.wav") + CLOSE


@pytest.mark.parametrize(("kind", "body", "param", "match"), [
    (FORM, part("model", MODEL_ID) + part("x", "1") * 15_000 + CLOSE, None, "the form has more than 16 parts"),
    (FORM, part("model", MODEL_ID) + part("response_format", "verbose_json")
     + part("timestamp_granularities[]", "segment") * 14 + part("file", wav(0.2), "a.wav") + CLOSE,
     None, "the form has more than 16 parts"),
    (FORM, part("model", MODEL_ID) + part("language", "x" * 20_000) + part("file", wav(0.2), "a.wav") + CLOSE,
     "language", "language: the field has more than 9024 bytes"),
    ("multipart/form-data", OK_FORM, None, "needs a boundary parameter"),
    ("multipart/form-data; boundary=other", OK_FORM, None, "the form is malformed"),
    (FORM, b"garbage", None, "the form is malformed"),
    (FORM, OK_FORM.replace(b"\r\n", b"\n"), None, "the form is malformed"),
    (FORM, OK_FORM[: -len(CLOSE)], None, "the form ends before its closing boundary"),
    (FORM, OK_FORM[: -len(CLOSE)] + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi'.encode(),
     None, "the form ends before its closing boundary"),
    (FORM, f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode() + OK_FORM, None, "has no name"),
    (FORM, part("model", MODEL_ID, headers="X-Pad: " + "a" * 3000 + "\r\n") + part("file", wav(0.2), "a.wav")
     + CLOSE, None, ""),
    (FORM, part("model", MODEL_ID, headers=("X-Pad: " + "a" * 3000 + "\r\n") * 3) + OK_FORM, None,
     "more than 8192 bytes of headers"),
    (FORM, part("model", MODEL_ID) + part("file", "abc") + CLOSE, "file", "file: expected an uploaded file"),
    (FORM, part("model", MODEL_ID, "model.txt") + part("file", wav(0.2), "a.wav") + CLOSE, "model",
     "model: expected a text field"),
    (FORM, part("model", MODEL_ID) + part("prompt", b"\xff\xfe") + part("file", wav(0.2), "a.wav") + CLOSE,
     "prompt", "prompt: the field is not UTF-8 text"),
    (FORM, part("model", MODEL_ID) + CLOSE, "file", "file: an audio file is required"),
], ids=["many tiny parts", "17 parts", "huge field", "no boundary", "another boundary", "not a form", "LF only",
        "no closing boundary", "an unterminated part", "a part without a name", "a header line of 3000 bytes",
        "9000 bytes of headers", "file as text", "model as a file", "not UTF-8", "no file part"])
def test_hostile_forms_are_refused_with_one_clear_error(server, kind: str, body: bytes, param: str | None,
                                                        match: str) -> None:
    status, reply = post_form(server, body, kind)
    if not match:  # a header under python-multipart's bound per line (4 KiB) and under ours per part
        assert status == 200, reply
        return
    assert status == 400 and match in reply["error"]["message"] and reply["error"]["param"] == param, reply


def test_empty_fields_count_as_not_sent(server) -> None:
    """FastAPI's rule, kept: an empty text field, or a file part with no filename and no bytes (a
    browser's form with no file chosen), is a field not sent."""
    empty_file = part("file", b"", "")
    status, reply = post_form(server, part("model", MODEL_ID) + part("temperature", "") + part("prompt", "")
                              + part("file", wav(0.2), "") + CLOSE, FORM)
    assert status == 200 and "text" in reply, reply
    status, reply = post_form(server, part("model", MODEL_ID) + empty_file + CLOSE, FORM)
    assert status == 400 and reply["error"]["message"] == "file: an audio file is required", reply
    status, reply = post_form(server, part("model", "") + part("file", wav(0.2), "a.wav") + CLOSE, FORM)
    assert status == 400 and reply["error"]["param"] == "model" and "required" in reply["error"]["message"], reply


# -- chat completion options -------------------------------------------------------------------
def ask(client, **options):
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(1.0, 3)).decode(),
                                                    "format": "wav"}}
    messages = [{"role": "user", "content": [audio, {"type": "text", "text": "What do you hear?"}]}]
    return client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS, **options)


def test_stop_strings_end_the_answer_before_them(client) -> None:
    full = ask(client, temperature=0).choices[0].message.content
    assert len(full) >= 4, full
    stop = full[2:4]
    answer = ask(client, temperature=0, stop=[stop, "\u2603never"])
    assert answer.choices[0].message.content == full[: full.find(stop)]
    assert answer.choices[0].finish_reason == "stop"
    stream = ask(client, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == full[: full.find(stop)]


def test_a_seed_makes_sampling_repeatable_and_top_k_1_is_greedy(client) -> None:
    first = ask(client, temperature=1.5, seed=7).choices[0].message.content
    assert ask(client, temperature=1.5, seed=7).choices[0].message.content == first
    others = {ask(client, temperature=1.5, seed=s).choices[0].message.content for s in (8, 9, 10)}
    assert others != {first}
    greedy_answer = ask(client, temperature=0).choices[0].message.content
    assert ask(client, temperature=1.5, seed=3, extra_body={"top_k": 1}).choices[0].message.content == greedy_answer
    for penalty in (0.1, 1.3, 10.0):
        answer = ask(client, temperature=1.5, seed=1, extra_body={"repetition_penalty": penalty})
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_logprobs_are_openai_shaped(client) -> None:
    choice = ask(client, temperature=0, logprobs=True, top_logprobs=3).choices[0]
    content = choice.logprobs.content
    assert content and len(content) <= MAX_TOKENS
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-5
    assert ask(client, temperature=0).choices[0].logprobs is None


@pytest.mark.parametrize(("options", "param"), [
    ({"n": 2}, "n"), ({"presence_penalty": 0.5}, "presence_penalty"), ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "stream": True}, "logprobs"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"), ({"seed": 1 << 70}, "seed"), ({"extra_body": {"top_k": -1}}, "top_k"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ({"extra_body": {"repetition_penalty": 1e-300}}, "repetition_penalty"),
])
def test_out_of_range_options_are_refused_by_name(client, options: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **options)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body


def test_omitted_temperature_samples_with_the_models_saved_defaults(model_config_factory, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = model_config_factory()
    config.generation = {"do_sample": True, "temperature": 1.5}
    SpeechLM(config).save_pretrained(tmp_path / "model")
    pipe = Pipeline.from_pretrained(tmp_path / "model")
    assert pipe.model.generation_defaults().do_sample
    with serve(pipe) as running:
        sampling = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=120)
        answers = {ask(sampling, seed=s).choices[0].message.content for s in range(4)}
        greedy_answers = {ask(sampling, temperature=0, seed=s).choices[0].message.content for s in range(2)}
    assert len(answers) > 1 and len(greedy_answers) == 1


def test_cue_times_and_stop_cuts() -> None:
    from swv.serve.batcher import cut_at_stop
    from swv.serve.openai_api import cue_time

    assert cue_time(3723.4567, "srt") == "01:02:03,457" and cue_time(59.9996, "vtt") == "00:01:00.000"
    assert cut_at_stop("hello world", ["wor", "lo"]) == 3 and cut_at_stop("hello", ["x"]) is None


def test_the_openapi_document_describes_each_form(server) -> None:
    """The routes read their bodies themselves, so their forms are described by hand (from the
    same field list the routes check): every field, the file as binary, the required ones."""
    from swv.serve.routes.audio import FIELDS

    with urllib.request.urlopen(f"{server.url}/openapi.json", timeout=30) as response:
        document = json.loads(response.read())
    for path, kind in (("transcriptions", "transcribe"), ("translations", "translate")):
        body = document["paths"][f"/v1/audio/{path}"]["post"]["requestBody"]
        schema = body["content"]["multipart/form-data"]["schema"]
        assert list(schema["properties"]) == list(FIELDS[kind]) and schema["required"] == ["file", "model"]
        assert schema["properties"]["file"] == {"type": "string", "format": "binary"}
    assert "language" in document["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
