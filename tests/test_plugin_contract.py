"""The plugin contract (docs/plugins.md): a third-party encoder, adapter and backbone that
implement only swv's base classes, installed as a distribution, go through ``swv train`` (all
three stage kinds), ``swv infer``, ``swv export`` and ``SpeechLM.from_pretrained``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from swv.adapters.base import Adapter
from swv.assets import asset_path
from swv.core.errors import ComponentError
from swv.model.speechlm import SpeechLM
from swv.nn.context import BackboneInfo
from swv.registry.components import Registry
from swv.registry.plugins import load_plugins

PLUGIN = Path(__file__).parent / "data" / "plugins" / "third_party"

RECIPE = """
output_dir: run
seed: 0
precision: "no"
model:
  encoder: {name: tp-spectrum, dim: 24}
  adapters:
    - {name: tp-gate, width: 40}
    - {name: alignment, stack: 2, ctc_head_trainable: true, dropout: 0.0}
    - {name: shrinking}
  backbone: {name: tp-llama, tokenizer: "asset:tiny_tokenizer", hidden_size: 32, layers: 1, heads: 4}
data:
  datasets:
    asr: {manifest: "asset:tiny_speech/train_asr.jsonl", task: asr, max_samples: 12}
    sft: {manifest: "asset:tiny_speech/train_sft.jsonl", max_samples: 12}
stages:
  - name: alignment
    kind: alignment
    trainable: [adapters.tp-gate, adapters.alignment]
    losses: {ctc: 1.0}
    optimizer: {lr: 1.0e-3}
    batch_size: 4
    max_steps: 3
    data: {datasets: [asr]}
  - name: shrinking
    kind: shrinking
    trainable: [adapters.alignment, adapters.shrinking, backbone]
    losses: {lm: 1.0, ctc: 0.3}
    optimizer: {lr: 1.0e-3}
    batch_size: 4
    max_steps: 2
    data: {datasets: [asr]}
  - name: sft
    kind: sft
    trainable: [adapters.tp-gate, adapters.shrinking, backbone]
    losses: {lm: 1.0}
    optimizer: {lr: 1.0e-3}
    batch_size: 4
    max_steps: 2
    data: {datasets: [sft]}
"""

@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory, plugin_installer) -> Path:
    return plugin_installer(tmp_path_factory.mktemp("site"), str(PLUGIN))


def run(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=cwd)


def test_third_party_components_train_infer_export_reload(
    plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tp.yaml").write_text(RECIPE)
    res = run(plugin_site, "-m", "swv.cli", "train", "--recipe", "tp.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    stage_export = tmp_path / "run" / "sft" / "export"
    for stage in ("alignment", "shrinking", "sft"):
        assert (tmp_path / "run" / stage / "export" / "swv_config.json").is_file()
    # the random backbone is bundled by every stage (needs_bundle, save_base, bundled_config);
    # the encoder, whose config rebuilds it, is not
    first = json.loads((tmp_path / "run" / "alignment" / "export" / "swv_config.json").read_text())
    assert first["bundled"] == ["backbone"]
    config = json.loads((stage_export / "swv_config.json").read_text())
    assert config["bundled"] == ["backbone"]
    assert config["backbone"]["name"] == "tp-llama" and config["backbone"]["path"] == "backbone"
    assert config["backbone"]["tokenizer"] is None
    assert config["encoder"] == {"name": "tp-spectrum", "dim": 24, "frame": 160, "sample_rate": 16000, "seed": 0}

    audio = str(asset_path("tiny_speech/audio/train-000.flac"))
    infer = run(plugin_site, "-m", "swv.cli", "infer", str(stage_export), audio, "--max-new-tokens", "4", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-3000:]

    res = run(plugin_site, "-m", "swv.cli", "export", "run", "exported", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    # SpeechLM.from_pretrained in this process, through the installed distribution's entry point
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = load_plugins(autoload=True).registry
    model = SpeechLM.from_pretrained(tmp_path / "exported", registry=registry)
    classes = [type(model.encoder), *map(type, model.adapters.values()), type(model.backbone)]
    assert [c.__name__ for c in classes] == ["SpectrumEncoder", "GatedProjection", "AlignmentAdapter", "ShrinkingAdapter", "TinyLlama"]
    assert classes[0].__module__ == "swv_third_party.encoder" and classes[-1].__module__ == "swv_third_party.backbone"
    backbone = model.backbone.hf_model.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in load_file(str(stage_export / "backbone" / "model.safetensors")).items())
    gate = model.adapters["tp-gate"].state_dict()
    assert all(torch.equal(gate[k], v) for k, v in load_file(str(stage_export / "adapters" / "tp-gate.safetensors")).items())

    # an encoder without save_pretrained/bundled_config cannot be bundled: a clear error, nothing written
    with pytest.raises(ComponentError, match="encoder SpectrumEncoder cannot be bundled"):
        model.save_pretrained(tmp_path / "bundled", bundle=True)
    assert not (tmp_path / "bundled").exists()


class _HalfConfig(BaseModel):
    pass


class _HalfAdapter(Adapter):
    """Implements output_lengths but not forward."""

    def output_lengths(self, input_lengths):  # type: ignore[no-untyped-def]
        return input_lengths


def test_registry_names_what_a_component_leaves_unimplemented() -> None:
    registry = Registry()
    registry.register("adapter", "half", target=_HalfAdapter, config=_HalfConfig)
    with pytest.raises(ComponentError, match=r"adapter 'half': _HalfAdapter does not implement forward \(see docs/plugins.md\)"):
        registry.build("adapter", {"name": "half"}, input_dim=4, backbone=BackboneInfo(8, 2, 10, 9, 0))
