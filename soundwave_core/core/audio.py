"""Audio reading: soundfile for decoding, torchaudio for resampling.

Every cost is bounded before it is paid: :func:`read_audio` reads the container header
(:func:`audio_info`: frames, rate, channels) and refuses a clip over its limits without decoding
it, then decodes in blocks, mixing to mono as it goes, and stops as soon as the decoded audio
runs past the limit (a header may lie); :func:`resample` works with a bounded rational
approximation of the rate ratio, so its memory does not grow with odd rates.

Every failure is an :class:`~swv.core.errors.InputError` naming the input.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from swv.core.errors import InputError, first_line

#: Longest clip (seconds) ``swv infer``/``swv eval`` and :class:`swv.infer.Pipeline` accept unless
#: told otherwise (``--max-duration``); inference memory grows linearly with the duration.
DEFAULT_MAX_DURATION = 600.0
#: Sample rates (Hz) :func:`read_audio` accepts: telephony's 8 kHz down to 1 kHz, studio rates up
#: to 192 kHz. The decoded clip's memory is its duration times its rate.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 192_000
#: Largest numerator / denominator of the rate ratio :func:`resample` works with (see there).
MAX_RATIO_TERM = 1_024
#: Samples (all channels together) decoded per block: the decoder's working memory (4 MB).
BLOCK_SAMPLES = 1 << 20
#: Largest encoded audio file (bytes) swv reads whole into memory (``swv data shard``, ``swv infer -``
#: on stdin, a tar shard's members) unless told otherwise (``--max-audio-bytes``).
DEFAULT_MAX_AUDIO_BYTES = 1 << 30


AudioSource = str | os.PathLike[str] | bytes | BinaryIO


@dataclass(frozen=True)
class AudioInfo:
    """What a container header says: ``frames`` per channel, ``sample_rate`` (Hz), ``channels``."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0

    @property
    def samples(self) -> int:
        """The samples decoding produces before mixing to mono: ``frames`` x ``channels``."""
        return self.frames * self.channels


def _name(source: Any) -> str:
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    if hasattr(source, "read"):
        return getattr(source, "name", "<stream>")
    return str(source)


def too_long(name: str, seconds: float, max_seconds: float, at_least: bool = False) -> InputError:
    """The error of a clip longer than ``max_seconds`` (``at_least``: decoding stopped there)."""
    length = f"more than {seconds:.2f}" if at_least else f"{seconds:.2f}"
    return InputError(
        f"{name}: {length} s of audio exceeds the maximum duration of {max_seconds:g} s "
        "(raise it with --max-duration / max_duration=)"
    )


def check_info(info: AudioInfo, name: str, max_seconds: float | None = None, max_channels: int | None = None) -> None:
    """Refuse a clip whose header is over a limit: its rate outside
    :data:`MIN_SAMPLE_RATE`..:data:`MAX_SAMPLE_RATE`, more than ``max_channels`` channels, longer
    than ``max_seconds`` (``None``: no limit)."""
    if not MIN_SAMPLE_RATE <= info.sample_rate <= MAX_SAMPLE_RATE:
        raise InputError(
            f"{name}: sample rate {info.sample_rate} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    if max_channels is not None and info.channels > max_channels:
        raise InputError(f"{name}: {info.channels} audio channels exceed the maximum of {max_channels}")
    if max_seconds is not None and info.seconds > max_seconds:
        raise too_long(name, info.seconds, max_seconds)


def _opened(source: AudioSource, name: str) -> Any:
    """A path (checked to be a non-empty file) or a readable stream for soundfile."""
    if isinstance(source, (str, os.PathLike)):
        from swv.core.io import regular_file

        if regular_file(source, "audio file").st_size == 0:
            raise InputError(f"{name}: file is empty (0 bytes)")
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InputError(f"{name}: empty audio input")
        return io.BytesIO(source)
    return source


def audio_info(source: AudioSource, name: str | None = None) -> AudioInfo:
    """The header of a file, of an encoded file's bytes or of a stream (nothing is decoded);
    errors name the input ``name`` (default: its path, ``<bytes>`` or the stream's name)."""
    import soundfile as sf

    name = name or _name(source)
    opened = _opened(source, name)
    position = opened.tell() if hasattr(opened, "tell") else None
    try:
        info = sf.info(opened)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise InputError(f"{name}: not a readable audio file ({first_line(exc)})") from None
    finally:
        if position is not None:
            opened.seek(position)
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def read_audio(
    source: AudioSource, *, max_seconds: float | None = None, max_channels: int | None = None
) -> tuple[np.ndarray, int]:
    """Decode ``source`` to a mono float32 waveform and its sample rate. The header is checked
    first (:func:`check_info`), then the audio is decoded :data:`BLOCK_SAMPLES` at a time and
    mixed to mono block by block; decoding stops once it runs past ``max_seconds``."""
    import soundfile as sf

    name = _name(source)
    opened = _opened(source, name)
    try:
        with sf.SoundFile(opened) as handle:
            info = AudioInfo(int(handle.frames), int(handle.samplerate), int(handle.channels))
            check_info(info, name, max_seconds, max_channels)
            wav = _read_mono(handle, name, info, max_seconds)
    except InputError:
        raise
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise InputError(f"{name}: not a readable audio file ({first_line(exc)})") from None
    if wav.shape[0] == 0:
        raise InputError(f"{name}: audio has zero samples")
    if not np.isfinite(wav).all():
        raise InputError(f"{name}: audio contains NaN or infinite samples")
    return wav, info.sample_rate


def _read_mono(handle: Any, name: str, info: AudioInfo, max_seconds: float | None) -> np.ndarray:
    """Decode an open ``SoundFile`` block by block into one mono waveform."""
    max_frames = None if max_seconds is None else int(max_seconds * info.sample_rate)
    block = max(1, BLOCK_SAMPLES // max(info.channels, 1))
    blocks: list[np.ndarray] = []
    total = 0
    while True:
        data = handle.read(block, dtype="float32", always_2d=True)
        if data.shape[0] == 0:
            break
        total += data.shape[0]
        if max_frames is not None and total > max_frames:
            raise too_long(name, max_frames / info.sample_rate, float(max_seconds or 0), at_least=True)
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        blocks.append(np.ascontiguousarray(mono, dtype=np.float32))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def ratio_terms(orig_sr: int, target_sr: int) -> tuple[int, int]:
    """``(up, down)``: ``target_sr / orig_sr`` as a fraction whose terms are at most about
    :data:`MAX_RATIO_TERM` (exact when its reduced terms already are; the closest such fraction
    otherwise, within 1/MAX_RATIO_TERM = 0.1% of the ratio)."""
    ratio = Fraction(int(target_sr), int(orig_sr))
    if ratio.numerator <= MAX_RATIO_TERM and ratio.denominator <= MAX_RATIO_TERM:
        return ratio.numerator, ratio.denominator
    approx = ratio.limit_denominator(max(1, int(MAX_RATIO_TERM / max(ratio, 1))))
    return approx.numerator, approx.denominator


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``wav`` at ``orig_sr`` -> at ``target_sr`` with torchaudio's windowed-sinc resampler.

    Why this way: scipy's polyphase ``resample_poly`` is not among swv's dependencies, while
    torchaudio is. torchaudio's filter bank has ``up`` rows of about ``down`` taps for the
    reduced ratio ``up/down`` of the two rates, so a coprime odd rate (4001 -> 16000 Hz: 16000 x
    4001 taps) costs hundreds of MB to build and GBs to apply. The ratio is therefore taken as
    :func:`ratio_terms` (terms at most :data:`MAX_RATIO_TERM`): exact for every common rate
    (44100 -> 16000 is 160/441, 48000 -> 16000 is 1/3), within 0.1% (a pitch change nobody
    hears) for odd ones, and the filter stays under ~1024 x 1100 taps (4 MB) for any rate."""
    if orig_sr == target_sr:
        return wav
    import torch
    import torchaudio.functional as AF

    up, down = ratio_terms(orig_sr, target_sr)
    if up == down:
        return wav
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), orig_freq=down, new_freq=up)
    return out.numpy().astype(np.float32, copy=False)


def load_audio(source: AudioSource, sample_rate: int) -> np.ndarray:
    """Decode, mix to mono and resample to ``sample_rate``."""
    wav, sr = read_audio(source)
    return resample(wav, sr, sample_rate)


def audio_duration(path: str | os.PathLike[str] | bytes) -> float:
    """Duration in seconds from the header of a file or of an encoded file's bytes (no decoding)."""
    import soundfile as sf

    from swv.core.io import regular_file

    if not isinstance(path, bytes):
        regular_file(path, "audio file")
    try:
        info = sf.info(io.BytesIO(path) if isinstance(path, bytes) else str(path))
    except Exception as exc:
        raise InputError(f"{_name(path)}: not a readable audio file ({first_line(exc)})") from None
    return float(info.frames) / float(info.samplerate)


def write_audio(path: str | os.PathLike[str], wav: np.ndarray, sample_rate: int) -> None:
    """Write a waveform atomically (format from the file extension)."""
    import soundfile as sf

    from swv.core.io import atomic_file

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_file(path, "wb") as fh:
        sf.write(fh, wav, sample_rate, format=fmt)
