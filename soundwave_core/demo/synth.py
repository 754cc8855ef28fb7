"""Speech synthesis for the demo: espeak-ng voices at several speaking rates and pitches.

A :class:`Voice` is an espeak-ng voice name with an optional variant (``en-us+m3``: espeak's
voice variants change the formants, breathiness and pitch range), a pitch (espeak ``-p``, 0-99)
and a rate (``-s``, words per minute). ``pitch < 50`` is labelled ``low`` and ``>= 50``
``high``: the label of the demo's classification task. :func:`plan_voice` assigns voices
deterministically and keeps every split balanced between high and low voices. Training clips
and evaluation (dev and held-out) clips use disjoint variants, so the reported numbers are on
voices the model never heard.

Anything that maps ``(text, voice)`` to a 16 kHz mono float32 waveform is a synthesizer (the
tests use a fake one); :class:`EspeakSynthesizer` runs the ``espeak-ng`` program.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from swv.core.errors import InputError, UsageError

SAMPLE_RATE = 16_000
#: The espeak-ng voices and rates Whisper tiny.en transcribes best (measured on the demo's
#: sentences: 7-16 % WER at 130 words/min; en-029, en-gb-scotland and faster speech were worse).
VOICES = ("en-us", "en-gb", "en-us-nyc")
#: Variants per split ("" = the voice's own); training and evaluation never share one. Male
#: variants only where the pitch label is used (the female ones raise the whole pitch range).
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3")
EVAL_VARIANTS = ("m5", "m6", "m7", "f4")
RATES = (115, 130, 145)
PITCHES = {"low": (20, 30), "high": (70, 80)}
PEAK = 0.5


@dataclass(frozen=True)
class Voice:
    name: str
    pitch: int
    rate: int
    variant: str = ""

    @property
    def pitch_label(self) -> str:
        return "high" if self.pitch >= 50 else "low"

    @property
    def espeak_name(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name

    @property
    def female(self) -> bool:
        return self.variant.startswith("f")

    @property
    def speaker(self) -> str:
        variant = f"+{self.variant}" if self.variant else ""
        return f"{self.name}{variant}-p{self.pitch}-s{self.rate}"


class Synthesizer(Protocol):
    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        """``text`` spoken by ``voice``: mono float32 samples at :data:`SAMPLE_RATE`."""
        ...


def plan_voice(split: str, index: int, rendition: int, seed: int = 0) -> Voice:
    """The voice of rendition ``rendition`` of item ``index`` in ``split``: pitch labels
    alternate (so high and low are balanced); voice, variant (:data:`TRAIN_VARIANTS` for splits
    starting with ``train``, :data:`EVAL_VARIANTS` otherwise), rate and exact pitch are drawn
    from a generator seeded by all four arguments."""
    rng = random.Random(f"{seed}/{split}/{index}/{rendition}")
    label = ("low", "high")[(index + rendition) % 2]
    variants = TRAIN_VARIANTS if split.startswith("train") else EVAL_VARIANTS
    return Voice(rng.choice(VOICES), rng.choice(PITCHES[label]), rng.choice(RATES), rng.choice(variants))


def trim_silence(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_db: float = -40.0, pad_s: float = 0.1) -> np.ndarray:
    """Drop leading/trailing audio whose 10 ms RMS is ``threshold_db`` below the loudest frame,
    keeping ``pad_s`` seconds on each side."""
    frame = sample_rate // 100
    count = len(wav) // frame
    if count == 0:
        return wav
    rms = np.sqrt(np.mean(wav[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > threshold_db)[0]
    if len(loud) == 0:
        return wav
    pad = int(pad_s * sample_rate)
    return wav[max(0, loud[0] * frame - pad) : min(len(wav), (loud[-1] + 1) * frame + pad)]


def normalize_peak(wav: np.ndarray, peak: float = PEAK) -> np.ndarray:
    top = float(np.abs(wav).max()) if wav.size else 0.0
    return (wav * (peak / top)).astype(np.float32) if top > 0 else wav.astype(np.float32)


class EspeakSynthesizer:
    """Runs ``espeak-ng`` (one process per utterance), resamples to 16 kHz, trims silence and
    normalises the peak level."""

    def __init__(self, program: str = "espeak-ng") -> None:
        found = shutil.which(program)
        if found is None:
            raise UsageError(f"{program} is not installed; the demo synthesizes its speech with it (apt-get install espeak-ng)")
        self.program = found

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        from swv.core.audio import read_audio, resample

        with tempfile.TemporaryDirectory(prefix="swv-espeak-") as tmp:
            out = Path(tmp) / "speech.wav"
            cmd = [self.program, "-v", voice.espeak_name, "-s", str(voice.rate), "-p", str(voice.pitch), "-w", str(out), text]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not out.is_file():
                detail = (done.stderr or "").strip().splitlines()
                raise InputError(f"espeak-ng failed for voice {voice.espeak_name!r}: {detail[0] if detail else f'exit {done.returncode}'}")
            wav, rate = read_audio(out)
        wav = resample(wav, rate, SAMPLE_RATE)
        return normalize_peak(trim_silence(wav))
