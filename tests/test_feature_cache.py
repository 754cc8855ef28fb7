"""The frozen-encoder feature cache: built once, used when valid, ignored when stale, and
numerically equivalent to running the encoder (float16 storage: losses agree to ~1e-3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from swv.data.feature_cache import FeatureCache, build_cache, encoder_identity
from swv.recipes.loader import load_recipe
from swv.registry.plugins import default_registry
from swv.train.runner import build_model
from swv.train.train_recipe import cache_stage_features


def _loaded(tmp_path: Path, *extra: str):
    return load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", *extra], default_registry())


def test_cache_used_when_valid_and_same_loss(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    target, new, old = cache_stage_features(loaded, "alignment", batch_size=16)
    assert (new, old) == (120, 0)  # 96 training + 24 held-out clips
    assert cache_stage_features(loaded, "alignment", batch_size=16)[1:] == (0, 120)

    model = build_model(loaded, None).eval()
    cache = FeatureCache.open(target, model.encoder)
    assert cache is not None and len(cache) == 120
    from swv.data.stage_data import load_stage_data

    data = load_stage_data(loaded.recipe.data, ["asr"], "test")
    rows = data.rows(list(range(6)))
    paths = [r["audio"] for r in rows]
    cached, cached_len, cached_speech = cache.lookup(paths)
    from swv.core.audio import load_audio

    feats, flen = model.encoder.extract_features([load_audio(p, 16000) for p in paths])
    live = model.encoder(feats, flen)
    assert torch.equal(cached_len, live.lengths) and torch.equal(cached_speech, live.speech_lengths)
    valid = live.padding_mask()
    assert torch.allclose(cached[valid], live.embeds[:, : cached.shape[1]][valid], atol=2e-3, rtol=1e-3)
    targets = model.tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]
    ctc_t = torch.zeros(6, max(map(len, targets)), dtype=torch.long)
    for i, t in enumerate(targets):
        ctc_t[i, : len(t)] = torch.tensor(t)
    kw = dict(ctc_targets=ctc_t, ctc_target_lengths=torch.tensor([len(t) for t in targets]), stop_after_ctc=True)
    with torch.no_grad():
        a = model(input_features=feats, feature_lengths=flen, **kw).ctc_loss
        b = model(encoder_embeds=cached, encoder_lengths=cached_len, **kw).ctc_loss
    assert torch.allclose(a, b, rtol=1e-3), (a, b)


def test_training_reads_the_cache(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    cache_stage_features(loaded, "alignment", batch_size=16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    res = subprocess.run([sys.executable, "-m", "swv.cli", "train", "--recipe", "tiny", f"output_dir={tmp_path / 'run'}",
                          "--stage", "alignment", "stages.0.max_steps=3"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "using the feature cache" in res.stdout and "(120 clips" in res.stdout
    res = subprocess.run([sys.executable, "-m", "swv.cli", "train", "--recipe", "tiny", f"output_dir={tmp_path / 'run2'}",
                          f"data.feature_cache={tmp_path / 'run' / 'feature_cache'}", "data.use_feature_cache=false",
                          "--stage", "alignment", "stages.0.max_steps=3"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "using the feature cache" not in res.stdout


def test_stale_cache_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    target, _, _ = cache_stage_features(loaded, "alignment", batch_size=16)
    other = build_model(_loaded(tmp_path, "model.encoder.mode=pad_to_30s"), None)
    assert encoder_identity(other.encoder) != json.loads((target / "index.json").read_text())["identity"]
    assert FeatureCache.open(target, other.encoder) is None
    reseeded = build_model(_loaded(tmp_path, "seed=5"), None)  # same settings, other random weights
    assert FeatureCache.open(target, reseeded.encoder) is None
    from swv.assets import asset_path

    paths = [str(p) for p in sorted(asset_path("tiny_speech/audio").glob("train-00*.flac"))][:4]
    new, old = build_cache(target, reseeded.encoder, paths, batch_size=4, progress=False)
    assert (new, old) == (4, 0)
    assert FeatureCache.open(target, reseeded.encoder) is not None
    assert len(list(target.glob("shard-*.safetensors"))) == 1


def test_changed_audio_misses(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    loaded = _loaded(tmp_path)
    model = build_model(loaded, None)
    build_cache(tmp_path / "c", model.encoder, [str(wav)], progress=False)
    cache = FeatureCache.open(tmp_path / "c", model.encoder)
    assert cache is not None and cache.lookup([str(wav)]) is not None
    sf.write(wav, np.ones(8000, dtype=np.float32) * 0.1, 16000)
    os.utime(wav, ns=(1, 1))
    assert cache.lookup([str(wav)]) is None


def test_cached_augment_masks_cached_outputs_per_row_seed(tmp_path: Path) -> None:
    """``data.cached_augment`` masks frames and channels of cached encoder outputs in training
    batches, within each clip's valid frames, the same masks for the same row seed; off by default."""
    from swv.data.collate import AUGMENT_SEED, SpeechCollator
    from swv.data.stage_data import load_stage_data
    from swv.recipes.schema import CachedAugmentSettings

    loaded = _loaded(tmp_path)
    assert not loaded.recipe.data.cached_augment.enabled
    target, _, _ = cache_stage_features(loaded, "alignment", batch_size=16)
    model = build_model(loaded, None).eval()
    cache = FeatureCache.open(target, model.encoder)
    rows = load_stage_data(loaded.recipe.data, ["asr"], "test").rows(list(range(4)))
    rows = [{**r, AUGMENT_SEED: 100 + i} for i, r in enumerate(rows)]
    settings = CachedAugmentSettings(enabled=True, channel_mask_param=8, time_mask_param=3).as_spec_augment()

    def collate(augment):
        return SpeechCollator(model.encoder, model.tokenizer, mode="ctc", feature_cache=cache, cached_augment=augment)(rows)

    plain, masked, again = collate(None), collate(settings), collate(settings)
    embeds, lengths = plain["encoder_embeds"], plain["encoder_lengths"]
    assert torch.equal(masked["encoder_lengths"], lengths)
    assert torch.equal(masked["encoder_embeds"], again["encoder_embeds"])  # seeded per row
    changed = masked["encoder_embeds"] != embeds
    assert changed.any() and (masked["encoder_embeds"][changed] == 0).all()  # masks set values to zero
    for b, n in enumerate(lengths.tolist()):
        assert not changed[b, n:].any()  # padding frames untouched
    rows[0][AUGMENT_SEED] = 7
    assert not torch.equal(collate(settings)["encoder_embeds"][0], masked["encoder_embeds"][0])
