"""Runaway answers (issue 23): the audio-derived length bound of transcript-like answers and the
repetition controls. The models are tiny ones whose backbone is wired by hand to answer a fixed
text whatever the audio: one loops ("turn left at the past the past the past ..."), one gives a
normal transcript and stops. They go through Pipeline, swv infer, swv eval and swv serve."""

from __future__ import annotations

import base64
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.infer.pipeline import GenerationSettings, Pipeline
from swv.model.defaults import ASR_INSTRUCTION, GenerationDefaults
from swv.model.prompts import instruction_table, renders_speech
from swv.model.speechlm import SpeechLM
from swv.model.stopping import length_bound

SR = 16000
LOOP = " turn left at the past"  # ... then " the past" again and again
NORMAL = " turn left at the big red door"  # then the end of the turn
SECOND_CHOICE = "!"  # what the looping model says when its next token is forbidden
EMOTION = "What is the emotion of the speaker?"
DEFAULTS = GenerationDefaults()


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)


def wire(model: SpeechLM, text: str, then: str | None) -> None:
    """Make the backbone answer ``text`` whatever its input: its layers add nothing to the
    residual stream, each token of the answer has its own embedding direction, and the LM head
    maps that direction to the next token (second choice: ``SECOND_CHOICE``, which leads back
    to the first token of ``then``; every other token leads there too). After the last token
    comes ``then``'s first token (a loop) or, for ``None``, the end-of-turn token; a stop token
    comes nowhere else."""
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    header = Pipeline(model).prompt_ids("x")[-1]  # the last prompt token: the assistant header's end
    end = tokenizer.eos_token_id if then is None else tokenizer(then, add_special_tokens=False).input_ids[0]
    second = tokenizer.convert_tokens_to_ids(SECOND_CHOICE)
    successors = {header: ids[0], second: ids[0] if then is None else end}
    for token, following in zip(ids, [*ids[1:], end]):
        assert token not in successors, "the answer's tokens must be distinct: each names its successor"
        successors[token] = following
    hf = model.backbone.hf_model
    embeddings, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    assert embeddings.data_ptr() != head.data_ptr() and len(successors) <= embeddings.shape[1]
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith(("o_proj.base_layer.weight", "o_proj.weight", "down_proj.weight")):
                param.zero_()
        head.zero_()
        head[model.stop_token_ids()] = -1.0
        embeddings.zero_()
        embeddings[:, list(successors).index(second)] = 1.0
        for direction, (token, following) in enumerate(successors.items()):
            embeddings[token] = 0.0
            embeddings[token, direction] = 1.0
            head[following, direction] = 2.0
            head[second, direction] = torch.maximum(head[second, direction], torch.tensor(1.0))


def build(model_config_factory, path: Path, text: str, then: str | None) -> Path:
    torch.manual_seed(0)
    model = SpeechLM(model_config_factory())
    wire(model, text, then)
    return model.save_pretrained(path, bundle=True)  # the wired backbone goes with it


@pytest.fixture(scope="module")
def loop_dir(model_config_factory, tmp_path_factory) -> Path:
    return build(model_config_factory, tmp_path_factory.mktemp("loop") / "model", LOOP, " the")


@pytest.fixture(scope="module")
def normal_dir(model_config_factory, tmp_path_factory) -> Path:
    return build(model_config_factory, tmp_path_factory.mktemp("normal") / "model", NORMAL, None)


@pytest.fixture(scope="module")
def loop(loop_dir: Path) -> Pipeline:
    return Pipeline.from_pretrained(loop_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    files = {"short": root / "short.wav", "long": root / "long.wav"}
    sf.write(files["short"], noise(1.5, 1), SR)
    sf.write(files["long"], noise(4.0, 2), SR)
    return files


def bound_of(stats, max_new_tokens: int = DEFAULTS.max_new_tokens) -> int:
    """The length bound of a request, from its stats and the default factors."""
    return int(length_bound(torch.tensor([stats.audio_seconds]), torch.tensor([stats.audio_tokens]), max_new_tokens,
                            tokens_per_second=DEFAULTS.length_bound_tokens_per_second,
                            min_tokens_per_second=DEFAULTS.length_bound_min_tokens_per_second,
                            per_audio_token=DEFAULTS.length_bound_per_audio_token,
                            margin=DEFAULTS.length_bound_margin)[0])


# ---------------------------------------------------------------------------------------------
# The bound and what it applies to
# ---------------------------------------------------------------------------------------------
def test_length_bound_is_a_pure_per_row_function() -> None:
    seconds = torch.tensor([1.0, 2.5, 0.2, 30.0])
    audio_tokens = torch.tensor([3, 40, 0, 10])
    factors = dict(tokens_per_second=10.0, min_tokens_per_second=2.0, per_audio_token=2.0, margin=16)
    # ceil(clamp(2 * n, 2 * s, 10 * s)) + 16, at most max_new_tokens: 6; 80 -> 25; 0 -> 0.4 -> 1; 20 -> 60
    assert length_bound(seconds, audio_tokens, 256, **factors).tolist() == [22, 41, 17, 76]
    assert length_bound(seconds, audio_tokens, torch.tensor([256, 30, 256, 50]), **factors).tolist() == [22, 30, 17, 50]
    rows = [int(length_bound(seconds[i : i + 1], audio_tokens[i : i + 1], 256, **factors)[0]) for i in range(4)]
    assert rows == length_bound(seconds, audio_tokens, 256, **factors).tolist()  # each row on its own
    assert length_bound(torch.tensor([0.33]), torch.tensor([1]), 256, tokens_per_second=10.0, min_tokens_per_second=10.0,
                        per_audio_token=2.0, margin=0).tolist() == [4]  # rounded up


def test_length_bound_rates_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="length_bound_min_tokens_per_second"):
        GenerationDefaults(length_bound_min_tokens_per_second=8.0, length_bound_tokens_per_second=6.0)
    assert (DEFAULTS.length_bound, DEFAULTS.no_repeat_ngram_size, DEFAULTS.repetition_penalty) == (True, 10, 1.0)


def test_which_answers_render_the_speech() -> None:
    table = instruction_table()
    assert renders_speech(table, ASR_INSTRUCTION) and renders_speech(table, f"  {ASR_INSTRUCTION}\n")
    assert renders_speech(table, "Translate the speech into German.")
    assert not renders_speech(table, EMOTION) and not renders_speech(table, "Translate the speech.")
    assert renders_speech(table, "Write down every word.", task="asr")  # the task decides when known
    assert not renders_speech(table, ASR_INSTRUCTION, task="emotion")
    assert renders_speech(instruction_table({"asr": "Transcribe."}), "Transcribe.")  # the model's own table
    assert not renders_speech(instruction_table({"asr": "Transcribe."}), ASR_INSTRUCTION)


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------
def test_a_looping_answer_stops_at_the_bound_in_the_pipeline(loop: Pipeline, clips: dict[str, Path]) -> None:
    result = loop(clips["short"], return_stats=True)
    bound = bound_of(result.stats)
    assert result.stats.new_tokens == bound < DEFAULTS.max_new_tokens
    assert result.text.startswith("turn left at the past the")  # then cut mid-loop
    # one batch: two transcripts with their own bounds, and an answer that is not a transcript
    batch = loop([clips["short"], clips["long"], clips["short"]], [ASR_INSTRUCTION, ASR_INSTRUCTION, EMOTION],
                 max_new_tokens=70, return_stats=True)
    assert [r.stats.new_tokens for r in batch] == [bound_of(batch[0].stats, 70), bound_of(batch[1].stats, 70), 70]
    assert bound_of(batch[0].stats) < bound_of(batch[1].stats) < 70
    assert batch[0].text == result.text  # the padding of a finished row never reaches the text
    # streaming and chat take the same bound
    stream = loop.stream(clips["short"])
    assert "".join(stream).strip() == stream.text == result.text and stream.stats.new_tokens == bound
    messages = [{"role": "user", "content": [{"type": "audio", "path": str(clips["short"])},
                                             {"type": "text", "text": ASR_INSTRUCTION}]}]
    assert loop.chat(messages, return_stats=True).stats.new_tokens == bound


def test_the_bound_can_be_turned_off(loop: Pipeline, clips: dict[str, Path]) -> None:
    bounded = loop(clips["short"], max_new_tokens=50, return_stats=True).stats
    assert bounded.new_tokens == bound_of(bounded) < 50
    assert loop(clips["short"], max_new_tokens=50, length_bound=False, return_stats=True).stats.new_tokens == 50
    cot = loop.generate_requests([loop.request(loop.load(clips["short"]), ASR_INSTRUCTION)],
                                 GenerationSettings(max_new_tokens=50, transcript_first=True))[0]
    assert cot.stats.new_tokens == 50 + bounded.audio_tokens  # chain of thought: the transcript budget, no bound


def test_a_normal_transcript_is_unchanged(normal_dir: Path, clips: dict[str, Path]) -> None:
    pipe = Pipeline.from_pretrained(normal_dir)
    result = pipe(clips["long"], return_stats=True)
    assert result.text == NORMAL.strip()
    answer_tokens = len(pipe.tokenizer(NORMAL, add_special_tokens=False).input_ids) + 1  # + the end of the turn
    assert result.stats.new_tokens == answer_tokens < bound_of(result.stats)
    plain = pipe(clips["long"], length_bound=False, no_repeat_ngram_size=0, return_stats=True)
    assert (plain.text, plain.stats.new_tokens) == (result.text, result.stats.new_tokens)


class ProcessorSpy:
    """Records the generation config and logits processors transformers' generate actually used."""

    def __init__(self, pipe: Pipeline, monkeypatch) -> None:
        hf = pipe.model.backbone.hf_model
        original = hf._get_logits_processor
        self.calls: list[tuple] = []

        def spy(generation_config, *args, **kwargs):
            processors = original(generation_config, *args, **kwargs)
            self.calls.append((generation_config, list(processors)))
            return processors

        monkeypatch.setattr(hf, "_get_logits_processor", spy)

    def last(self) -> tuple:
        config, processors = self.calls[-1]
        by_type = {type(p).__name__: p for p in processors}
        return config, by_type


def test_repetition_options_reach_generate(loop: Pipeline, clips: dict[str, Path], monkeypatch) -> None:
    spy = ProcessorSpy(loop, monkeypatch)
    looping = loop(clips["long"], return_stats=True)
    config, used = spy.last()
    assert used["NoRepeatNGramLogitsProcessor"].ngram_size == DEFAULTS.no_repeat_ngram_size
    assert "RepetitionPenaltyLogitsProcessor" not in used
    assert config.no_repeat_ngram_size == 0 and config.repetition_penalty == 1.0  # not built twice
    assert config.max_new_tokens == bound_of(looping.stats)
    # the 10-token run "the past the past the" may not come again: the model's second choice does
    assert SECOND_CHOICE in looping.text
    loop(clips["long"], no_repeat_ngram_size=3, repetition_penalty=1.3)
    _, used = spy.last()
    assert used["NoRepeatNGramLogitsProcessor"].ngram_size == 3
    assert used["RepetitionPenaltyLogitsProcessor"].penalty == 1.3
    plain = loop(clips["long"], no_repeat_ngram_size=0, repetition_penalty=1.0)
    _, used = spy.last()
    assert not {"NoRepeatNGramLogitsProcessor", "RepetitionPenaltyLogitsProcessor"} & set(used)
    assert SECOND_CHOICE not in plain and plain.startswith("turn left at the past the past the past the past")
    with pytest.raises(Exception, match="repetition_penalty"):
        GenerationSettings(repetition_penalty=0.0)


def test_defaults_are_saved_with_the_model(loop_dir: Path) -> None:
    from transformers import GenerationConfig

    from swv.convert.import_soundwave import RELEASED_CONTROLS, RELEASED_GENERATION
    from swv.infer.batch import saved_generation

    config = GenerationConfig.from_pretrained(str(loop_dir))
    assert (config.no_repeat_ngram_size, config.repetition_penalty) == (DEFAULTS.no_repeat_ngram_size, 1.0)
    assert saved_generation(loop_dir).length_bound is True
    released = GenerationDefaults(**RELEASED_GENERATION, **RELEASED_CONTROLS)
    assert (released.length_bound, released.no_repeat_ngram_size, released.repetition_penalty) == (False, 0, 1.0)


# ---------------------------------------------------------------------------------------------
# swv infer and swv eval
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli(infer_eval_cli):
    return infer_eval_cli


def write_manifest(path: Path, clips: dict[str, Path], rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"audio": str(clips[r.pop("clip")]), **r}) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_swv_infer_stops_at_the_bound(cli, loop: Pipeline, loop_dir: Path, clips: dict[str, Path],
                                      tmp_path: Path) -> None:
    alone = loop(clips["short"], return_stats=True)
    code, out, err = cli(["infer", loop_dir, clips["short"], "--stats"])
    assert code == 0, err
    assert out == alone.text + "\n" and f"{bound_of(alone.stats)} new token(s)" in err
    manifest = write_manifest(tmp_path / "m.jsonl", clips, [
        {"id": "asr", "clip": "short"},  # no instruction: the model's transcription instruction
        {"id": "emotion", "clip": "short", "instruction": EMOTION},
        {"id": "asr-own-words", "clip": "long", "instruction": "Write down every word.", "task": "asr"},
    ])
    code, _, err = cli(["infer", loop_dir, "--manifest", manifest, "-o", tmp_path / "p.jsonl", "--stats",
                        "--max-new-tokens", 70])
    assert code == 0, err
    stats = {p["id"]: p["stats"] for p in read_jsonl(tmp_path / "p.jsonl")}
    assert stats["asr"]["new_tokens"] == alone.stats.new_tokens
    assert stats["emotion"]["new_tokens"] == 70
    long = loop(clips["long"], return_stats=True).stats
    assert stats["asr-own-words"]["new_tokens"] == bound_of(long) < 70
    code, _, err = cli(["infer", loop_dir, "--manifest", manifest, "-o", tmp_path / "off.jsonl", "--stats",
                        "--max-new-tokens", 70, "--no-length-bound", "--no-repeat-ngram-size", 0])
    assert code == 0, err
    off = read_jsonl(tmp_path / "off.jsonl")
    assert [p["stats"]["new_tokens"] for p in off] == [70, 70, 70]
    assert all(SECOND_CHOICE not in p["prediction"] for p in off)
    code, _, err = cli(["infer", loop_dir, clips["short"], "--repetition-penalty", 0])
    assert code != 0 and "repetition_penalty" in err and "Traceback" not in err


def test_swv_eval_stops_at_the_bound_and_counts_overlong_answers(cli, loop: Pipeline, loop_dir: Path,
                                                                 normal_dir: Path, clips: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    # bounded, the loop still says more than twice these short references
    short_refs = write_manifest(tmp_path / "short.jsonl", clips, [
        {"id": "a", "clip": "short", "text": "turn left"},
        {"id": "b", "clip": "long", "text": "turn left"},
    ])
    manifest = write_manifest(tmp_path / "m.jsonl", clips, [  # 4 s: room for the whole sentence
        {"id": "a", "clip": "long", "text": NORMAL.strip()},
        {"id": "b", "clip": "long", "text": NORMAL.strip()},
    ])
    code, out, err = cli(["eval", loop_dir, "--manifest", short_refs, "--task", "asr", "--output-dir", tmp_path / "loop"])
    assert code == 0, err
    predictions = read_jsonl(tmp_path / "loop" / "predictions.jsonl")
    assert [p["prediction"] for p in predictions] == loop([clips["short"], clips["long"]])
    report = json.loads((tmp_path / "loop" / "report.json").read_text())
    used = report["generation_settings"]
    assert used["length_bound"] is True and used["no_repeat_ngram_size"] == DEFAULTS.no_repeat_ngram_size
    assert used["repetition_penalty"] == 1.0 and used["length_bound_margin"] == DEFAULTS.length_bound_margin
    assert report["overlong"] == {"count": 2, "ratio": 2.0, "unit": "characters", "ids": ["a", "b"]}
    assert "overlong answers (longer than 2x the reference): 2" in out
    code, out, err = cli(["eval", normal_dir, "--manifest", manifest, "--task", "asr", "--output-dir",
                          tmp_path / "normal"])
    assert code == 0, err
    report = json.loads((tmp_path / "normal" / "report.json").read_text())
    assert report["overlong"]["count"] == 0 and report["metrics"]["wer"] == 0.0
    code, _, err = cli(["eval", loop_dir, "--manifest", manifest, "--task", "asr", "--output-dir", tmp_path / "off",
                        "--no-length-bound", "--max-new-tokens", 60, "--repetition-penalty", 1.2])
    assert code == 0, err
    used = json.loads((tmp_path / "off" / "report.json").read_text())["generation_settings"]
    assert (used["length_bound"], used["repetition_penalty"], used["max_new_tokens"]) == (False, 1.2, 60)


# ---------------------------------------------------------------------------------------------
# swv serve
# ---------------------------------------------------------------------------------------------
def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def wav_turn(path: Path, text: str) -> dict:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                                        {"type": "text", "text": text}]}


def test_swv_serve_stops_at_the_bound(loop: Pipeline, loop_dir: Path, clips: dict[str, Path]) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from swv.serve.app import create_app
    from swv.serve.background import BackgroundServer
    from swv.serve.settings import ServeSettings

    alone = loop(clips["short"], return_stats=True)
    pipe = Pipeline.from_pretrained(loop_dir)
    settings = ServeSettings(model_id="loop", max_context=2048, batch_window_seconds=0.3, default_max_tokens=60)
    bodies = [{"model": "loop", "messages": [wav_turn(clips["short"], ASR_INSTRUCTION)]},
              {"model": "loop", "messages": [wav_turn(clips["short"], EMOTION)]}]
    with BackgroundServer(create_app(pipe, settings)) as server, ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda body: post(server.url, body), bodies))  # one batch
    transcript, emotion = (reply["choices"][0] for reply in replies)
    assert transcript["message"]["content"] == alone.text and transcript["finish_reason"] == "length"
    assert replies[0]["usage"]["completion_tokens"] == bound_of(alone.stats)
    assert replies[0]["usage"]["completion_tokens"] < 60
    assert replies[1]["usage"]["completion_tokens"] == 60 and emotion["finish_reason"] == "length"
    off = ServeSettings(model_id="loop", max_context=2048, default_max_tokens=60,
                        generation=GenerationSettings(length_bound=False, no_repeat_ngram_size=0))
    with BackgroundServer(create_app(pipe, off)) as server:
        reply = post(server.url, bodies[0])
    assert reply["usage"]["completion_tokens"] == 60
    assert reply["choices"][0]["message"]["content"] == loop(clips["short"], max_new_tokens=60, length_bound=False,
                                                              no_repeat_ngram_size=0)


def test_swv_serve_options_set_the_decoding(loop_dir: Path, monkeypatch) -> None:
    pytest.importorskip("uvicorn")
    from swv.cli.serve_cmd import serve
    from swv.serve import server

    apps = []
    monkeypatch.setattr(server, "run", lambda app, *args: apps.append(app))
    serve(loop_dir, max_context=2048, length_bound=False, no_repeat_ngram_size=4, repetition_penalty=1.1,
          ctc_weight=0.4)
    generation = apps[0].state.settings.generation
    assert (generation.length_bound, generation.no_repeat_ngram_size, generation.repetition_penalty,
            generation.ctc_weight) == (False, 4, 1.1, 0.4)
    assert generation.max_new_tokens is None  # each request's max_tokens, else --max-tokens
