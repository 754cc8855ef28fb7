"""Audio reading: soundfile for decoding, torchaudio for resampling.

Every failure is an :class:`~swv.core.errors.InputError` naming the input.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from swv.core.errors import InputError, first_line

#: Longest clip (seconds) ``swv infer``/``swv eval`` and :class:`swv.infer.Pipeline` accept unless
#: told otherwise (``--max-duration``); inference memory grows linearly with the duration.
DEFAULT_MAX_DURATION = 600.0


AudioSource = str | os.PathLike[str] | bytes | BinaryIO


def _name(source: AudioSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    if hasattr(source, "read"):
        return getattr(source, "name", "<stream>")
    return str(source)


def read_audio(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode ``source`` to a mono float32 waveform and its sample rate."""
    import soundfile as sf

    name = _name(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{name}: audio file not found")
        if path.is_dir():
            raise InputError(f"{name}: expected an audio file, got a directory")
        if path.stat().st_size == 0:
            raise InputError(f"{name}: file is empty (0 bytes)")
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise InputError(f"{name}: empty audio input")
        source = io.BytesIO(source)
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        detail = first_line(exc)
        raise InputError(f"{name}: not a readable audio file ({detail})") from None
    if data.shape[0] == 0:
        raise InputError(f"{name}: audio has zero samples")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise InputError(f"{name}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return wav
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(wav), orig_freq=orig_sr, new_freq=target_sr)
    return out.numpy().astype(np.float32, copy=False)


def load_audio(source: AudioSource, sample_rate: int) -> np.ndarray:
    """Decode, mix to mono and resample to ``sample_rate``."""
    wav, sr = read_audio(source)
    return resample(wav, sr, sample_rate)


def audio_duration(path: str | os.PathLike[str] | bytes) -> float:
    """Duration in seconds from the header of a file or of an encoded file's bytes (no decoding)."""
    import soundfile as sf

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
