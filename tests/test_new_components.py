"""The ``qformer`` adapter and the ``ssl`` encoder: shapes and lengths against real outputs,
padding, loading tiny transformers checkpoints saved locally, and a recipe using both through
``swv train`` (all three stage kinds), ``swv infer``, ``swv export`` and a reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForPreTraining,
    WavLMConfig,
    WavLMModel,
)

from swv.assets import asset_path
from swv.core.errors import ComponentError, InputError
from swv.data.collate import SpecAugment
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState
from swv.recipes.schema import SpecAugmentSettings
from swv.registry.plugins import load_plugins

HIDDEN, HEADS, VOCAB = 16, 2, 20
#: A tiny wav2vec2-style stack with the real 320-sample hop (50 frames per second at 16 kHz).
CONV = dict(conv_dim=[8] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, **CONV)
WAVLM = dict(TINY, feat_extract_norm="layer", num_buckets=16, max_bucket_distance=40)


@pytest.fixture(scope="module")
def registry():
    return load_plugins(autoload=False).registry


def qformer(registry, **args):
    torch.manual_seed(0)
    ref = {"name": "qformer", "window_frames": 4, "num_queries": 2, "hidden_size": 8, "num_heads": 2, "dropout": 0.0, **args}
    return registry.build("adapter", ref, input_dim=6, backbone=BackboneInfo(HIDDEN, HEADS, VOCAB, VOCAB - 1, 0)).eval()


# ---------------------------------------------------------------------------------------------
# qformer
# ---------------------------------------------------------------------------------------------
def test_qformer_lengths_shapes_and_padding_invariance(registry) -> None:
    ad = qformer(registry)
    embeds = torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([10, 7, 3])
    out = ad(AudioState(embeds, lengths))
    expected = [-(-n // 4) * 2 for n in (10, 7, 3)]  # ceil(len / window) * queries
    assert out.lengths.tolist() == ad.output_lengths(lengths).tolist() == expected
    assert out.speech_lengths.tolist() == expected
    assert out.embeds.shape == (3, 6, HIDDEN) and torch.isfinite(out.embeds).all()
    # a row alone, without the batch's padding, gives the same valid outputs
    alone = ad(AudioState(embeds[1:2, :7], torch.tensor([7])))
    assert torch.allclose(out.embeds[1, :4], alone.embeds[0], atol=1e-5)
    # changing padding frames (including those of a partial last window) changes nothing valid
    noisy = embeds.clone()
    noisy[1, 7:] = 100.0
    noisy[2, 3:] = -50.0
    again = ad(AudioState(noisy, lengths))
    for row, n in enumerate(expected):
        assert torch.allclose(again.embeds[row, :n], out.embeds[row, :n], atol=1e-5)


def test_qformer_windows_stay_inside_encoder_windows(registry) -> None:
    """A long clip's encoder windows (``window_frames`` 5) are cut into Q-Former windows on their
    own: a full encoder window gives ``output_lengths(5)`` frames, as the core assumes."""
    ad = qformer(registry)
    embeds = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(1))
    out = ad(AudioState(embeds, torch.tensor([10, 7]), window_frames=5))
    per_window = int(ad.output_lengths(torch.tensor([5])).item())
    assert per_window == 4 and out.lengths.tolist() == [8, 4 + 2]
    first = ad(AudioState(embeds[:1, :5], torch.tensor([5])))
    second = ad(AudioState(embeds[:1, 5:], torch.tensor([5])))
    assert torch.allclose(out.embeds[0], torch.cat([first.embeds[0], second.embeds[0]]), atol=1e-5)


def test_qformer_trains_and_checks_its_config(registry) -> None:
    ad = qformer(registry, num_layers=1).train()
    embeds = torch.randn(2, 9, 6, requires_grad=True)
    out = ad(AudioState(embeds, torch.tensor([9, 2])))
    out.embeds[0, : int(out.lengths[0])].sum().backward()
    assert ad.queries.grad is not None and ad.queries.grad.abs().sum() > 0
    assert torch.isfinite(embeds.grad).all() and embeds.grad[1].abs().sum() == 0  # rows stay apart
    with pytest.raises(ValidationError, match="hidden_size 10 is not a multiple of num_heads 4"):
        qformer(registry, hidden_size=10, num_heads=4)


# ---------------------------------------------------------------------------------------------
# ssl
# ---------------------------------------------------------------------------------------------
def _clips(*seconds: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(s * 16000)).astype(np.float32) * 0.1 for s in seconds]


@pytest.fixture(scope="module")
def ssl_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """wav2vec2-base style (group norm, pre-training checkpoint with ``wav2vec2.`` keys and no
    attention mask), HuBERT (layer norm) and WavLM base models, each with its feature extractor."""
    root = tmp_path_factory.mktemp("ssl")
    torch.manual_seed(0)
    models = {
        "wav2vec2": (Wav2Vec2ForPreTraining(Wav2Vec2Config(**TINY, proj_codevector_dim=8, codevector_dim=8)), False),
        "hubert": (HubertModel(HubertConfig(**TINY, feat_extract_norm="layer")), True),
        "wavlm": (WavLMModel(WavLMConfig(**WAVLM)), True),
    }
    dirs = {}
    for name, (model, mask) in models.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        Wav2Vec2FeatureExtractor(return_attention_mask=mask).save_pretrained(dirs[name])
    return dirs


def _reference(directory: Path, layer: int, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    model = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(values, attention_mask=mask, output_hidden_states=True).hidden_states[layer]


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "wavlm"])
def test_ssl_loads_checkpoints_like_transformers(registry, ssl_dirs, name: str) -> None:
    encoder = registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs[name]), "layer": 1})
    assert encoder.frozen and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.sample_rate == 16000 and encoder.output_dim == 16 and encoder.layer == 1
    assert encoder.uses_attention_mask == (name != "wav2vec2")
    features, lengths = encoder.extract_features(_clips(1.0, 0.5))
    assert features.shape == (2, 16000) and lengths.tolist() == [16000, 8000]
    state = encoder(features, lengths)
    assert state.lengths.tolist() == encoder.output_lengths(lengths).tolist() == [49, 24]
    assert state.embeds.shape == (2, 49, 16)
    mask = None if name == "wav2vec2" else (torch.arange(16000)[None] < lengths[:, None]).long()
    assert torch.allclose(state.embeds, _reference(ssl_dirs[name], 1, features, mask), atol=1e-5)


def test_ssl_attention_mask_follows_feat_extract_norm(registry, ssl_dirs) -> None:
    group = registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs["wav2vec2"])})
    assert not group.uses_attention_mask  # wav2vec2-base style: transformers says pass no mask
    for name in ("hubert", "wavlm"):
        encoder = registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs[name])})
        assert encoder.uses_attention_mask
        clips = _clips(1.0, 0.43, seed=3)
        batch = encoder(*encoder.extract_features(clips))
        alone = encoder(*encoder.extract_features(clips[1:]))
        n = int(alone.lengths[0])
        assert int(batch.lengths[1]) == n and torch.allclose(batch.embeds[1, :n], alone.embeds[0], atol=1e-5)


@pytest.mark.parametrize("layer", [0, -1, 2])
def test_ssl_layer_choice(registry, ssl_dirs, layer: int) -> None:
    encoder = registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs["hubert"]), "layer": layer})
    features, lengths = encoder.extract_features(_clips(0.6))
    expected = _reference(ssl_dirs["hubert"], layer, features, torch.ones_like(features, dtype=torch.long))
    assert torch.allclose(encoder(features, lengths).embeds, expected, atol=1e-5)
    with pytest.raises(ComponentError, match="encoder.layer: 3 is out of range for a 2-layer encoder"):
        registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs["hubert"]), "layer": 3})


def test_ssl_random_init_bundles_and_legacy_weight_norm_keys(registry, ssl_dirs, tmp_path: Path) -> None:
    encoder = registry.build("encoder", {"name": "ssl", "random_init": {"model_type": "wavlm", **WAVLM}})
    assert encoder.needs_bundle and encoder.uses_attention_mask
    encoder.save_pretrained(tmp_path / "copy")
    copy = registry.build("encoder", {"name": "ssl", **encoder.bundled_config(str(tmp_path / "copy"))})
    features, lengths = encoder.extract_features(_clips(0.7))
    assert torch.equal(encoder(features, lengths).embeds, copy(features, lengths).embeds)
    # checkpoints saved before torch parametrisations store the weight norm as weight_g / weight_v
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for file in ("config.json", "preprocessor_config.json"):
        (legacy / file).write_text((ssl_dirs["hubert"] / file).read_text())
    state = load_file(str(ssl_dirs["hubert"] / "model.safetensors"))
    legacy_names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    renamed = {}
    for key, value in state.items():
        for new, old in legacy_names.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert renamed.keys() != state.keys()
    save_file(renamed, str(legacy / "model.safetensors"))
    old = registry.build("encoder", {"name": "ssl", "path": str(legacy)})
    new = registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs["hubert"])})
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True))


def test_ssl_errors(registry, ssl_dirs, tmp_path: Path, tiny_whisper_dir: Path) -> None:
    with pytest.raises(ComponentError, match="no convolutional feature encoder"):
        registry.build("encoder", {"name": "ssl", "path": str(tiny_whisper_dir)})
    with pytest.raises(ValidationError, match="needs a 'model_type'"):
        registry.build("encoder", {"name": "ssl", "random_init": {"hidden_size": 16}})
    with pytest.raises(ComponentError, match="unknown transformers model_type 'nope'"):
        registry.build("encoder", {"name": "ssl", "random_init": {"model_type": "nope"}})
    with pytest.raises(ComponentError, match="unknown HubertConfig field"):
        registry.build("encoder", {"name": "ssl", "random_init": {"model_type": "hubert", "hiden_size": 8}})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((ssl_dirs["hubert"] / "config.json").read_text())
    state = load_file(str(ssl_dirs["hubert"] / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("encoder.layers.1.")}, str(broken / "model.safetensors"))
    with pytest.raises(InputError, match="checkpoint is missing speech encoder weight"):
        registry.build("encoder", {"name": "ssl", "path": str(broken)})
    encoder = registry.build("encoder", {"name": "ssl", "path": str(ssl_dirs["hubert"])})
    with pytest.raises(InputError, match="waveform 1: 300 samples is too short; the ssl encoder needs at least 400"):
        encoder.extract_features([np.zeros(800, np.float32), np.zeros(300, np.float32)])
    features, lengths = encoder.extract_features(_clips(0.5))
    settings = SpecAugmentSettings(enabled=True, freq_mask_param=2, time_mask_param=2)
    with pytest.raises(InputError, match="data.spec_augment: .* set data.spec_augment.enabled: false"):
        SpecAugment(settings, encoder.feature_time_axis)(features, lengths)


# ---------------------------------------------------------------------------------------------
# end to end: both in one recipe, through the CLI
# ---------------------------------------------------------------------------------------------
RECIPE = {
    "output_dir": "run",
    "seed": 0,
    "precision": "no",
    "model": {
        "encoder": {"name": "ssl", "layer": -1, "random_init": {"model_type": "wavlm", **WAVLM}},
        "adapters": [
            {"name": "utterance"},
            {"name": "alignment", "stack": 2, "ctc_head_trainable": True, "dropout": 0.0},
            {"name": "qformer", "window_frames": 5, "num_queries": 2, "hidden_size": 16, "num_heads": 2, "num_layers": 1},
        ],
        "backbone": {
            "name": "llama",
            "tokenizer": "asset:tiny_tokenizer",
            "random_init": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "max_position_embeddings": 1024},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        },
    },
    "data": {"datasets": {
        "asr": {"manifest": "asset:tiny_speech/train_asr.jsonl", "task": "asr", "max_samples": 8},
        "sft": {"manifest": "asset:tiny_speech/train_sft.jsonl", "max_samples": 8},
    }, "spec_augment": {"enabled": False}},  # the ssl encoder's input is the waveform
    "stages": [
        {"name": "alignment", "kind": "alignment", "trainable": ["adapters.alignment"], "losses": {"ctc": 1.0},
         "optimizer": {"lr": 1.0e-3}, "batch_size": 4, "max_steps": 2, "data": {"datasets": ["asr"]}},
        {"name": "shrinking", "kind": "shrinking",
         "trainable": ["adapters.utterance", "adapters.alignment", "adapters.qformer", "lora"],
         "losses": {"lm": 1.0, "ctc": 0.3}, "optimizer": {"lr": 1.0e-3}, "batch_size": 4, "max_steps": 2,
         "data": {"datasets": ["asr"]}},
        {"name": "sft", "kind": "sft", "trainable": ["adapters.utterance", "adapters.qformer", "lora"], "losses": {"lm": 1.0},
         "optimizer": {"lr": 1.0e-3}, "batch_size": 4, "max_steps": 2, "data": {"datasets": ["sft"]}},
    ],
}


def swv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    env["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_ssl_and_qformer_train_export_reload_infer(registry, tmp_path: Path) -> None:
    from swv.model.speechlm import SpeechLM

    (tmp_path / "new.yaml").write_text(json.dumps(RECIPE))  # JSON is YAML
    res = swv("train", "--recipe", "new.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("alignment", "shrinking", "sft"):
        assert json.loads((tmp_path / "run" / stage / "stage.json").read_text())["done"] is True
    export = tmp_path / "run" / "sft" / "export"
    config = json.loads((export / "swv_config.json").read_text())
    assert "encoder" in config["bundled"] and config["encoder"]["name"] == "ssl" and config["encoder"]["path"] == "encoder"
    assert [a["name"] for a in config["adapters"]] == ["utterance", "alignment", "qformer"]
    # Stage II trained the Q-Former and the utterance vector, Stage III trained them further
    stage3 = {}
    for name in ("qformer", "utterance"):
        q2 = load_file(str(tmp_path / "run" / "shrinking" / "export" / "adapters" / f"{name}.safetensors"))
        stage3[name] = load_file(str(export / "adapters" / f"{name}.safetensors"))
        assert any(not torch.equal(q2[k], stage3[name][k]) for k in q2), name
    q3, utterance = stage3["qformer"], stage3["utterance"]
    # the utterance adapter's running statistics travel with its weights
    assert int(utterance["norm.num_batches_tracked"]) == 4
    assert not torch.equal(utterance["norm.running_var"], torch.ones_like(utterance["norm.running_var"]))

    audio = str(asset_path("tiny_speech/audio/train-000.flac"))
    infer = swv("infer", str(export), audio, "--max-new-tokens", "3", cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-3000:]
    res = swv("export", "run", "exported", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    model = SpeechLM.from_pretrained(tmp_path / "exported", registry=registry)
    assert type(model.encoder).__name__ == "SSLEncoder" and model.encoder.checkpoint_dir is not None
    adapter = model.adapters["qformer"].state_dict()
    assert all(torch.equal(adapter[k], v) for k, v in q3.items())
    bundled = load_file(str(export / "encoder" / "model.safetensors"))
    encoder = model.encoder.model.state_dict()
    assert all(torch.equal(encoder[k], v) for k, v in bundled.items())
