"""Whisper ``pad_to_30s``: the padded tail of the 30 s window counts as valid output (released
behaviour), but under ``compat: paper`` neither the alignment layer's self-attention nor the
shrinking cross-attention attends to it; ``compat: released`` keeps attending to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState
from swv.nn.vocab_logits import VocabLogits
from swv.registry.plugins import load_plugins

HIDDEN, HEADS, VOCAB, BLANK = 16, 2, 20, 19
TINY_WHISPER = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80,
                    max_source_positions=1500, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                    vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


@pytest.fixture(scope="module")
def registry():
    return load_plugins(autoload=False).registry


@pytest.fixture()
def info() -> BackboneInfo:
    lm_head = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(1))
    return BackboneInfo(HIDDEN, HEADS, VOCAB, BLANK, 0, output_embedding=lambda: lm_head)


def build(registry, info, ref, input_dim):
    torch.manual_seed(0)
    return registry.build("adapter", ref, input_dim=input_dim, backbone=info).eval()


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def test_pad_to_30s_reports_the_frames_that_hold_audio(registry) -> None:
    encoder = registry.build("encoder", {"name": "whisper", "mode": "pad_to_30s", "random_init": TINY_WHISPER})
    feats, lengths = encoder.extract_features([tone(1.0), tone(2.5)])
    state = encoder(feats, lengths)
    assert state.lengths.tolist() == [1500, 1500]  # released: the padded window is valid
    assert state.speech_lengths.tolist() == [50, 125]
    assert state.speech_mask().sum(dim=1).tolist() == [50, 125]
    trim = registry.build("encoder", {"name": "whisper", "mode": "trim", "random_init": TINY_WHISPER})
    trimmed = trim(*trim.extract_features([tone(1.0)]))
    assert trimmed.lengths.tolist() == trimmed.speech_lengths.tolist() == [50]


@pytest.mark.parametrize("compat", ["paper", "released"])
def test_alignment_masks_the_padded_tail_in_paper_mode(registry, info, compat: str) -> None:
    align = build(registry, info, {"name": "alignment", "compat": compat}, input_dim=8)
    gen = torch.Generator().manual_seed(2)
    embeds = torch.randn(2, 40, 8, generator=gen)
    lengths, speech = torch.tensor([40, 40]), torch.tensor([9, 20])  # 9 frames: the 5th pair is half audio
    noisy = embeds.clone()
    noisy[0, 10:] += 5 * torch.randn(30, 8, generator=gen)
    noisy[1, 20:] += 5 * torch.randn(20, 8, generator=gen)
    out = align(AudioState(embeds, lengths, speech_lengths=speech))
    changed = align(AudioState(noisy, lengths, speech_lengths=speech))
    assert out.lengths.tolist() == [20, 20] and out.speech_lengths.tolist() == [5, 10]
    torch.testing.assert_close(out.embeds[0, :5], changed.embeds[0, :5])
    torch.testing.assert_close(out.embeds[1, :10], changed.embeds[1, :10])
    if compat == "paper":  # without the audio lengths the tail is attended to
        unmasked = align(AudioState(noisy, lengths)).embeds
        assert not torch.allclose(out.embeds[1, :10], unmasked[1, :10], atol=1e-4)


@pytest.mark.parametrize("compat", ["paper", "released"])
def test_shrinking_cross_attention_ignores_the_padded_tail_in_paper_mode(registry, info, compat: str) -> None:
    shrink = build(registry, info, {"name": "shrinking", "compat": compat}, input_dim=HIDDEN)
    gen = torch.Generator().manual_seed(3)
    frames = torch.randn(1, 12, HIDDEN, generator=gen)
    # runs in the audio (t < 6) and blank runs in the padding (t >= 6)
    tokens = torch.tensor([[1, 1, 2, 2, 2, 3, BLANK, BLANK, BLANK, 4, 4, BLANK]])
    logits = VocabLogits(torch.nn.functional.one_hot(tokens, VOCAB).float() * 5, torch.eye(VOCAB))
    noisy = frames.clone()
    noisy[0, 6:] += 5 * torch.randn(6, HIDDEN, generator=gen)
    noisy[0, 6] = frames[0, 6]  # the kept frames of the tail stay the same queries
    noisy[0, 9] = frames[0, 9]
    noisy[0, 11] = frames[0, 11]
    state = AudioState(frames, torch.tensor([12]), ctc_logits=logits, speech_lengths=torch.tensor([6]))
    out = shrink(state)
    changed = shrink(state.replace(embeds=noisy))
    assert out.keep_mask[0].nonzero().flatten().tolist() == [0, 2, 5, 6, 9, 11] and out.speech_lengths is None
    if compat == "paper":
        torch.testing.assert_close(out.embeds, changed.embeds)
        # without the audio lengths the padded frames that were not kept are keys
        assert not torch.allclose(shrink(state.replace(embeds=noisy, speech_lengths=None)).embeds, out.embeds, atol=1e-4)
    else:  # the released behaviour: keys are the kept frames, padding included; not-kept padding is never a key
        torch.testing.assert_close(out.embeds, changed.embeds)
        noisy[0, 9] += 1.0  # a kept padding frame is a key (and query) of the released attention
        assert not torch.allclose(shrink(state.replace(embeds=noisy)).embeds[0, :3], out.embeds[0, :3], atol=1e-4)


def test_speech_lengths_survive_windows_and_the_feature_cache(registry, tmp_path) -> None:
    import soundfile as sf

    from swv.data.feature_cache import FeatureCache, build_cache
    from swv.nn.windowing import encode_windowed

    encoder = registry.build("encoder", {"name": "whisper", "mode": "pad_to_30s", "random_init": TINY_WHISPER})
    windowed = encode_windowed(encoder, [tone(31.0), tone(1.0)])
    assert windowed.state.lengths.tolist() == [3000, 1500]
    assert windowed.state.speech_lengths.tolist() == [1550, 50]  # a full window, then 1 s of audio
    paths = []
    for i, seconds in enumerate((1.0, 2.5)):
        paths.append(str(tmp_path / f"c{i}.wav"))
        sf.write(paths[-1], tone(seconds, i), 16000)
    build_cache(tmp_path / "cache", encoder, paths, progress=False)
    cache = FeatureCache.open(tmp_path / "cache", encoder)
    embeds, lengths, speech = cache.lookup(paths)
    assert lengths.tolist() == [1500, 1500] and speech.tolist() == [50, 125]
