"""Whole-clip labels (``Adapter.clip_classes``): the utterance adapter's classifiers and their
auxiliary loss ``clip_class``, from a row's ``task``/``label`` through the collator and the model
to a trained stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from swv.adapters.utterance import CLIP_CLASS_LOSS, UtteranceConfig
from swv.core.errors import ComponentError
from swv.data.collate import SpeechCollator
from swv.model.prompts import PromptBuilder
from swv.model.speechlm import SpeechLM
from swv.nn.state import IGNORE_INDEX

CLASSES = {"pitch": ["high", "low"], "rate": ["fast", "slow"]}
CHAIN = [{"name": "utterance", "classes": CLASSES}, {"name": "alignment", "dropout": 0.0},
         {"name": "shrinking", "posterior_embedding": True}]


def tone(path: Path, hertz: float, seconds: float = 0.6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * hertz * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, wave.astype(np.float32), 16000)
    return path


def test_config_refuses_bad_classes() -> None:
    with pytest.raises(ValueError, match="classes.pitch: needs at least two distinct labels"):
        UtteranceConfig(classes={"pitch": ["high", "high"]})
    with pytest.raises(ValueError, match="without '.'"):
        UtteranceConfig(classes={"a.b": ["x", "y"]})


def test_the_collator_gives_each_audio_row_its_label_index(model_config_factory, tmp_path: Path) -> None:
    model = SpeechLM(model_config_factory(CHAIN))
    assert model.clip_classes() == CLASSES
    clip = tone(tmp_path / "a.wav", 200)
    rows = [
        {"audio": str(clip), "task": "pitch", "label": "low", "instruction": "high or low?", "response": "low"},
        {"audio": "", "task": "", "instruction": "Say hi.", "response": "hi"},  # text only: no audio row
        {"audio": str(clip), "task": "rate", "label": "slow", "instruction": "fast or slow?", "response": "slow"},
        {"audio": str(clip), "task": "pitch", "label": "medium", "instruction": "high or low?", "response": "medium"},
        {"audio": str(clip), "task": "asr", "text": "hello", "instruction": "Transcribe."},
    ]
    prompts = PromptBuilder(model.tokenizer, None, model.backbone.audio_token)
    collate = SpeechCollator(model.encoder, model.tokenizer, mode="lm", prompts=prompts, clip_classes=model.clip_classes())
    batch = collate(rows)
    ignore = IGNORE_INDEX
    assert batch["clip_targets"].tolist() == [[1, ignore], [ignore, 1], [ignore, ignore], [ignore, ignore]]
    plain = SpeechCollator(model.encoder, model.tokenizer, mode="lm", prompts=prompts)
    assert "clip_targets" not in plain(rows)


def test_the_classifiers_learn_the_labels_through_the_model(model_config_factory) -> None:
    """``clip_targets`` reach the utterance adapter through ``SpeechLM.forward``; its loss
    ``clip_class`` trains the projection and the classifiers to read a label the frames carry
    (here: their scale), and is absent without targets or for rows of other tasks only."""
    torch.manual_seed(0)
    model = SpeechLM(model_config_factory(CHAIN))
    model.train()
    utterance = model.adapters["utterance"]
    optimiser = torch.optim.Adam(utterance.parameters(), lr=1e-2)
    width = model.encoder.output_dim

    def clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        scale = torch.where(labels == 0, 2.0, 0.5)[:, None, None]
        return torch.randn(n, 12, width, generator=gen) * scale, labels

    lengths = torch.full((16,), 12)
    losses = []
    for step in range(40):
        embeds, labels = clips(16, step)
        targets = torch.stack([labels, torch.full_like(labels, IGNORE_INDEX)], dim=1)  # pitch, rate
        out = model(encoder_embeds=embeds, encoder_lengths=lengths, clip_targets=targets, run_backbone=False)
        loss = out.aux_losses[CLIP_CLASS_LOSS]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 < losses[0]
    model.eval()
    embeds, labels = clips(32, 999)
    with torch.no_grad():
        state = model.encode_audio(encoder_embeds=embeds, encoder_lengths=torch.full((32,), 12), stop_after_ctc=True)
        guess = utterance.classifiers["pitch"](state.utterance_embeds).argmax(dim=-1)
        assert bool((guess == labels).all())
        assert CLIP_CLASS_LOSS not in model(encoder_embeds=embeds, encoder_lengths=torch.full((32,), 12),
                                            run_backbone=False).aux_losses
        none = torch.full((32, 2), IGNORE_INDEX)
        assert CLIP_CLASS_LOSS not in model(encoder_embeds=embeds, encoder_lengths=torch.full((32,), 12),
                                            clip_targets=none, run_backbone=False).aux_losses
    with pytest.raises(Exception, match=r"clip_targets must be \[B, 2\]"):
        model(encoder_embeds=embeds, encoder_lengths=torch.full((32,), 12), clip_targets=none[:, :1], run_backbone=False)


def test_adapters_that_disagree_on_a_task_are_refused(model_config_factory) -> None:
    model = SpeechLM(model_config_factory(CHAIN))
    model.adapters["second"] = type(model.adapters["utterance"])(
        UtteranceConfig(classes={"pitch": ["low", "high"]}), input_dim=model.encoder.output_dim, backbone=model.backbone.info())
    with pytest.raises(ComponentError, match="clip classes of task 'pitch'"):
        model.clip_classes()


@pytest.mark.parametrize("losses", ["{lm: 1.0, clip_class: 1.0}", "{clip_class: 1.0}"])
def test_a_stage_trains_the_classifiers_by_the_weight_of_clip_class(tmp_path: Path, losses: str) -> None:
    """A recipe stage with ``clip_class`` in its ``losses:`` on label rows logs
    ``clip_class_loss``, and the export carries the trained classifiers; with ``clip_class``
    alone the LLM does not run (no ``lm_loss``)."""
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    rows = []
    for i in range(8):
        label = "high" if i % 2 else "low"
        clip = tone(tmp_path / f"c{i}.wav", 900 if label == "high" else 150, seed=i)
        rows.append({"audio": str(clip), "task": "pitch", "label": label, "instruction": "Is the voice high or low?",
                     "response": label})
    manifest = tmp_path / "pitch.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chain = json.dumps([{"name": "utterance", "classes": {"pitch": ["high", "low"]}},
                        {"name": "alignment", "stack": 2}, {"name": "shrinking"}])
    loaded = load_recipe("tiny", [
        f"output_dir={tmp_path / 'run'}", f"model.adapters={chain}",
        f"data.datasets={{pitch: {{manifest: {manifest}}}}}", "data.spec_augment.enabled=false",
        f"stages=[{{name: labels, kind: sft, trainable: [adapters.utterance], losses: {losses},"
        " optimizer: {lr: 1.0e-2}, batch_size: 4, max_steps: 3, log_every: 1, data: {datasets: [pitch]}}]",
    ], default_registry())
    train(loaded, stage="labels")
    records = [json.loads(line) for line in (tmp_path / "run" / "labels" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["clip_class_loss"] for r in records if "clip_class_loss" in r]
    assert len(logged) == 3 and all(np.isfinite(logged))
    assert any("lm_loss" in r for r in records) == ("lm" in losses)
    weights = load_file(str(tmp_path / "run" / "labels" / "export" / "adapters" / "utterance.safetensors"))
    assert weights["classifiers.pitch.weight"].shape == (2, 64)


def test_without_lm_gradient_only_the_classifiers_train_the_projection(model_config_factory) -> None:
    """``lm_gradient: false``: a loss on the LLM's side of the vector leaves the projection without
    a gradient, the classifiers' loss still reaches it; refused without classes."""
    with pytest.raises(ValueError, match="lm_gradient: false needs classes"):
        UtteranceConfig(lm_gradient=False)
    chain = [{**CHAIN[0], "lm_gradient": False}, *CHAIN[1:]]
    for detached in (True, False):
        torch.manual_seed(0)
        model = SpeechLM(model_config_factory(chain if detached else CHAIN)).train()
        proj = model.adapters["utterance"].proj
        embeds, lengths = torch.randn(4, 12, model.encoder.output_dim), torch.full((4,), 12)
        state = model.encode_audio(encoder_embeds=embeds, encoder_lengths=lengths, stop_after_ctc=True)
        assert state.utterance_embeds.requires_grad != detached
        if not detached:
            state.utterance_embeds.sum().backward()
            assert proj.weight.grad is not None
            proj.weight.grad = None
        targets = torch.tensor([[0, 1], [1, 0], [0, 0], [1, 1]])
        out = model(encoder_embeds=embeds, encoder_lengths=lengths, clip_targets=targets, run_backbone=False)
        out.aux_losses[CLIP_CLASS_LOSS].backward()
        assert proj.weight.grad is not None and bool(proj.weight.grad.abs().sum() > 0)
