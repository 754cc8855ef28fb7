"""Multi-turn audio chat: OpenAI-style messages with several clips, rendered with the chat
template, spliced in order, answered (and streamed) like one-turn requests; `swv infer --chat`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.core.errors import InputError
from swv.infer.pipeline import GenerationSettings, Pipeline

SR = 16000
PROMPT = "Transcribe the speech."


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("chat_model")


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_clips")
    files = {"a": root / "a.wav", "b": root / "b.wav"}
    sf.write(files["a"], noise(1.0, 1), SR)
    sf.write(files["b"], noise(0.6, 2), SR)
    return files


def audio_part(path: Path) -> dict:
    return {"type": "audio", "path": str(path)}


def b64_part(path: Path) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": "wav"}}


def two_clip_conversation(clips: dict[str, Path], part=audio_part) -> list[dict]:
    return [
        {"role": "user", "content": [part(clips["a"]), {"type": "text", "text": PROMPT}]},
        {"role": "assistant", "content": "one two three"},
        {"role": "user", "content": [{"type": "text", "text": "Compare with"}, part(clips["b"]),
                                     {"type": "text", "text": "Which is longer?"}]},
    ]


def test_one_turn_chat_equals_a_pipeline_call(pipe: Pipeline, clips: dict[str, Path]) -> None:
    messages = [{"role": "user", "content": [audio_part(clips["a"]), {"type": "text", "text": PROMPT}]}]
    assert pipe.chat_request(messages).ids == pipe.prompt_ids(PROMPT)
    assert pipe.chat(messages, max_new_tokens=8) == pipe(clips["a"], PROMPT, max_new_tokens=8)


def test_each_clip_is_spliced_at_its_place(pipe: Pipeline, clips: dict[str, Path]) -> None:
    request = pipe.chat_request(two_clip_conversation(clips))
    audio_id = pipe.model.audio_token_id
    assert request.ids.count(audio_id) == 2 and len(request.waveforms) == 2
    first, second = [i for i, t in enumerate(request.ids) if t == audio_id]
    text = pipe.tokenizer.decode(request.ids[first + 1 : second])
    assert PROMPT in text and "one two three" in text and "Compare with" in text
    with torch.inference_mode():
        prepared = pipe.encode_requests([request])
        spliced = pipe.model.splice(prepared.state, prepared.input_ids, prepared.attention_mask, padding_side="left")
    state = prepared.state
    lengths = state.lengths.tolist()
    positions = spliced.audio_positions[0].nonzero().flatten()
    assert positions.numel() == sum(lengths)
    # the first clip's embeddings come first, then text, then the second clip's
    n_a = lengths[0]
    assert torch.equal(spliced.inputs_embeds[0, positions[:n_a]], state.embeds[0, :n_a])
    assert torch.equal(spliced.inputs_embeds[0, positions[n_a:]], state.embeds[1, : lengths[1]])
    assert int(positions[n_a]) - int(positions[n_a - 1]) == second - first  # the text between them
    assert prepared.prompt_tokens == [len(request.ids) - 2 + sum(lengths)]


def test_conversation_answers_agree_streamed_batched_and_base64(pipe: Pipeline, clips: dict[str, Path]) -> None:
    messages = two_clip_conversation(clips)
    answer = pipe.chat(messages, max_new_tokens=10, return_stats=True)
    assert answer.stats.audio_seconds == pytest.approx(1.6)
    stream = pipe.chat(messages, max_new_tokens=10, stream=True)
    assert "".join(stream).strip() == answer.text == stream.text
    assert pipe.chat(two_clip_conversation(clips, b64_part), max_new_tokens=10) == answer.text
    # batched with a one-clip request of another length (left padding) the answers do not change
    one_turn = pipe.request(pipe.load(clips["b"]), "Describe it.")
    single = pipe.generate_requests([one_turn], GenerationSettings(max_new_tokens=10))[0].text
    both = pipe.generate_requests([pipe.chat_request(messages), one_turn], GenerationSettings(max_new_tokens=10))
    assert [r.text for r in both] == [answer.text, single]


def test_text_only_turns_and_system_messages(pipe: Pipeline) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    request = pipe.chat_request(messages)
    assert request.waveforms == [] and "Be brief." in pipe.tokenizer.decode(request.ids)
    assert isinstance(pipe.chat(messages, max_new_tokens=4), str)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], r"messages: expected a non-empty list"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], r"messages\[1\]: the last message must be a user turn"),
        ([{"role": "tool", "content": "x"}], r"messages\[0\].role: expected"),
        ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}, {"role": "user", "content": "a"}],
         r"messages\[1\]: a system message may only come first"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], r"messages\[0\].content\[0\].type"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "@@@", "format": "wav"}}]}],
         r"messages\[0\].content\[0\].input_audio.data: not valid base64"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}]}],
         r"input_audio.format: expected one of wav, mp3, flac"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}],
         r"messages\[0\].content\[0\].input_audio: not a readable audio file"),
        ([{"role": "user", "content": "say <audio_patch> now"}], r"may not contain the audio placeholder"),
        ([{"role": "assistant", "content": [{"type": "input_audio"}]}, {"role": "user", "content": "x"}],
         r"messages\[0\].content\[0\]: only text parts"),
        ([{"role": "user"}], r"messages\[0\].content: missing"),
    ],
)
def test_bad_messages_name_the_part(pipe: Pipeline, messages: list, match: str) -> None:
    with pytest.raises(InputError, match=match):
        pipe.chat_request(messages)


def test_cli_continues_a_conversation_file(pipe: Pipeline, model_dir: Path, clips: dict[str, Path],
                                           tmp_path: Path, cli) -> None:
    conv = tmp_path / "conv.json"
    (tmp_path / "a.wav").write_bytes(clips["a"].read_bytes())
    first_turn = [{"role": "user", "content": [{"type": "audio", "path": "a.wav"}, {"type": "text", "text": PROMPT}]}]
    conv.write_text(json.dumps(first_turn))
    code, out, err = cli(["infer", model_dir, "--chat", conv, "--max-new-tokens", 6])
    assert code == 0, err
    saved = json.loads(conv.read_text())["messages"]
    assert saved[:1] == first_turn and saved[-1]["role"] == "assistant"
    expected = pipe.chat([{"role": "user", "content": [audio_part(clips["a"]), {"type": "text", "text": PROMPT}]}],
                         max_new_tokens=6)
    assert saved[-1]["content"] == expected and out == expected + "\n"

    code, out, err = cli(["infer", model_dir, clips["b"], "-p", "And this one?", "--chat", conv, "--max-new-tokens", 6])
    assert code == 0, err
    saved = json.loads(conv.read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[2]["content"] == [{"type": "audio", "path": str(clips["b"].resolve())},
                                   {"type": "text", "text": "And this one?"}]
    again = [dict(m) for m in saved[:3]]
    again[0] = {"role": "user", "content": [audio_part(clips["a"]), {"type": "text", "text": PROMPT}]}
    assert out == pipe.chat(again, max_new_tokens=6) + "\n"

    conv.write_text("{not json")
    code, out, err = cli(["infer", model_dir, "--chat", conv])
    assert code != 0 and err.startswith(f"error: {conv}: invalid JSON") and "Traceback" not in err
