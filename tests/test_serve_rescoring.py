"""CTC rescoring in `swv serve` (``ctc_weight``, :mod:`swv.infer.rescoring`): on a tiny random
model and a clip where the CTC head's reading beats the LLM's answer at ``ctc_weight`` 1, a
non-streamed chat transcript and ``/v1/audio/transcriptions`` give ``Pipeline.generate_requests``'
rescored answer with both schedulers (alone and in company); a streamed answer and one with
logprobs are the generated ones; ``ctc_weight`` 0 (the request's, or the model's default) leaves
the answers; a ``ctc_weight`` for a model without a CTC head is refused when the server starts."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from swv.core.errors import UsageError  # noqa: E402
from swv.infer.pipeline import GenerationSettings, Pipeline  # noqa: E402
from swv.infer.batching import Result  # noqa: E402
from swv.model.speechlm import SpeechLM  # noqa: E402
from swv.serve.app import create_app  # noqa: E402
from swv.serve.background import BackgroundServer  # noqa: E402
from swv.serve.settings import ServeSettings  # noqa: E402

SR = 16000
MODEL_ID = "tiny-rescore"
#: A random CTC head reads 16-32 tokens from these clips: room for them, no length bound
#: (tests/test_ctc_rescoring.py).
MAX_TOKENS = 40
PLAIN = GenerationSettings(max_new_tokens=MAX_TOKENS, length_bound=False)
RESCORED = replace(PLAIN, ctc_weight=1.0)


def wav(seconds: float, seed: int) -> bytes:
    samples = (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("serve-rescore", seed=3)  # the model of tests/test_ctc_rescoring.py


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Pipeline:
    """The servers' pipeline (one server runs at a time)."""
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rescore_clips")
    out = {}
    for name, seconds, seed in (("a", 1.0, 2), ("b", 1.5, 1)):
        out[name] = folder / f"{name}.wav"
        out[name].write_bytes(wav(seconds, seed))
    return out


def transcript_turn(pipe: Pipeline, path: Path) -> list[dict]:
    """A chat transcript: the clip and the model's transcription instruction."""
    data = base64.b64encode(path.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                                         {"type": "text", "text": pipe.default_prompt("asr")}]}]


def chat_answer(pipe: Pipeline, path: Path, settings: GenerationSettings) -> Result:
    return pipe.generate_requests([pipe.chat_request(transcript_turn(pipe, path))], settings)[0]


def upload_answer(pipe: Pipeline, path: Path, settings: GenerationSettings) -> Result:
    """What ``/v1/audio/transcriptions`` asks: the clip and the model's transcription instruction."""
    return pipe.generate_requests([pipe.request(pipe.load(str(path)), pipe.default_prompt("asr"), "asr")], settings)[0]


def serving(pipe: Pipeline, scheduling: str, generation: GenerationSettings) -> BackgroundServer:
    settings = ServeSettings(model_id=MODEL_ID, max_context=2048, scheduling=scheduling, batch_window_seconds=0.2,
                             default_max_tokens=MAX_TOKENS, generation=generation)
    return BackgroundServer(create_app(pipe, settings))


def client_of(server: BackgroundServer):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def chat(client, pipe: Pipeline, path: Path, **options):
    return client.chat.completions.create(model=MODEL_ID, messages=transcript_turn(pipe, path), max_tokens=MAX_TOKENS,
                                          **options)


def streamed(client, pipe: Pipeline, path: Path) -> str:
    chunks = chat(client, pipe, path, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def transcribe(client, path: Path, response_format: str = "json"):
    with path.open("rb") as f:
        return client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format=response_format)


def test_the_ctc_reading_wins_on_these_clips(reference: Pipeline, clips: dict[str, Path]) -> None:
    """What the tests below rest on: rescoring changes every answer they compare."""
    for path in clips.values():
        assert chat_answer(reference, path, RESCORED).text != chat_answer(reference, path, PLAIN).text
        assert upload_answer(reference, path, RESCORED).text != upload_answer(reference, path, PLAIN).text


@pytest.mark.parametrize("scheduling", ["continuous", "window"])
def test_non_streamed_transcripts_are_rescored_as_the_pipeline_does(
    served: Pipeline, reference: Pipeline, clips: dict[str, Path], scheduling: str
) -> None:
    want = chat_answer(reference, clips["a"], RESCORED)
    plain = chat_answer(reference, clips["a"], PLAIN).text
    with serving(served, scheduling, replace(PLAIN, max_new_tokens=None, ctc_weight=1.0)) as server:
        client = client_of(server)
        reply = chat(client, served, clips["a"])
        assert reply.choices[0].message.content == want.text
        assert reply.choices[0].finish_reason == "stop"  # the reading ends with the end-of-turn token
        assert reply.usage.completion_tokens == want.stats.new_tokens
        assert streamed(client, served, clips["a"]) == plain  # sent as generated: not rescored
        with_logprobs = chat(client, served, clips["a"], logprobs=True).choices[0]
        assert with_logprobs.message.content == plain and with_logprobs.logprobs.content  # of the generated tokens
        assert chat(client, served, clips["a"], extra_body={"ctc_weight": 0}).choices[0].message.content == plain
        upload = upload_answer(reference, clips["a"], RESCORED).text
        assert transcribe(client, clips["a"]).text == upload
        verbose = transcribe(client, clips["a"], "verbose_json")
        assert verbose.text == upload and verbose.segments[0].avg_logprob is None  # the reading has no logprobs


@pytest.mark.parametrize("scheduling", ["continuous", "window"])
def test_concurrent_requests_are_rescored_each_as_alone(
    served: Pipeline, reference: Pipeline, clips: dict[str, Path], scheduling: str
) -> None:
    """Transcripts of two clips and a streamed one, sent together (one batch, rescored in one pass;
    or rows that join and leave at token boundaries), each get their own answer."""
    want = [chat_answer(reference, clips[name], RESCORED).text for name in ("a", "b")]
    want.append(chat_answer(reference, clips["b"], PLAIN).text)
    with serving(served, scheduling, replace(PLAIN, max_new_tokens=None, ctc_weight=1.0)) as server, \
            ThreadPoolExecutor(3) as pool:
        client = client_of(server)
        answers = [pool.submit(lambda name: chat(client, served, clips[name]).choices[0].message.content, name)
                   for name in ("a", "b")]
        answers.append(pool.submit(streamed, client, served, clips["b"]))
        assert [answer.result() for answer in answers] == want


def test_without_a_ctc_weight_answers_are_generated_ones(served: Pipeline, reference: Pipeline,
                                                         clips: dict[str, Path]) -> None:
    """The model's default (0) leaves every answer; a request's ``ctc_weight`` turns rescoring on."""
    with serving(served, "continuous", replace(PLAIN, max_new_tokens=None)) as server:
        client = client_of(server)
        assert chat(client, served, clips["b"]).choices[0].message.content == chat_answer(reference, clips["b"], PLAIN).text
        assert transcribe(client, clips["b"]).text == upload_answer(reference, clips["b"], PLAIN).text
        reply = chat(client, served, clips["b"], extra_body={"ctc_weight": 1.0})
        assert reply.choices[0].message.content == chat_answer(reference, clips["b"], RESCORED).text
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, served, clips["b"], extra_body={"ctc_weight": 1.5})
        assert caught.value.body["param"] == "ctc_weight"


def test_a_ctc_weight_needs_a_ctc_head(model_config_factory, tmp_path: Path) -> None:
    path = tmp_path / "no-ctc"
    SpeechLM(model_config_factory([{"name": "conv", "factor": 4}])).save_pretrained(path)
    pipe = Pipeline.from_pretrained(path)
    with pytest.raises(UsageError, match="no CTC head"):
        create_app(pipe, ServeSettings(model_id=MODEL_ID, max_context=2048, generation=GenerationSettings(ctc_weight=0.5)))
    create_app(pipe, ServeSettings(model_id=MODEL_ID, max_context=2048))  # without one, the server starts
