"""swv.dataprep.augment: determinism per clip key, shapes, the SNR actually added, noise colours,
the synthetic room impulse response, speed/warp, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swv.core.errors import InputError
from swv.dataprep.augment import (
    Augmentation,
    add_noise,
    augment,
    babble,
    clip_generator,
    coloured_noise,
    reverberate,
    synthetic_rir,
    warp,
)

SR = 16_000


def _speech(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """A voiced-like signal: harmonics of a wandering pitch under a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.3 * wav / np.abs(wav).max() + 0.001 * rng.standard_normal(len(t))).astype(np.float32)


def test_same_key_same_result_other_key_other_result() -> None:
    wav, pool = _speech(), [_speech(1.0, 1), _speech(0.7, 2)]
    spec = Augmentation(noise_prob=1.0, reverb_prob=1.0, speed_prob=1.0)
    first = augment(wav, SR, spec, clip_generator(0, "clip-1"), pool)
    assert isinstance(first, np.ndarray) and first.dtype == np.float32
    assert np.array_equal(first, augment(wav, SR, spec, clip_generator(0, "clip-1"), pool))
    assert not np.array_equal(first, augment(wav, SR, spec, clip_generator(0, "clip-2"), pool))
    assert not np.array_equal(first, augment(wav, SR, spec, clip_generator(1, "clip-1"), pool))
    assert np.abs(first).max() <= 1.0


def test_shapes_and_types() -> None:
    wav = _speech()
    keep_length = Augmentation(noise_prob=1.0, reverb_prob=1.0, speed_prob=0.0)
    for key in ("a", "b", "c"):
        assert augment(wav, SR, keep_length, clip_generator(0, key)).shape == wav.shape
    as_tensor = augment(torch.from_numpy(wav), SR, keep_length, clip_generator(0, "a"))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (len(wav),)
    faster = Augmentation(noise_prob=0.0, reverb_prob=0.0, speed_prob=1.0, speed=(1.1, 1.1), gain_db=(0.0, 0.0))
    out = augment(wav, SR, faster, clip_generator(0, "a"))
    assert abs(len(out) - len(wav) / 1.1) <= 2
    nothing = Augmentation(noise_prob=0.0, reverb_prob=0.0, speed_prob=0.0, gain_db=(-6.0, -6.0))
    np.testing.assert_allclose(augment(wav, SR, nothing, clip_generator(0, "a")), wav * 10 ** (-6 / 20), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("snr", [5.0, 15.0, 25.0])
def test_noise_is_added_at_the_drawn_snr(snr: float) -> None:
    wav = torch.from_numpy(_speech())
    noise = coloured_noise(len(wav), 1.0, clip_generator(0, "n"))
    noisy = add_noise(wav, noise, snr)
    measured = 10 * torch.log10(wav.pow(2).sum() / (noisy - wav).pow(2).sum())
    assert abs(float(measured) - snr) < 0.01
    spec = Augmentation(noise_prob=1.0, snr_db=(snr, snr), reverb_prob=0.0, speed_prob=0.0, gain_db=(0.0, 0.0),
                        noises=("white",))
    out = augment(wav.numpy(), SR, spec, clip_generator(0, "x"))
    assert abs(10 * np.log10(np.sum(wav.numpy() ** 2) / np.sum((out - wav.numpy()) ** 2)) - snr) < 0.05


def test_noise_colours() -> None:
    g = clip_generator(0, "colour")
    n = 1 << 15

    def low_share(noise: torch.Tensor) -> float:
        power = torch.fft.rfft(noise).abs().pow(2)
        return float(power[: len(power) // 16].sum() / power.sum())

    white, pink, brown = (coloured_noise(n, beta, g) for beta in (0.0, 1.0, 2.0))
    for noise in (white, pink, brown):
        assert noise.shape == (n,) and abs(float(noise.pow(2).mean()) - 1.0) < 1e-3
    assert 0.04 < low_share(white) < 0.09  # flat: 1/16 of the bins hold ~1/16 of the power
    assert low_share(white) < low_share(pink) < low_share(brown) and low_share(brown) > 0.9


def test_babble_sums_pool_clips() -> None:
    pool = [torch.from_numpy(_speech(0.5, s)) for s in range(3)]
    out = babble(SR, pool, 4, clip_generator(0, "b"))
    assert out.shape == (SR,) and abs(float(out.pow(2).mean()) - 1.0) < 1e-3
    assert torch.equal(out, babble(SR, pool, 4, clip_generator(0, "b")))
    with pytest.raises(InputError, match="babble"):
        babble(SR, [], 3, clip_generator(0, "b"))
    # without a pool, babble is never drawn: only the coloured noises are
    spec = Augmentation(noise_prob=1.0, noises=("babble",), reverb_prob=0.0, speed_prob=0.0)
    assert augment(_speech(), SR, spec, clip_generator(0, "b")).shape == _speech().shape


def test_room_impulse_response_decays_at_rt60() -> None:
    rir = synthetic_rir(SR, 0.5, clip_generator(0, "rir"))
    assert len(rir) == SR // 2 and float(rir.abs().max()) == 1.0 and float(rir[0]) != 0.0
    tenth = len(rir) // 10
    early, late = rir[1:tenth].pow(2).mean(), rir[-tenth:].pow(2).mean()
    assert 10 * torch.log10(early / late) > 40  # ~54 dB between the first and last tenth
    wav = torch.from_numpy(_speech())
    wet = reverberate(wav, rir)
    assert wet.shape == wav.shape and torch.isclose(wet.abs().max(), wav.abs().max())
    assert not torch.allclose(wet, wav, atol=1e-2)
    assert torch.allclose(reverberate(wav, torch.tensor([1.0, 0.0, 0.0])), wav, atol=1e-5)


def test_warp_changes_duration_and_pitch() -> None:
    t = torch.arange(SR) / SR
    tone = torch.sin(2 * torch.pi * 200 * t)
    up = warp(tone, SR, 1.25)
    assert abs(len(up) - SR / 1.25) <= 1
    peak = float(torch.fft.rfftfreq(len(up), 1 / SR)[torch.fft.rfft(up).abs().argmax()])
    assert abs(peak - 250) < 3
    assert warp(tone, SR, 1.0) is tone
    assert len(warp(tone, SR, 0.9734)) == len(warp(tone, SR, 0.975))  # rounded to 1/80 steps


@pytest.mark.parametrize("bad", [{"noise_prob": 1.5}, {"noises": ("purple",)}, {"noises": ()}, {"speed": (0.0, 1.0)},
                                 {"rt60_s": (0.0, 0.5)}, {"babble_talkers": (0, 2)}])
def test_bad_settings_are_one_clear_error(bad: dict) -> None:
    with pytest.raises(InputError, match="augmentation"):
        Augmentation(**bad)


def _write_manifest(root) -> object:
    import json

    import soundfile as sf

    (root / "wav").mkdir(parents=True)
    lines = []
    for i in range(3):
        sf.write(str(root / "wav" / f"{i}.wav"), _speech(0.6 + 0.2 * i, i), SR)
        lines.append(json.dumps({"id": f"utt{i}", "audio": f"wav/{i}.wav", "text": f"words {i}", "speaker": "s"}))
    manifest = root / "in.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_augment_manifest_writes_deterministic_copies(tmp_path) -> None:
    import json

    import soundfile as sf

    from swv.dataprep.augment import augment_manifest

    manifest = _write_manifest(tmp_path / "src")
    spec = Augmentation(noise_prob=1.0, reverb_prob=1.0, speed_prob=1.0)
    assert augment_manifest(manifest, tmp_path / "a" / "out.jsonl", spec, copies=2) == 6
    assert augment_manifest(manifest, tmp_path / "b" / "out.jsonl", spec, copies=2) == 6
    rows = [json.loads(line) for line in (tmp_path / "a" / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"utt{i}-aug{k}" for i in range(3) for k in range(2)]
    assert [r["text"] for r in rows] == [f"words {i}" for i in range(3) for _ in range(2)]
    for row in rows:
        first, second = tmp_path / "a" / row["audio"], tmp_path / "b" / row["audio"]
        assert first.read_bytes() == second.read_bytes()
        info = sf.info(str(first))
        assert info.samplerate == SR and abs(info.frames / SR - row["duration"]) < 1e-3
    copies = [sf.read(str(tmp_path / "a" / r["audio"]), dtype="float32")[0] for r in rows[:2]]
    assert len(copies[0]) != len(copies[1]) or not np.allclose(copies[0], copies[1])
    with pytest.raises(InputError, match="copies"):
        augment_manifest(manifest, tmp_path / "c.jsonl", spec, copies=0)
