"""Frozen weights held in bf16 during bf16 training (issue 28, item 3): which tensors are cast,
that a step computes what autocast computed before, and that exports keep the source weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from swv.model.speechlm import SpeechLM
from swv.train.frozen_cast import FrozenCast, castable_frozen


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(8, 8)
        self.trained = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.embed = nn.Embedding(5, 8)
        self.head = nn.Linear(8, 5, bias=False)
        self.head.weight = self.embed.weight  # tied
        for module in (self.frozen, self.norm, self.embed):
            module.requires_grad_(False)


def test_only_frozen_linear_weights_not_shared_with_other_modules_are_cast() -> None:
    toy = Toy()
    chosen = {id(p) for p in castable_frozen(toy)}
    assert chosen == {id(toy.frozen.weight), id(toy.frozen.bias)}
    source = toy.frozen.weight.data.clone()
    cast = FrozenCast(toy)
    assert len(cast) == 2 and toy.frozen.weight.dtype == torch.bfloat16
    for kept in (toy.trained.weight, toy.norm.weight, toy.embed.weight):
        assert kept.dtype == torch.float32
    with cast.restored():
        assert toy.frozen.weight.dtype == torch.float32 and torch.equal(toy.frozen.weight, source)
    assert toy.frozen.weight.dtype == torch.bfloat16
    cast.release()
    assert torch.equal(toy.frozen.weight, source)


def _stage2_loss(model: SpeechLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).lm_loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_a_bf16_step_computes_what_autocast_computed_from_float32(model_config_factory) -> None:
    torch.manual_seed(0)
    model = SpeechLM(model_config_factory([{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}]))
    model.requires_grad_(False)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("adapters.shrinking") or "lora_" in name)
    model.train()
    waves = [torch.randn(16000).numpy() * 0.1, torch.randn(12000).numpy() * 0.1]
    feats, lens = model.encoder.extract_features(waves)
    ids = torch.tensor([[5, 6, model.audio_token_id, 7, 8, 9]] * 2)
    batch = {"input_features": feats, "feature_lengths": lens, "input_ids": ids,
             "attention_mask": torch.ones_like(ids), "labels": torch.where(ids == model.audio_token_id, -100, ids)}
    before, grads_before = _stage2_loss(model, batch)
    cast = FrozenCast(model)
    assert len(cast) > 0
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    after, grads_after = _stage2_loss(model, batch)
    assert torch.equal(before, after)
    assert all(torch.equal(a, b) for a, b in zip(grads_before, grads_after))


def _frozen_tensors(export: Path) -> dict[str, torch.Tensor]:
    """The tensors of the modules the test's Stage II keeps frozen: the bundled encoder and
    backbone and the alignment adapter."""
    out: dict[str, torch.Tensor] = {}
    for path in [*sorted((export / "encoder").glob("*.safetensors")), *sorted((export / "backbone").glob("*.safetensors")),
                 export / "adapters" / "alignment.safetensors"]:
        out.update({f"{path.relative_to(export)}:{k}": v for k, v in load_file(path).items()})
    return out


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set: an
    earlier in-process training run (precision no) would refuse this test's bf16. Reset it around
    the test, as accelerate's own test suite does."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_export_after_bf16_training_keeps_the_source_weights(tmp_path: Path, capsys) -> None:
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    overrides = [f"output_dir={tmp_path / 'run'}", "precision=bf16", "data.spec_augment.enabled=false",
                 "stages.0.max_steps=1", "stages.0.batch_size=2", "stages.1.max_steps=2", "stages.1.batch_size=2",
                 "stages.1.trainable=[adapters.shrinking,lora]", "stages.1.losses={lm: 1.0}",
                 "stages.0.data.eval_datasets=[]", "stages.1.data.eval_datasets=[]"]
    loaded = load_recipe("tiny", overrides, default_registry())
    [first] = train(loaded, stage="alignment")
    [second] = train(loaded, stage="shrinking")
    assert "frozen weight tensor(s) held in bf16" in capsys.readouterr().out
    source, exported = _frozen_tensors(first), _frozen_tensors(second)
    assert source.keys() == exported.keys() and len(source) > 10
    for key, tensor in exported.items():
        assert tensor.dtype == source[key].dtype == torch.float32, key
        assert torch.equal(tensor, source[key]), key
    lora = load_file(second / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in lora.values())
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in lora.items())  # trained from zero
