"""Exports as Hugging Face-native models: ``config.json`` for transformers' Auto classes (registered
by ``import swv``), the ``audio-text-to-text`` pipeline task, a LoRA whose base model is the
export's own backbone (loaded with plain PEFT), the model card and ``swv --version``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import swv
from swv.infer.pipeline import Pipeline
from swv.model.speechlm import SpeechLM


def _clip(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def export(lora_export: Path) -> Path:
    return lora_export


def test_config_json_loads_through_auto_classes(export: Path) -> None:
    from transformers import AutoConfig, AutoModel

    hf_config = json.loads((export / "config.json").read_text())
    assert hf_config["model_type"] == "swv_speechlm" and "auto_map" not in hf_config
    assert hf_config == json.loads((export / "swv_config.json").read_text())
    config = AutoConfig.from_pretrained(str(export))
    assert type(config).__name__ == "SpeechLMConfig" and config.adapters[0]["name"] == "alignment"
    model = AutoModel.from_pretrained(str(export))
    assert isinstance(model, SpeechLM)
    reference = SpeechLM.from_pretrained(export)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        got = model.backbone(inputs_embeds=model.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits
        want = reference.backbone(
            inputs_embeds=reference.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)
        ).logits
    assert torch.equal(got, want)


def test_import_swv_registers_without_importing_transformers() -> None:
    code = (
        "import sys, swv\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "import transformers\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "print('swv_speechlm' in transformers.CONFIG_MAPPING, 'audio-text-to-text' in PIPELINE_REGISTRY.get_supported_tasks())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["True", "True"]


def test_transformers_pipeline_answers_about_audio(export: Path) -> None:
    import transformers

    pipe = transformers.pipeline("audio-text-to-text", model=str(export), device="cpu")
    assert isinstance(pipe.model, SpeechLM)
    clip, other = _clip(1.0, 0), _clip(0.7, 1)
    swv_pipe = Pipeline.from_pretrained(export)
    want = swv_pipe(clip, prompt="Describe the audio.", sample_rate=16000, max_new_tokens=6)
    assert want  # the random model says something
    out = pipe(clip, sampling_rate=16000, prompt="Describe the audio.", max_new_tokens=6)
    assert out == {"generated_text": want}
    as_dict = pipe({"array": clip, "sampling_rate": 16000, "prompt": "Describe the audio."}, max_new_tokens=6)
    assert as_dict == {"generated_text": want}
    several = pipe([clip, other], sampling_rate=16000, max_new_tokens=6)
    assert [o["generated_text"] for o in several] == swv_pipe([clip, other], sample_rate=16000, max_new_tokens=6)
    with pytest.raises(swv.core.errors.UsageError, match="unknown argument"):
        pipe(clip, sampling_rate=16000, num_beams=2)


def test_lora_records_the_exports_own_backbone_and_loads_with_plain_peft(
    lora_randomiser, model_config_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage I bundles its backbone; Stage II (loaded from it) re-bundles it: its LoRA must name
    ``backbone`` (inside the Stage II export), not Stage I's absolute path."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(4)
    stage1 = SpeechLM(model_config_factory()).save_pretrained(tmp_path / "stage1", bundle=True)
    model = SpeechLM.from_pretrained(stage1)
    assert str(stage1) in model.backbone.hf_model.name_or_path  # what PEFT would record
    lora_randomiser(model, 5)
    stage2 = model.save_pretrained(tmp_path / "stage2")
    adapter_config = json.loads((stage2 / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "backbone"
    assert json.loads((stage2 / "swv_config.json").read_text())["backbone"]["path"] == "backbone"
    shutil.rmtree(stage1)
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    stage2.rename(moved)

    ids = torch.tensor([[3, 9, 4, 12, 5]])
    with torch.no_grad():
        want = model.backbone(inputs_embeds=model.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits
    base = AutoModelForCausalLM.from_pretrained(str(moved / "backbone"))
    peft_model = PeftModel.from_pretrained(base, str(moved)).eval()
    monkeypatch.chdir(moved)  # the recorded base path is relative to the export
    auto_model = AutoPeftModelForCausalLM.from_pretrained(str(moved)).eval()
    with torch.no_grad():
        for got in (peft_model(input_ids=ids).logits, auto_model(input_ids=ids).logits):
            assert got.shape == want.shape  # every row, the added audio token's included
            assert torch.allclose(got, want, atol=1e-5)
    loaded = SpeechLM.from_pretrained(moved)
    with torch.no_grad():
        again = loaded.backbone(inputs_embeds=loaded.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(again, want, atol=1e-5)


def test_referenced_backbone_lora_names_the_backbone_path(export: Path, tiny_llama_dir: Path) -> None:
    adapter_config = json.loads((export / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_llama_dir)
    assert adapter_config["revision"] is None


def test_model_card_describes_the_export(model_config_factory, export: Path, tmp_path: Path) -> None:
    card = (export / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: audio-text-to-text" in card
    assert "Model Card for Model ID" not in card  # not PEFT's stub
    config = json.loads((export / "swv_config.json").read_text())
    assert config["encoder"]["path"] in card and config["backbone"]["path"] in card
    assert "`alignment` -> `shrinking`" in card and "LoRA r=4, alpha=8" in card
    assert "Not recorded" in card and 'transformers.pipeline("audio-text-to-text"' in card
    model = SpeechLM.from_pretrained(export)
    model.config.training = [{"stage": "sft", "kind": "sft", "recipe": "tiny.yaml", "steps": 12,
                              "datasets": {"asr": "data/asr.jsonl"}, "metrics": {"eval_loss": 1.23456}}]
    card = (model.save_pretrained(tmp_path / "trained") / "README.md").read_text()
    assert "| sft | sft | tiny.yaml | 12 | `asr` (data/asr.jsonl) | eval_loss 1.235 |" in card


def test_swv_version() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    res = subprocess.run([sys.executable, "-m", "swv.cli", "--version"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout == f"swv {swv.__version__}\n"
    from importlib.metadata import version

    assert swv.__version__ == version("swv")

