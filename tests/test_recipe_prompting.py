"""Recipe details shared by training and decoding: one default-instruction table per task (used
alike by training, ``swv infer`` and ``swv eval``), the decoding defaults saved with each
export, chain-of-thought budgets, and Stage III mixing several SFT sources by temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from swv.core.errors import InputError
from swv.data.collate import SpeechCollator
from swv.data.stage_data import load_stage_data, make_sampler
from swv.infer.batch import (
    ManifestItem,
    _run_batch,
    saved_generation,
    saved_instructions,
    task_prompt,
)
from swv.infer.pipeline import GenerationSettings, Pipeline
from swv.model.defaults import DEFAULT_INSTRUCTIONS, GenerationDefaults
from swv.model.prompts import PromptBuilder
from swv.nn.state import AudioState
from swv.recipes.loader import load_recipe
from swv.registry.plugins import default_registry
from swv.train.runner import build_model

OVERRIDES = ["model.instructions.asr=Write down what is said.", "model.instructions.pitch=Is the voice high or low?",
             "model.generation.max_new_tokens=64"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    loaded = load_recipe("tiny", [f"output_dir={tmp_path_factory.mktemp('run')}", *OVERRIDES], default_registry())
    model = build_model(loaded, None)
    directory = tmp_path_factory.mktemp("export") / "model"
    model.save_pretrained(directory)
    return directory, model


def prompt_text(model, ids: list[int]) -> str:
    return model.tokenizer.decode(ids)


def test_training_infer_and_eval_share_one_instruction_table(exported, tmp_path: Path) -> None:
    directory, model = exported
    table = model.config.instructions
    assert table["asr"] == "Write down what is said." and table["pitch"] == "Is the voice high or low?"
    assert table["emotion"] == DEFAULT_INSTRUCTIONS["emotion"]  # the defaults stay under the recipe's entries
    # training: the collator the runner builds (PromptBuilder with the model's table)
    builder = PromptBuilder(model.tokenizer, model.config.system_prompt, model.backbone.audio_token, table)
    collate = SpeechCollator(model.encoder, model.tokenizer, mode="lm", prompts=builder, spec_augment=None)
    from swv.assets import asset_path

    audio = str(asset_path("tiny_speech/audio/train-000.flac"))
    rows = [{"audio": audio, "task": "pitch", "instruction": "", "response": "low"},
            {"audio": audio, "task": "", "instruction": "", "text": "the sun", "response": ""},
            {"audio": audio, "task": "st", "instruction": "", "target_text": "die Sonne", "target_language": "de"}]
    batch = collate(rows)
    texts = [prompt_text(model, ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert "Is the voice high or low?" in texts[0]
    assert "Write down what is said." in texts[1]
    assert "Translate the speech into German." in texts[2]
    with pytest.raises(InputError, match=r"m\.jsonl:7: task 'humming' has no default instruction"):
        collate([{"audio": audio, "task": "humming", "instruction": "", "response": "yes", "manifest": "m.jsonl", "line": 7}])
    # swv infer / swv eval: the same table, read from the saved model
    saved = saved_instructions(directory)
    assert saved == table
    assert task_prompt({"task": "pitch"}, "x", "classification", instructions=saved) == "Is the voice high or low?"
    assert task_prompt({}, "x", "asr", instructions=saved) == "Write down what is said."
    assert task_prompt({"target_language": "fr"}, "x", "st", instructions=saved) == "Translate the speech into French."
    pipe = Pipeline.from_pretrained(directory)
    assert pipe.default_prompt() == "Write down what is said."
    assert prompt_text(model, pipe.prompt_ids(pipe.default_prompt())) == prompt_text(
        model, builder.generation_ids("", True, "asr"))


def test_generation_defaults_are_saved_with_each_export(exported, tmp_path: Path) -> None:
    from transformers import GenerationConfig

    directory, model = exported
    config = GenerationConfig.from_pretrained(str(directory))
    assert config.max_new_tokens == 64 and config.do_sample is False
    assert saved_generation(directory).max_new_tokens == 64
    pipe = Pipeline.from_pretrained(directory)
    assert pipe.resolve(GenerationSettings()).max_new_tokens == 64
    assert pipe.resolve(GenerationSettings(max_new_tokens=5)).max_new_tokens == 5  # the caller still decides
    plain = build_model(load_recipe("tiny", [f"output_dir={tmp_path}"], default_registry()), None)
    assert plain.generation_defaults().model_dump() == GenerationDefaults().model_dump()
    assert GenerationDefaults().model_dump().items() >= {"max_new_tokens": 256, "do_sample": False,
                                                         "temperature": 1.0, "top_p": 1.0}.items()
    plain.save_pretrained(tmp_path / "plain")
    assert GenerationConfig.from_pretrained(str(tmp_path / "plain")).max_new_tokens == 256


def test_chain_of_thought_answers_get_the_transcript_budget(exported) -> None:
    directory, _ = exported
    pipe = Pipeline.from_pretrained(directory)
    state = AudioState(torch.zeros(2, 40, 4), torch.tensor([40, 17]))
    assert pipe.token_budget(GenerationSettings(max_new_tokens=8), state) == 8
    assert pipe.token_budget(GenerationSettings(max_new_tokens=8, transcript_first=True), state) == 48
    assert pipe.token_budget(GenerationSettings(transcript_first=True), state) == 64 + 40

    class Recorder:
        """Stands in for the pipeline: records the settings each batch is generated with."""

        def __init__(self) -> None:
            self.settings: list[GenerationSettings] = []

        def load(self, path, name, max_duration):
            return pipe.load(path, name=name, max_duration=max_duration)

        def generate_batch(self, waveforms, prompts, settings, tasks=None):
            self.settings.append(settings)
            return pipe.generate_batch(waveforms, prompts, GenerationSettings(max_new_tokens=1))

    from swv.assets import asset_path

    audio = str(asset_path("tiny_speech/audio/train-000.flac"))
    recorder = Recorder()
    items = [ManifestItem("a", "m:1", {"audio": audio, "cot": True}, "First write down what is said, then answer."),
             ManifestItem("b", "m:2", {"audio": audio}, "Is it high?")]
    _run_batch(recorder, Path("."), items, GenerationSettings(), None, False)
    _run_batch(recorder, Path("."), items[1:], GenerationSettings(), None, False)
    assert [s.transcript_first for s in recorder.settings] == [True, None]


def test_stage_three_mixes_sft_sources_by_temperature(tmp_path: Path) -> None:
    recipe = load_recipe("soundwave").recipe
    sft = recipe.stages[2]
    assert sft.kind == "sft" and len(sft.data.datasets) == 15 and sft.data.mixture.temperature == 5.0
    tasks = {recipe.data.datasets[name].task for name in sft.data.datasets}
    assert {"asr", "st", "emotion", "scene", "chat"} <= tasks
    # the Stage II mixture sampler drives Stage III: the tiny recipe's SFT sources at T = 1 and T = 5
    rates = {}
    for temperature in (1.0, 5.0):
        loaded = load_recipe("tiny", [f"output_dir={tmp_path}", f"stages.2.data.mixture.temperature={temperature}"])
        stage = loaded.recipe.stages[2]
        data = load_stage_data(loaded.recipe.data, stage.data.datasets, "test")
        sampler = make_sampler(data, stage.data, 8, seed=0, rank=0, world_size=1, max_frames_per_batch=None,
                               frame_rate=100.0)
        expected = np.array(data.sizes, dtype=float) ** (1 / temperature)
        np.testing.assert_allclose(sampler.probabilities(0), expected / expected.sum(), rtol=1e-6)
        drawn = np.concatenate([np.asarray(b) for b in sampler.epoch_batches(0)])
        rates[temperature] = float(np.mean(drawn >= data.sizes[0]))  # share of the second source (text_qa)
    assert data.names == ["speech_sft", "text_qa"]
    assert rates[5.0] > rates[1.0] + 0.1
