"""Hub ids with revisions, offline, through huggingface_hub's own resolution code.

A local Hugging Face cache is laid out as huggingface_hub lays it out
(``models--org--name/{blobs,snapshots/<commit>,refs/<branch or tag>}``, snapshot files
symlinked to blobs) in a temporary directory; huggingface_hub runs offline (``HF_HUB_OFFLINE=1``,
set by conftest) on it: in process through its ``HF_HUB_CACHE`` setting, in the CLI tests through
the environment variable."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from swv.core.errors import InputError, UsageError
from swv.infer.pipeline import Pipeline
from swv.model.speechlm import SpeechLM, SpeechLMConfig

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def add_snapshot(cache: Path, repo_id: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Put ``source``'s files in ``cache`` as commit ``commit`` of ``repo_id`` and point ``refs`` at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest: no network
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _with_lora(config: SpeechLMConfig, seed: int) -> SpeechLM:
    torch.manual_seed(seed)
    model = SpeechLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    return model


def _clip(seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(16000)).astype(np.float32)


def _lora_state(model: SpeechLM) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.backbone.state_dict().items() if "lora_" in k}


@pytest.fixture(scope="module")
def two_versions(model_config_factory, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two self-contained exports of one model that differ in their LoRA."""
    root = tmp_path_factory.mktemp("versions")
    old = _with_lora(model_config_factory(), 1).save_pretrained(root / "old", bundle=True)
    new = _with_lora(model_config_factory(), 2).save_pretrained(root / "new", bundle=True)
    return old, new


def test_whole_model_by_hub_id_and_revision(hub_cache: Path, two_versions: tuple[Path, Path]) -> None:
    old, new = two_versions
    add_snapshot(hub_cache, "org/tiny", old, COMMIT_B, refs=("v1",))
    add_snapshot(hub_cache, "org/tiny", new, COMMIT_A)
    local_new, local_old = SpeechLM.from_pretrained(new), SpeechLM.from_pretrained(old)
    cases = {None: local_new, "main": local_new, "v1": local_old, COMMIT_B: local_old, COMMIT_A: local_new}
    for revision, expected in cases.items():
        model = SpeechLM.from_pretrained("org/tiny", revision=revision)
        got, want = _lora_state(model), _lora_state(expected)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), revision
    assert not torch.equal(*(next(iter(_lora_state(m).values())) for m in (local_new, local_old)))

    clip = _clip()
    answer = Pipeline.from_pretrained("org/tiny", revision="v1")(clip, sample_rate=16000, max_new_tokens=6)
    assert answer == Pipeline.from_pretrained(old)(clip, sample_rate=16000, max_new_tokens=6)

    with pytest.raises(InputError, match=r"org/tiny .*revision nope"):
        SpeechLM.from_pretrained("org/tiny", revision="nope")
    with pytest.raises(InputError, match="org/absent"):
        Pipeline.from_pretrained("org/absent")
    with pytest.raises(UsageError, match="applies to Hub ids only"):
        SpeechLM.from_pretrained(new, revision="main")


def test_component_revisions_are_pinned_in_the_export(
    hub_cache: Path, tiny_whisper_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from transformers import LlamaForCausalLM

    add_snapshot(hub_cache, "org/whisper", tiny_whisper_dir, COMMIT_A)
    add_snapshot(hub_cache, "org/llama", tiny_llama_dir, COMMIT_A, refs=("main", "stable"))
    config = SpeechLMConfig(
        encoder={"name": "whisper", "path": "org/whisper", "mode": "trim"},
        adapters=[{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}],
        backbone={"name": "llama", "path": "org/llama", "revision": "stable", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    )
    model = _with_lora(config, 3)
    assert model.encoder.hub_commit == COMMIT_A and model.backbone.hub_commit == COMMIT_A
    export = model.save_pretrained(tmp_path / "export")
    saved = json.loads((export / "swv_config.json").read_text())
    assert saved["encoder"]["path"] == "org/whisper" and saved["encoder"]["revision"] == COMMIT_A
    assert saved["backbone"]["path"] == "org/llama" and saved["backbone"]["revision"] == COMMIT_A
    adapter_config = json.loads((export / "adapter_config.json").read_text())
    assert (adapter_config["base_model_name_or_path"], adapter_config["revision"]) == ("org/llama", COMMIT_A)
    card = (export / "README.md").read_text()
    assert f"`org/llama` at revision `{COMMIT_A}`" in card and 'base_model: "org/llama"' in card
    assert f'from_pretrained("org/llama", revision="{COMMIT_A}")' in card

    # the Hub moves on: main and stable now point at other weights; the export keeps its pin
    changed = tmp_path / "llama-changed"
    torch.manual_seed(9)
    base = LlamaForCausalLM.from_pretrained(str(tiny_llama_dir))
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    base.save_pretrained(changed)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (changed / name).write_bytes((tiny_llama_dir / name).read_bytes())
    add_snapshot(hub_cache, "org/llama", changed, COMMIT_B, refs=("main", "stable"))
    ids = torch.tensor([[3, 4, 5, 6]])

    def logits(m: SpeechLM) -> torch.Tensor:
        with torch.no_grad():
            return m.backbone(inputs_embeds=m.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits

    reloaded = SpeechLM.from_pretrained(export)
    assert reloaded.backbone.hub_commit == COMMIT_A
    assert torch.allclose(logits(reloaded), logits(model), atol=1e-6)
    moved_on = SpeechLM(SpeechLMConfig(**{**config.to_dict(), "model_type": None}))
    assert moved_on.backbone.hub_commit == COMMIT_B and not torch.allclose(logits(moved_on.eval()), logits(model))

    with pytest.raises(InputError, match=r"backbone\.path: org/llama .*revision v9"):
        SpeechLM(SpeechLMConfig(**{**config.to_dict(), "model_type": None, "backbone": {
            "name": "llama", "path": "org/llama", "revision": "v9"}}))


def _cli(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWV_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), SWV_DISABLE_PLUGIN_AUTOLOAD="1")
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_infer_and_eval_take_a_hub_id(two_versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = two_versions
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/tiny", old, COMMIT_B, refs=("v1",))
    add_snapshot(cache, "org/tiny", new, COMMIT_A)
    clip = _clip(3)
    sf.write(tmp_path / "clip.wav", clip, 16000)
    want = Pipeline.from_pretrained(old)(clip, sample_rate=16000, prompt="Transcribe the speech.", max_new_tokens=5)

    res = _cli("infer", "org/tiny", "clip.wav", "--revision", "v1", "--max-new-tokens", "5", cache=cache, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == want

    (tmp_path / "test.jsonl").write_text(json.dumps({"id": "u1", "audio": "clip.wav", "text": want or "x"}) + "\n")
    res = _cli("eval", "org/tiny", "--manifest", "test.jsonl", "--task", "asr", "--revision", COMMIT_B,
               "--max-new-tokens", "5", "--output-dir", "ev", cache=cache, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    prediction = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()[0])
    assert prediction["prediction"] == want
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["model_dir"].endswith(f"models--org--tiny/snapshots/{COMMIT_B}")
    assert report["model_identity"] == {"repo_id": "org/tiny", "revision": COMMIT_B}
    assert prediction["fingerprint"] == report["fingerprint"]

    res = _cli("infer", "org/tiny", "clip.wav", "--revision", "v2", cache=cache, cwd=tmp_path)
    assert res.returncode != 0 and res.stderr.startswith("error: model: org/tiny is not a local directory")
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("source", ["/" + "x" * 5000, "~no_such_user_swv/model", "/tmp/a\x00b"])
def test_strings_no_path_can_be_are_one_line_errors(source: str) -> None:
    """Found by tests/test_fuzz_formats.py (a component path of 100,000 characters in a model's
    swv_config.json): ENAMETOOLONG from a stat is an InputError, not an OSError."""
    from swv.core.errors import InputError
    from swv.core.hub import resolve_dir, resolve_model

    for call in (lambda: resolve_dir(source, "backbone.path"), lambda: resolve_model(source)):
        with pytest.raises(InputError) as caught:
            call()
        assert "\n" not in str(caught.value)
