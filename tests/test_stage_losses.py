"""Losses: the model reports them unweighted, the stage weighs them; an adapter plugin's
auxiliary loss is weighted by the stage's ``losses:`` and trained only when weighted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from swv.adapters.base import Adapter
from swv.core.config import ComponentConfig
from swv.core.errors import UsageError
from swv.model.prompts import PromptBuilder
from swv.nn.state import AudioState
from swv.recipes.loader import load_recipe
from swv.registry.components import Registry
from swv.registry.plugins import default_registry


class AuxTestConfig(ComponentConfig):
    target: float = 0.5


class AuxTestAdapter(Adapter):
    """Passes the state through and reports ``aux_pull``: the squared distance of its own
    parameter to ``target``. The parameter gets a gradient only through that loss."""

    config_class = AuxTestConfig
    aux_loss_names = frozenset({"aux_pull"})

    def __init__(self, config: AuxTestConfig, *, input_dim: int, backbone) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        self.output_dim = input_dim
        self.pull = nn.Parameter(torch.ones(3))

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return input_lengths

    def forward(self, state: AudioState) -> AudioState:
        loss = ((self.pull - self.config.target) ** 2).mean()
        return state.replace(aux_losses={**state.aux_losses, "aux_pull": loss})


@pytest.fixture
def registry(monkeypatch) -> Registry:
    """The default components plus ``aux_test``, used wherever swv looks up the default registry."""
    reg = Registry()
    for spec in default_registry().specs():
        reg.register(spec.kind, spec.name, target=spec.target, config=spec.config)
    reg.register("adapter", "aux_test", target=AuxTestAdapter, config=AuxTestConfig)
    monkeypatch.setattr("swv.registry.plugins.default_registry", lambda: reg)
    monkeypatch.setattr("swv.train.train_recipe.default_registry", lambda: reg)
    return reg


CHAIN = ["model.adapters=[{name: alignment, stack: 2, ctc_head_trainable: true}, {name: aux_test}, {name: shrinking}]"]


def _recipe(tmp_path: Path, registry: Registry, losses: str, run: str):
    return load_recipe("tiny", [f"output_dir={tmp_path / run}", *CHAIN, f"stages.0.losses={losses}",
                                "stages.0.trainable=[adapters.alignment, adapters.aux_test]",
                                "stages.0.max_steps=2", "stages.0.batch_size=2", "stages.0.log_every=1",
                                "stages.0.data.eval_datasets=[dev_asr]"], registry)


def _metrics(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_aux_loss_is_weighted_and_trained_only_when_weighted(tmp_path: Path, registry: Registry) -> None:
    from swv.train.train_recipe import train

    start = torch.ones(3)
    weighted = _recipe(tmp_path, registry, "{ctc: 1.0, aux_pull: 2.0}", "weighted")
    train(weighted, stage="alignment")
    stage_dir = tmp_path / "weighted" / "alignment"
    pull = load_file(str(stage_dir / "export" / "adapters" / "aux_test.safetensors"))["pull"]
    assert not torch.allclose(pull, start)  # trained towards the target
    assert bool((pull < start).all())
    records = _metrics(stage_dir / "metrics.jsonl")
    steps = [r for r in records if "aux_pull_loss" in r and "eval_loss" not in r]
    assert steps and all(r["loss"] == pytest.approx(r["ctc_loss"] + 2.0 * r["aux_pull_loss"], rel=1e-5) for r in steps)
    held_out = [r for r in records if "eval_loss" in r][-1]
    assert held_out["eval_loss"] == pytest.approx(held_out["eval_ctc_loss"] + 2.0 * held_out["eval_aux_pull_loss"], rel=1e-5)

    unweighted = _recipe(tmp_path, registry, "{ctc: 1.0}", "unweighted")
    train(unweighted, stage="alignment")
    stage_dir = tmp_path / "unweighted" / "alignment"
    assert torch.equal(load_file(str(stage_dir / "export" / "adapters" / "aux_test.safetensors"))["pull"], start)
    steps = [r for r in _metrics(stage_dir / "metrics.jsonl") if "ctc_loss" in r]
    assert steps and all(r["loss"] == pytest.approx(r["ctc_loss"], rel=1e-6) for r in steps)


def test_aux_loss_gradient_only_when_weighted(model_config_factory, registry: Registry) -> None:
    from swv.model.speechlm import SpeechLM
    from swv.recipes.schema import StageSettings
    from swv.train.stages import declared_aux_losses, make_stage

    refs = [{"name": "alignment", "dropout": 0.0}, {"name": "aux_test"}, {"name": "shrinking"}]
    aux = declared_aux_losses(refs, registry)
    assert aux == {"aux_pull": "aux_test"}
    model = SpeechLM(model_config_factory(refs), registry=registry)
    prompts = PromptBuilder(model.tokenizer, None, "<audio_patch>")
    ids, labels = prompts.training_ids("What is said?", "hello", True)
    feats, lengths = model.encoder.extract_features([np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1])
    batch = {"input_features": feats, "feature_lengths": lengths, "input_ids": torch.tensor([ids]),
             "attention_mask": torch.ones(1, len(ids), dtype=torch.long), "labels": torch.tensor([labels])}
    grads = {}
    for weight in (0.0, 3.0):
        settings = StageSettings.model_validate({
            "name": "s", "kind": "shrinking", "trainable": ["adapters"], "losses": {"lm": 1.0, "aux_pull": weight},
            "optimizer": {"lr": 1e-3}, "batch_size": 1, "max_steps": 1, "data": {"datasets": ["x"]},
        })
        stage = make_stage(settings, 1, aux)
        out = model(**stage.model_inputs(batch))
        losses = stage.losses(out)
        assert set(losses) == {"lm", "aux_pull"} and torch.equal(out.loss, out.lm_loss)  # reported unweighted
        total = stage.total_loss(losses)
        assert torch.allclose(total, losses["lm"] + weight * losses["aux_pull"])
        model.zero_grad(set_to_none=True)
        total.backward()
        grads[weight] = model.adapters["aux_test"].pull.grad
    assert grads[0.0] is None
    expected = 3.0 * 2 * (torch.ones(3) - 0.5) / 3
    assert torch.allclose(grads[3.0], expected)


def test_unknown_loss_name_is_an_error_naming_the_stage(tmp_path: Path, registry: Registry) -> None:
    from swv.train.train_recipe import train

    loaded = _recipe(tmp_path, registry, "{ctc: 1.0, aux_pul: 1.0}", "typo")
    with pytest.raises(UsageError, match=r"stages\[0\] \(alignment\): losses: unknown loss 'aux_pul'.*'aux_pull' \(aux_test\)"):
        train(loaded, stage="alignment")
    assert not (tmp_path / "typo" / "alignment").exists()  # checked before anything runs
    loaded = _recipe(tmp_path, registry, "{lm: 1.0}", "kind")
    with pytest.raises(UsageError, match=r"stages\[0\] \(alignment\): a alignment stage takes losses \['ctc'\], not 'lm'"):
        train(loaded, stage="alignment")


@pytest.mark.parametrize("reduction", ["token", "row"])
def test_stage_lm_reduction_reaches_the_model(model_config_factory, registry: Registry, reduction: str) -> None:
    """A stage's ``lm_reduction`` is the model's: two rows of different answer lengths give the
    LM loss that lm_loss computes with that reduction on the model's own logits."""
    from swv.model.losses import lm_loss
    from swv.model.speechlm import SpeechLM
    from swv.recipes.schema import StageSettings
    from swv.train.stages import make_stage

    model = SpeechLM(model_config_factory([{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}]), registry=registry)
    prompts = PromptBuilder(model.tokenizer, None, "<audio_patch>")
    rows = [prompts.training_ids("What is said?", answer, True) for answer in ("hello there my friend", "yes")]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    audio = [np.random.default_rng(s).standard_normal(16000).astype(np.float32) * 0.1 for s in (0, 1)]
    feats, lengths = model.encoder.extract_features(audio)
    batch = {"input_features": feats, "feature_lengths": lengths, "input_ids": ids, "attention_mask": mask, "labels": labels}
    settings = StageSettings.model_validate({
        "name": "s", "kind": "shrinking", "trainable": ["adapters"], "losses": {"lm": 1.0}, "lm_reduction": reduction,
        "optimizer": {"lr": 1e-3}, "batch_size": 2, "max_steps": 1, "data": {"datasets": ["x"]},
    })
    model.eval()  # logits are materialised; the loss is then computed from them as the stage asks
    with torch.no_grad():
        out = model(**make_stage(settings, 1, {}).model_inputs(batch))
        spliced = model.splice(model.encode_audio(feats, lengths), ids, mask, labels)
    assert_close = torch.testing.assert_close
    assert_close(out.lm_loss, lm_loss(out.logits, spliced.labels, reduction))
    other = "token" if reduction == "row" else "row"
    assert not torch.allclose(out.lm_loss, lm_loss(out.logits, spliced.labels, other))


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_lr_scale_multiplies_the_learning_rate_of_the_matching_module(tmp_path: Path, registry: Registry, scale: float) -> None:
    """``optimizer.lr_scale``: the matched module's first AdamW step is ``scale x lr`` (Adam's first
    step moves each weight by its learning rate), the others keep ``lr``."""
    from swv.train.train_recipe import train

    lr = 1e-3
    loaded = load_recipe("tiny", [
        f"output_dir={tmp_path / 'run'}", *CHAIN, "stages.0.losses={ctc: 1.0, aux_pull: 1.0}",
        "stages.0.trainable=[adapters.alignment, adapters.aux_test]", "stages.0.max_steps=1",
        "stages.0.batch_size=2", "stages.0.schedule.name=constant", "stages.0.schedule.warmup_steps=0",
        f"stages.0.optimizer.lr={lr}", f"stages.0.optimizer.lr_scale={{adapters.aux_test: {scale}}}",
        "stages.0.optimizer.max_grad_norm=null",
    ], registry)
    train(loaded, stage="alignment")
    pull = load_file(str(tmp_path / "run" / "alignment" / "export" / "adapters" / "aux_test.safetensors"))["pull"]
    torch.testing.assert_close(pull, torch.full((3,), 1.0 - scale * lr), rtol=0, atol=1e-6)


def test_lr_scale_pattern_matching_no_trained_parameter_is_one_error(tmp_path: Path, registry: Registry) -> None:
    from swv.train.train_recipe import train

    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", *CHAIN, "stages.0.losses={ctc: 1.0}",
                                  "stages.0.trainable=[adapters.alignment]", "stages.0.max_steps=1",
                                  "stages.0.optimizer.lr_scale={adapters.shrinking: 10}"], registry)
    with pytest.raises(UsageError, match=r"stages\[0\] \(alignment\): optimizer.lr_scale: 'adapters.shrinking' matches "
                                         r"no parameter this stage trains; trainable modules: adapters.alignment"):
        train(loaded, stage="alignment")
    shadowed = load_recipe("tiny", [f"output_dir={tmp_path / 'shadow'}", *CHAIN, "stages.0.losses={ctc: 1.0}",
                                    "stages.0.trainable=[adapters.alignment]", "stages.0.max_steps=1",
                                    "stages.0.optimizer.lr_scale={adapters.*: 2, adapters.alignment: 10}"], registry)
    with pytest.raises(UsageError, match=r"optimizer.lr_scale: every parameter 'adapters.alignment' matches is taken by an earlier entry"):
        train(shadowed, stage="alignment")
    with pytest.raises(Exception, match=r"lr_scale\['lora'\] must be > 0"):
        load_recipe("tiny", [f"output_dir={tmp_path / 'x'}", "stages.0.optimizer.lr_scale={lora: 0}"], registry)


def test_grad_norm_is_logged_before_clipping(tmp_path: Path, registry: Registry) -> None:
    """metrics.jsonl's ``grad_norm`` is the trainable gradient's norm before clipping: here the
    auxiliary loss alone reaches the one trained parameter, d/dp mean((p - 0.5)^2) = 1/3 at p = 1."""
    from swv.train.train_recipe import train

    loaded = load_recipe("tiny", [
        f"output_dir={tmp_path / 'run'}", *CHAIN, "stages.0.losses={ctc: 1.0, aux_pull: 1.0}",
        "stages.0.trainable=[adapters.aux_test]", "stages.0.max_steps=1", "stages.0.batch_size=2",
        "stages.0.log_every=1", "stages.0.optimizer.max_grad_norm=0.01",
    ], registry)
    train(loaded, stage="alignment")
    steps = [r for r in _metrics(tmp_path / "run" / "alignment" / "metrics.jsonl") if "grad_norm" in r]
    assert len(steps) == 1 and steps[0]["grad_norm"] == pytest.approx(3 ** -0.5, rel=1e-5)
