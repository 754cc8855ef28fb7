"""Issue 25, item 2 (rest): a GGUF backbone is shape-checked against the GGUF file's tensor
headers, and a component given as a Hub id gets the same parameter budget (from its files' sizes,
before download or from its cached snapshot offline) and safetensors-header check as a local one,
before anything is allocated; each refusal is one line through the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from swv.core.errors import InputError

COMMIT = "c" * 40
#: Peak-memory growth allowed while a tampered model is refused (the huge config would need gigabytes).
MAX_RSS_GROWTH_MB = 500


@pytest.fixture(scope="module")
def saved(bundled_model: Path) -> Path:
    """conftest's ``bundled_model``."""
    return bundled_model


def edit_config(model: Path, change) -> None:
    config = json.loads((model / "swv_config.json").read_text())
    change(config)
    for name in ("swv_config.json", "config.json"):
        (model / name).write_text(json.dumps(config))


_CLI_PROBE = """
import json, resource, sys
import swv.model.speechlm  # torch and transformers imported before the baseline
from swv.cli.main import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
print(json.dumps({"code": code, "grown_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""


def run_cli_probe(*args: object, env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """``swv <args>`` in a fresh process: exit code, peak-memory growth (MB) during the command, stderr."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "SWV_DEBUG": "0", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", _CLI_PROBE, *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], result["grown_mb"], proc.stderr


# -- GGUF backbones: the file's tensor headers ------------------------------------------------
def _permute_for_gguf(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows with the rotary halves interleaved per head."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(checkpoint: Path, target: Path, **metadata: int) -> Path:
    """A float32 llama GGUF of ``checkpoint``'s weights whose metadata (the config transformers
    builds from) says ``metadata`` (``feed_forward_length``, ``block_count``) instead of the truth."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    cfg = model.config
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(metadata.get("block_count", cfg.num_hidden_layers))
    writer.add_feed_forward_length(metadata.get("feed_forward_length", cfg.intermediate_size))
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        module, suffix = hf_name.rsplit(".", 1)
        weight = tensor.detach().float().numpy()
        if module.endswith("q_proj"):
            weight = _permute_for_gguf(weight, cfg.num_attention_heads)
        elif module.endswith("k_proj"):
            weight = _permute_for_gguf(weight, cfg.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def gguf_model(saved: Path, tmp_path: Path, **metadata: int) -> Path:
    """A copy of ``saved`` whose backbone is ``backbone/model.gguf`` (the tokenizer from ``backbone/``)."""
    model = tmp_path / "model"
    shutil.copytree(saved, model)
    write_gguf(saved / "backbone", model / "backbone" / "model.gguf", **metadata)
    edit_config(model, lambda c: c["backbone"].update(path="backbone", gguf_file="model.gguf", tokenizer="backbone"))
    return model


def test_gguf_metadata_disagreeing_with_its_tensors_is_one_line(saved: Path, tmp_path: Path) -> None:
    from swv.model.speechlm import SpeechLM

    model = gguf_model(saved, tmp_path, feed_forward_length=96)
    with pytest.raises(InputError) as info:
        SpeechLM.from_pretrained(model)
    message = str(info.value)
    assert "\n" not in message
    assert "mlp.gate_proj.weight" in message and "(96, 32)" in message and "(64, 32)" in message, message
    assert "backbone.gguf_file" in message and "model.gguf" in message, message


def test_gguf_backbone_through_the_cli_is_one_line(cli, saved: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = gguf_model(saved, tmp_path, feed_forward_length=96)
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert "(96, 32)" in line and "model.gguf" in line, line


def test_gguf_claiming_100000_layers_is_refused_before_allocating(saved: Path, clip: Path, tmp_path: Path, one_error) -> None:
    model = gguf_model(saved, tmp_path, block_count=100_000)
    code, grown_mb, err = run_cli_probe("infer", model, clip, "--max-new-tokens", 1)
    line = one_error(code, err)
    assert "more than its" in line and "bytes of weight files can hold" in line, line
    assert grown_mb < MAX_RSS_GROWTH_MB, (grown_mb, line)


def test_matching_gguf_backbone_loads(saved: Path, tmp_path: Path) -> None:
    from swv.model.speechlm import SpeechLM

    model = SpeechLM.from_pretrained(gguf_model(saved, tmp_path))
    reference = SpeechLM.from_pretrained(saved)
    name = "model.layers.0.mlp.gate_proj.weight"
    assert torch.equal(model.backbone.hf_model.state_dict()[name], reference.backbone.hf_model.state_dict()[name])


def test_gguf_header_names_follow_transformers(saved: Path, tmp_path: Path) -> None:
    """The header's shapes under transformers' parameter names, without reading tensor data."""
    from transformers import AutoModelForCausalLM

    from swv.backbones.gguf_header import gguf_shapes

    file = write_gguf(saved / "backbone", tmp_path / "model.gguf")
    model = AutoModelForCausalLM.from_pretrained(saved / "backbone")
    shapes = gguf_shapes(file, model)
    assert shapes is not None
    assert {name: shape for name, (shape, _) in shapes.items()} == {
        name: tuple(p.shape) for name, p in model.state_dict().items()}
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 8)
    with pytest.raises(InputError, match="broken.gguf: not a readable GGUF file"):
        gguf_shapes(tmp_path / "broken.gguf", model)


# -- Hub-id components: budget and header check from the snapshot -----------------------------
def add_snapshot(cache: Path, repo_id: str, source: Path, commit: str) -> Path:
    """``source``'s files laid out as huggingface_hub caches commit ``commit`` of ``repo_id`` (``main``)."""
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
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def hub_backbone_model(saved: Path, tmp_path: Path, change=None) -> tuple[Path, Path]:
    """(a copy of ``saved`` whose backbone is the Hub id ``org/tiny-llama``, the Hugging Face cache
    holding that id's snapshot: ``saved``'s backbone, its config.json changed by ``change``)."""
    backbone = tmp_path / "llama"
    shutil.copytree(saved / "backbone", backbone)
    if change is not None:
        config = json.loads((backbone / "config.json").read_text())
        change(config)
        (backbone / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/tiny-llama", backbone, COMMIT)
    model = tmp_path / "model"
    shutil.copytree(saved, model)
    shutil.rmtree(model / "backbone")
    edit_config(model, lambda c: (c["backbone"].update(path="org/tiny-llama"), c.update(bundled=["encoder"])))
    return model, cache


@pytest.fixture
def hub_cache_at(monkeypatch: pytest.MonkeyPatch):
    """``use(cache)``: huggingface_hub (offline, conftest) reads its cache from ``cache`` in this process."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    return lambda cache: monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_hub_backbone_claiming_100000_layers_is_refused_before_allocating(saved: Path, clip: Path,
                                                                           tmp_path: Path, one_error) -> None:
    model, cache = hub_backbone_model(saved, tmp_path, lambda c: c.update(num_hidden_layers=100_000))
    code, grown_mb, err = run_cli_probe("infer", model, clip, "--max-new-tokens", 1, env={"HF_HUB_CACHE": str(cache)})
    line = one_error(code, err)
    assert "backbone" in line and "bytes of weight files can hold" in line, line
    assert grown_mb < MAX_RSS_GROWTH_MB, (grown_mb, line)


def test_hub_backbone_shapes_are_checked_against_the_snapshot(saved: Path, tmp_path: Path, hub_cache_at) -> None:
    from swv.model.speechlm import SpeechLM

    model, cache = hub_backbone_model(saved, tmp_path, lambda c: c.update(intermediate_size=96))
    hub_cache_at(cache)
    with pytest.raises(InputError) as info:
        SpeechLM.from_pretrained(model)
    message = str(info.value)
    assert "\n" not in message and "(96, 32)" in message and COMMIT in message, message


def test_hub_backbone_within_its_budget_loads(saved: Path, tmp_path: Path, hub_cache_at) -> None:
    from swv.model.directory import _weight_bytes, read_saved_config
    from swv.model.speechlm import SpeechLM
    from swv.registry.plugins import default_registry

    model, cache = hub_backbone_model(saved, tmp_path)
    hub_cache_at(cache)
    directory, data = read_saved_config(model, None, default_registry(), False)
    hub_file = cache / "models--org--tiny-llama" / "snapshots" / COMMIT / "model.safetensors"
    local = sum(f.stat().st_size for f in model.rglob("*.safetensors"))
    assert _weight_bytes(directory, data) == local + hub_file.stat().st_size
    loaded = SpeechLM.from_pretrained(model)
    assert loaded.backbone.hub_commit == COMMIT


def test_hub_weight_bytes_before_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Online, the sizes come from huggingface_hub's dry run (nothing downloaded); with no
    connection (its DryRunError), from the cached snapshot; an unknown repository gives None."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import DryRunError
    from huggingface_hub.file_download import DryRunFileInfo

    from swv.core.hub import hub_weight_bytes

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls: list[dict] = []

    def listing(**kwargs):
        calls.append(kwargs)
        if kwargs["repo_id"] == "org/absent":
            raise OSError("404 Client Error: Repository Not Found")
        if kwargs["repo_id"] == "org/offline" and kwargs.get("dry_run"):
            raise DryRunError("no connection")
        if not kwargs.get("dry_run"):
            return str(snapshot)
        return [DryRunFileInfo(commit_hash=COMMIT, file_size=size, filename=name, local_path="", is_cached=False,
                               will_download=True) for name, size in (("model.safetensors", 1000), ("pytorch_model.bin", 24))]

    source = tmp_path / "src"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"x" * 300)
    (source / "config.json").write_text("{}")
    snapshot = add_snapshot(tmp_path / "hub", "org/offline", source, COMMIT)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", listing)
    assert hub_weight_bytes("org/online", "v1", ["*.safetensors", "*.bin"]) == 1024
    assert calls[0]["dry_run"] is True and calls[0]["revision"] == "v1"
    assert calls[0]["allow_patterns"] == ["*.safetensors", "*.bin"]
    assert hub_weight_bytes("org/offline", None, ["*.safetensors"]) == 300
    assert calls[-1]["local_files_only"] is True
    assert hub_weight_bytes("org/absent", None, ["*.safetensors"]) is None


def test_hub_encoder_claiming_100000_layers_is_refused_by_the_budget(saved: Path, tmp_path: Path,
                                                                      hub_cache_at) -> None:
    from swv.model.speechlm import SpeechLM

    encoder = tmp_path / "whisper"
    shutil.copytree(saved / "encoder", encoder)
    config = json.loads((encoder / "config.json").read_text())
    config.update(encoder_layers=100_000)
    (encoder / "config.json").write_text(json.dumps(config))
    add_snapshot(tmp_path / "hub", "org/tiny-whisper", encoder, COMMIT)
    hub_cache_at(tmp_path / "hub")
    model = tmp_path / "model"
    shutil.copytree(saved, model)
    shutil.rmtree(model / "encoder")
    edit_config(model, lambda c: (c["encoder"].update(path="org/tiny-whisper"), c.update(bundled=["backbone"])))
    with pytest.raises(InputError, match="encoder 'whisper' builds over .* bytes of weight files can hold"):
        SpeechLM.from_pretrained(model)
