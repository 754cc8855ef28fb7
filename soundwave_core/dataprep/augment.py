"""Waveform augmentation for training corpora, built on ``torchaudio.functional``.

Every draw comes from a ``torch.Generator`` seeded by :func:`clip_generator` from a seed and a
clip key, so the same clip is always augmented the same way (a rebuilt corpus is bit-identical)
and two clips never share a draw. What it does, in order, each with its own probability
(:class:`Augmentation`):

* speed perturbation (:func:`warp`, a resampling as in :func:`torchaudio.functional.speed`:
  tempo and pitch together, as Kaldi's speed perturbation), also usable as a formant/pitch warp
  of a synthetic voice (the caller compensates the duration);
* reverberation with a synthetic room impulse response (:func:`synthetic_rir`: exponentially
  decaying Gaussian noise whose decay gives the RT60; :func:`reverberate` convolves with
  :func:`torchaudio.functional.fftconvolve`);
* additive noise at a random SNR (:func:`torchaudio.functional.add_noise`) from generated noise:
  white, pink or brown (:func:`coloured_noise`, a 1/f^beta spectrum) or babble (:func:`babble`,
  several other clips of the corpus summed);
* gain, then a clip to [-1, 1].

Waveforms are mono float32 numpy arrays or 1-D tensors; the result has the input's type.
:func:`augment_manifest` applies an :class:`Augmentation` to every clip of a JSONL manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as F

from swv.core.errors import InputError

#: Spectral exponent beta of each coloured noise (power ~ 1 / f^beta).
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
BABBLE = "babble"
#: Speed/warp factors are multiples of 1/WARP_STEPS (1.25 % steps).
WARP_STEPS = 80


@dataclass(frozen=True)
class Augmentation:
    """What :func:`augment` may do to one clip; every range is ``(low, high)``, drawn uniformly."""

    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (10.0, 30.0)
    noises: tuple[str, ...] = ("white", "pink", "brown", BABBLE)
    babble_talkers: tuple[int, int] = (3, 6)
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.2, 0.6)
    speed_prob: float = 0.3
    speed: tuple[float, float] = (0.95, 1.05)
    gain_db: tuple[float, float] = (-6.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("noise_prob", "reverb_prob", "speed_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"augmentation {name} must be between 0 and 1, got {getattr(self, name)}")
        unknown = [n for n in self.noises if n != BABBLE and n not in NOISE_COLOURS]
        if unknown or not self.noises:
            raise InputError(f"augmentation noises must be among {[*NOISE_COLOURS, BABBLE]}, got {list(self.noises)}")
        if self.speed[0] <= 0 or self.rt60_s[0] <= 0 or self.babble_talkers[0] < 1:
            raise InputError("augmentation speed and rt60_s must be positive and babble_talkers at least 1")


def clip_generator(seed: int, key: str) -> torch.Generator:
    """A generator seeded from ``seed`` and ``key`` (a clip id): same pair, same draws."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _uniform(g: torch.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def coloured_noise(length: int, beta: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise shaped to a power spectrum ~ 1/f^beta (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = torch.fft.rfft(torch.randn(length, generator=g))
    freqs = torch.fft.rfftfreq(length)
    freqs[0] = freqs[1] if length > 1 else 1.0
    noise = torch.fft.irfft(spectrum / freqs.pow(beta / 2), n=length)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-8)


def babble(length: int, pool: Sequence[torch.Tensor], talkers: int, g: torch.Generator) -> torch.Tensor:
    """``talkers`` clips of ``pool`` (drawn with replacement), each looped to ``length`` from a
    random offset, summed; unit RMS."""
    if not pool:
        raise InputError("babble noise needs at least one other clip in the pool")
    total = torch.zeros(length)
    for _ in range(talkers):
        source = pool[int(torch.randint(len(pool), (), generator=g))]
        reps = -(-(length + len(source)) // max(1, len(source)))
        offset = int(torch.randint(max(1, len(source)), (), generator=g))
        total += source.repeat(reps)[offset : offset + length]
    return total / total.pow(2).mean().sqrt().clamp_min(1e-8)


def synthetic_rir(sample_rate: int, rt60_s: float, g: torch.Generator) -> torch.Tensor:
    """A room impulse response: a direct path then Gaussian noise decaying 60 dB over
    ``rt60_s`` seconds; normalised to a unit direct path."""
    length = max(2, int(rt60_s * sample_rate))
    t = torch.arange(length) / sample_rate
    rir = torch.randn(length, generator=g) * torch.exp(-6.9078 * t / rt60_s)  # ln(1000): -60 dB at rt60
    rir[0] = 1.0
    return rir / rir.abs().max()


def reverberate(wav: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wav`` convolved with ``rir`` (:func:`torchaudio.functional.fftconvolve`), cut to the input
    length and scaled back to the input's peak."""
    wet = F.fftconvolve(wav, rir)[: len(wav)]
    return wet * (wav.abs().max() / wet.abs().max().clamp_min(1e-8))


def add_noise(wav: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``noise`` added at ``snr_db`` (:func:`torchaudio.functional.add_noise`)."""
    return F.add_noise(wav[None], noise[None], torch.tensor([snr_db]))[0]


def warp(wav: torch.Tensor, sample_rate: int, factor: float, steps: int = WARP_STEPS) -> torch.Tensor:
    """Played ``factor`` times faster: pitch and formants times ``factor``, duration divided by it
    (what :func:`torchaudio.functional.speed` does: a resampling from ``factor`` x the rate). The
    factor is rounded to a multiple of ``1 / steps`` so the two rates share a large divisor: the
    resampling kernel grows with ``rate / gcd`` (an arbitrary 0.9734 at 16 kHz means 7,787 phases)."""
    source = round(factor * steps) * (sample_rate // steps)
    if source == sample_rate or source <= 0:
        return wav
    return F.resample(wav, source, sample_rate)


def _noise(kind: str, length: int, pool: Sequence[torch.Tensor], talkers: int, g: torch.Generator) -> torch.Tensor:
    if kind == BABBLE:
        return babble(length, pool, talkers, g)
    return coloured_noise(length, NOISE_COLOURS[kind], g)


def augment(wav: np.ndarray | torch.Tensor, sample_rate: int, spec: Augmentation, g: torch.Generator,
            pool: Sequence[np.ndarray | torch.Tensor] = ()) -> np.ndarray | torch.Tensor:
    """``wav`` through speed, reverberation, noise and gain as ``spec`` and ``g`` draw them.
    ``pool`` holds other clean clips for babble (without ``wav`` itself); babble is skipped when
    it is empty. The settings of every step are drawn first, whether or not the step runs, so one
    step's probability never shifts another step's settings."""
    as_numpy = isinstance(wav, np.ndarray)
    x = torch.as_tensor(wav, dtype=torch.float32).flatten()
    do_speed, factor = _chance(g, spec.speed_prob), _uniform(g, spec.speed)
    do_reverb, rt60 = _chance(g, spec.reverb_prob), _uniform(g, spec.rt60_s)
    do_noise, snr = _chance(g, spec.noise_prob), _uniform(g, spec.snr_db)
    kinds = [k for k in spec.noises if k != BABBLE or pool]
    kind = kinds[int(torch.randint(len(kinds), (), generator=g))] if kinds else "white"
    talkers = int(torch.randint(spec.babble_talkers[0], spec.babble_talkers[1] + 1, (), generator=g))
    gain = 10 ** (_uniform(g, spec.gain_db) / 20)
    if do_speed and len(x) > 1:
        x = warp(x, sample_rate, factor)
    if do_reverb and len(x) > 1:
        x = reverberate(x, synthetic_rir(sample_rate, rt60, g))
    if do_noise and len(x) > 1:
        sources = [torch.as_tensor(p, dtype=torch.float32).flatten() for p in pool]
        x = add_noise(x, _noise(kind, len(x), sources, talkers, g), snr)
    x = (x * gain).clamp(-1.0, 1.0)
    return x.numpy().astype(np.float32) if as_numpy else x


def augment_manifest(manifest: str | Path, out_manifest: str | Path, spec: Augmentation, *, seed: int = 0, copies: int = 1,
                     sample_rate: int = 16_000, babble_pool: int = 16) -> int:
    """Write ``copies`` augmented versions of every clip of ``manifest``: FLAC files under
    ``<out_manifest's folder>/audio/`` and their records (the original's fields, ``id`` suffixed
    ``-aug<k>``, new ``audio`` and ``duration``, ``augment`` = the copy's key) in ``out_manifest``.
    Copy ``k`` of the clip on line ``n`` is drawn from ``clip_generator(seed, "<id or n>/<k>")``,
    so a rerun writes the same audio; babble comes from the first ``babble_pool`` clips (never
    the clip itself). Returns the number of records written."""
    from swv.core.audio import load_audio, write_audio
    from swv.data.manifest import audio_ref, read_manifest, resolve_audio, write_manifest

    if copies < 1:
        raise InputError(f"augment: copies must be at least 1, got {copies}")
    manifest, out_manifest = Path(manifest), Path(out_manifest)
    records = list(read_manifest(manifest))
    pool = [(n, load_audio(resolve_audio(manifest, r), sample_rate)) for n, r in records[:babble_pool]]
    audio_dir = out_manifest.parent / "audio"
    out: list[dict] = []
    for n, record in records:
        wav = load_audio(resolve_audio(manifest, record), sample_rate)
        others = [w for m, w in pool if m != n]
        name = str(record.get("id", n))
        for k in range(copies):
            key = f"{name}/{k}"
            result = augment(wav, sample_rate, spec, clip_generator(seed, key), others)
            path = audio_dir / f"{n:06d}-{k}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, result, sample_rate)
            out.append({**record, "id": f"{name}-aug{k}", "audio": audio_ref(path, out_manifest),
                        "duration": round(len(result) / sample_rate, 3), "augment": key})
    return write_manifest(out_manifest, out)
