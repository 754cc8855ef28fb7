"""SpeechLMProcessor: returned by AutoProcessor, saved and loaded, the same inputs the Pipeline
feeds the model, explicit sample rates, answers cut at stop tokens, exports without
processor_config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import swv  # noqa: F401  (registers swv with transformers' Auto classes)
from swv.core.audio import resample
from swv.core.errors import InputError, UsageError
from swv.infer.pipeline import Pipeline
from swv.model.processor import PROCESSOR_FIELDS, PROCESSOR_FILE, SpeechLMProcessor
from swv.model.speechlm import SpeechLM

SR = 16000


def noise(seconds: float, seed: int, rate: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(rate * seconds)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def export(model_config_factory, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = model_config_factory()
    config.system_prompt = "Answer briefly."
    config.instructions = {"asr": "Write down what is said."}
    return SpeechLM(config).save_pretrained(tmp_path_factory.mktemp("processor") / "export")


@pytest.fixture(scope="module")
def pipe(export: Path) -> Pipeline:
    return Pipeline.from_pretrained(export)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "a.wav"
    sf.write(path, noise(1.2, 1), SR)
    return path


def test_auto_processor_returns_the_saved_processor(export: Path, pipe: Pipeline) -> None:
    from transformers import AutoProcessor

    saved = json.loads((export / PROCESSOR_FILE).read_text())
    assert saved["processor_class"] == "SpeechLMProcessor"
    processor = AutoProcessor.from_pretrained(str(export))
    assert isinstance(processor, SpeechLMProcessor)
    assert processor.fields() == pipe.processor.fields()
    assert processor.system_prompt == "Answer briefly." and processor.sampling_rate == SR
    assert processor.default_instruction() == "Write down what is said."
    assert processor.stop_token_ids == pipe.model.stop_token_ids()


def test_save_and_load_round_trip(pipe: Pipeline, tmp_path: Path, clip: Path) -> None:
    pipe.processor.with_system_prompt("Be kind.").save_pretrained(str(tmp_path))
    loaded = SpeechLMProcessor.from_pretrained(tmp_path)
    assert loaded.fields() == {**pipe.processor.fields(), "system_prompt": "Be kind."}
    assert set(json.loads((tmp_path / PROCESSOR_FILE).read_text())) == {*PROCESSOR_FIELDS, "processor_class"}
    assert loaded(clip, "Who speaks?")["input_ids"].tolist() == [
        pipe.processor.with_system_prompt("Be kind.").prompt_ids("Who speaks?")
    ]


def test_processor_outputs_are_what_the_pipeline_feeds_the_model(export: Path, pipe: Pipeline, clip: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(export))
    array = noise(0.6, 2)
    inputs = processor([clip, array], ["Who speaks?", "What is the emotion of the speaker?"], sampling_rate=SR)
    requests = [pipe.request(pipe.load(clip), "Who speaks?"),
                pipe.request(pipe.load(array, sample_rate=SR), "What is the emotion of the speaker?")]
    prepared = pipe.encode_requests(requests)
    assert torch.equal(inputs["input_ids"], prepared.input_ids)
    assert torch.equal(inputs["attention_mask"], prepared.attention_mask)
    assert int(inputs["attention_mask"][0].sum()) < inputs["attention_mask"].shape[1]  # left padding
    assert inputs["clip_owner"].tolist() == [0, 1]
    assert len(inputs["audio"]) == len(requests)
    for given, request in zip(inputs["audio"], requests):
        np.testing.assert_array_equal(given, request.waveforms[0].samples)
    state = pipe.model.encode_audio(waveforms=inputs["audio"], window_batch_size=2)
    torch.testing.assert_close(state.embeds, prepared.state.embeds, rtol=0, atol=0)
    # the same answer from the processor's inputs and from the Pipeline
    with torch.no_grad():
        new = pipe.model.generate(inputs["input_ids"], inputs["attention_mask"], waveforms=inputs["audio"],
                                  max_new_tokens=5, do_sample=False)
    assert processor.batch_decode(new) == pipe([clip, array], ["Who speaks?", "What is the emotion of the speaker?"],
                                               sample_rate=SR, max_new_tokens=5)
    # no text: the model's ASR instruction
    assert processor(clip)["input_ids"].tolist() == [pipe.prompt_ids("Write down what is said.")]


def test_an_array_is_resampled_from_its_explicit_rate(pipe: Pipeline) -> None:
    wav48 = noise(0.5, 3, rate=48000)
    audio = pipe.processor(wav48, sampling_rate=48000)["audio"]
    assert len(audio) == 1 and audio[0].shape == (8000,)
    np.testing.assert_array_equal(audio[0], resample(wav48, 48000, SR))
    assert pipe(wav48, sample_rate=48000, max_new_tokens=4) == pipe(audio[0], sample_rate=SR, max_new_tokens=4)


def test_an_array_without_its_sample_rate_is_refused(pipe: Pipeline, export: Path) -> None:
    import transformers

    with pytest.raises(UsageError, match="<array>: a numpy waveform needs its sample rate"):
        pipe.processor(noise(0.5, 4))
    with pytest.raises(UsageError, match="sample rate"):
        pipe(noise(0.5, 4))
    hf = transformers.pipeline("audio-text-to-text", model=str(export), device="cpu")
    assert isinstance(hf.processor, SpeechLMProcessor) and hf.processor.fields() == pipe.processor.fields()
    with pytest.raises(UsageError, match="sample rate"):
        hf(noise(0.5, 4))
    from_object = transformers.pipeline("audio-text-to-text", model=pipe.model, device="cpu")
    assert isinstance(from_object.processor, SpeechLMProcessor)
    with pytest.raises(UsageError, match="positive"):
        pipe.processor(noise(0.5, 4), sampling_rate=0)
    with pytest.raises(InputError, match="exceeds the maximum duration of 1 s"):
        pipe.processor(noise(1.5, 4), sampling_rate=SR, max_duration=1)


def test_answers_are_cut_at_the_first_stop_token(pipe: Pipeline) -> None:
    processor = pipe.processor
    words = processor.tokenizer.encode("hello there", add_special_tokens=False)
    stop = processor.stop_token_ids[0]
    rows = torch.tensor([[*words, stop, *words], [*words, *words, words[0]]])
    texts, generated, stopped = processor.decode_generated(rows)
    assert texts == ["hello there", processor.tokenizer.decode([*words, *words, words[0]]).strip()]
    assert generated == [len(words) + 1, 2 * len(words) + 1] and stopped == [True, False]
    assert processor.batch_decode(rows) == texts
    assert processor.batch_decode([[*words, stop], words]) == ["hello there", "hello there"]
    assert processor.decode([*words, stop, *words]) == "hello there"


def test_exports_without_processor_config_still_load(export: Path, pipe: Pipeline, tmp_path: Path, clip: Path) -> None:
    from transformers import AutoProcessor

    old = tmp_path / "old_export"
    shutil.copytree(export, old)
    (old / PROCESSOR_FILE).unlink()
    tokenizer_config = old / "tokenizer_config.json"
    fields = json.loads(tokenizer_config.read_text())
    fields.pop("processor_class", None)
    tokenizer_config.write_text(json.dumps(fields))
    processor = AutoProcessor.from_pretrained(str(old))
    assert isinstance(processor, SpeechLMProcessor) and processor.fields() == pipe.processor.fields()
    old_pipe = Pipeline.from_pretrained(old)
    assert old_pipe.processor.fields() == pipe.processor.fields()
    assert old_pipe(clip, max_new_tokens=5) == pipe(clip, max_new_tokens=5)


def test_a_malformed_processor_config_is_one_clear_error(export: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / PROCESSOR_FILE).write_text('{"processor_class": "SpeechLMProcessor"}')
    with pytest.raises(InputError, match="processor_config.json: missing field"):
        SpeechLMProcessor.from_pretrained(broken)
    (broken / PROCESSOR_FILE).write_text("{not json")
    with pytest.raises(InputError, match="cannot read the processor config"):
        SpeechLMProcessor.from_pretrained(broken)
