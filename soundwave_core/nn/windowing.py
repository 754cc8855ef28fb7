"""Long audio: split clips into encoder-sized windows and join the windows' encoder outputs.

An encoder with a bounded input (Whisper: its feature extractor's ``n_samples``, 30 s, further
capped by the encoder's position table) cannot take a longer clip in one pass. Such a clip is
cut into consecutive, non-overlapping windows of :func:`encoder_window_samples` samples (the
last one shorter); every window is encoded on its own (windows of all clips of a batch are
encoded together, ``window_batch_size`` at a time) and the valid frames of a clip's windows are
concatenated along time, in order, before the adapter chain. Nothing is ever truncated.

Shapes: ``B`` clips, ``W`` windows (over all clips), ``T`` frames per window, ``D`` encoder width,
``N`` frames of the longest joined clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from swv.core.errors import UsageError
from swv.nn.state import AudioState, lengths_to_mask

if TYPE_CHECKING:
    from swv.encoders.base import Encoder


@dataclass
class WindowedAudio:
    """Encoder output of whole clips, windows joined.

    Attributes:
        state: ``embeds [B, N, D]``, ``lengths [B]`` (the sum of each clip's windows' valid
            encoder frames), ``speech_lengths [B]`` (the same sum of frames holding audio: every
            window but a clip's last is full, so its padding can only come last) and
            ``window_frames`` (encoder frames of a full window) when a clip has more than one window.
        num_windows: ``[B]`` windows per clip.
    """

    state: AudioState
    num_windows: torch.Tensor


def encoder_window_samples(encoder: Encoder) -> int | None:
    """Longest waveform (in samples at ``encoder.sample_rate``) the encoder takes in one pass:
    its ``max_samples`` (Whisper: 30 s of audio, less if its position table is shorter);
    ``None`` when the encoder has no limit (e.g. the w2v-BERT Conformer), in which case clips
    are never split.
    """
    return encoder.max_samples


def split_into_windows(
    waveforms: Sequence[np.ndarray], window_samples: int | None
) -> tuple[list[np.ndarray], torch.Tensor]:
    """Cut each 1-D waveform into consecutive windows of at most ``window_samples`` samples.

    Returns the windows (clip by clip, in order; views, not copies) and ``clip_index [W]``,
    the clip each window belongs to. With ``window_samples=None`` every clip is one window.
    """
    if window_samples is not None and window_samples < 1:
        raise UsageError(f"window_samples must be >= 1, got {window_samples}")
    windows: list[np.ndarray] = []
    owners: list[int] = []
    for clip, wave in enumerate(waveforms):
        step = window_samples or max(len(wave), 1)
        starts = range(0, max(len(wave), 1), step)
        windows.extend(wave[start : start + step] for start in starts)
        owners.extend([clip] * len(starts))
    return windows, torch.tensor(owners, dtype=torch.long)


def join_windows(
    embeds: torch.Tensor, lengths: torch.Tensor, clip_index: torch.Tensor, num_clips: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the valid frames of each clip's windows along time.

    Args:
        embeds: ``[W, T, D]`` window outputs; frames at ``t >= lengths[w]`` are padding.
        lengths: ``[W]`` valid frames per window.
        clip_index: ``[W]`` clip of each window; a clip's windows are consecutive and in order.
        num_clips: ``B``.

    Returns:
        ``[B, N, D]`` joined frames (zero past each clip's length) and ``[B]`` lengths.
    """
    device = embeds.device
    lengths = lengths.to(device=device, dtype=torch.long)
    clip_index = clip_index.to(device)
    clip_lengths = torch.zeros(num_clips, dtype=torch.long, device=device).index_add_(0, clip_index, lengths)
    window_start = lengths.cumsum(0) - lengths  # exclusive running total over all windows
    clip_start = clip_lengths.cumsum(0) - clip_lengths
    offset = window_start - clip_start[clip_index]  # [W] where each window starts in its clip
    total = int(clip_lengths.max().item()) if num_clips else 0
    out = embeds.new_zeros(num_clips, total, embeds.shape[-1])
    rows, cols = lengths_to_mask(lengths, embeds.shape[1]).nonzero(as_tuple=True)
    out[clip_index[rows], offset[rows] + cols] = embeds[rows, cols]
    return out, clip_lengths


def _pad_time(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """``[W, T, D]`` -> ``[W, length, D]`` with zeros appended (``length >= T``)."""
    extra = length - embeds.shape[1]
    if extra == 0:
        return embeds
    return torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])], dim=1)


def encode_windowed(
    encoder: Encoder,
    waveforms: Sequence[np.ndarray],
    *,
    window_batch_size: int | None = None,
    device: torch.device | None = None,
) -> WindowedAudio:
    """Run ``encoder`` on mono waveforms at ``encoder.sample_rate`` of any length.

    Windows are encoded ``window_batch_size`` at a time (all at once when ``None``); each
    window's output depends only on that window (the encoders pad per row), so the result
    does not depend on ``window_batch_size``. Features are moved to ``device`` (default: the
    encoder's parameters' device).
    """
    if not waveforms:
        raise UsageError("encode_windowed: no waveforms given")
    if window_batch_size is not None and window_batch_size < 1:
        raise UsageError(f"window_batch_size must be >= 1, got {window_batch_size}")
    if device is None:
        device = next(encoder.parameters()).device
    windows, clip_index = split_into_windows(waveforms, encoder_window_samples(encoder))
    step = window_batch_size or len(windows)
    outputs: list[AudioState] = []
    for start in range(0, len(windows), step):
        features, feature_lengths = encoder.extract_features(windows[start : start + step])
        outputs.append(encoder(features.to(device), feature_lengths.to(device)))
    longest = max(out.embeds.shape[1] for out in outputs)
    embeds = torch.cat([_pad_time(out.embeds, longest) for out in outputs], dim=0)
    lengths = torch.cat([out.lengths.to(device) for out in outputs], dim=0)
    speech = torch.cat([out.speech_mask().sum(dim=1).to(device) for out in outputs], dim=0)
    joined, joined_lengths = join_windows(embeds, lengths, clip_index, len(waveforms))
    joined_speech = torch.zeros_like(joined_lengths).index_add_(0, clip_index.to(device), speech)
    num_windows = torch.bincount(clip_index, minlength=len(waveforms))
    # every window but a clip's last is full: its frame count is the window's
    window_frames = int(lengths.max().item()) if int(num_windows.max().item()) > 1 else None
    state = AudioState(embeds=joined, lengths=joined_lengths, speech_lengths=joined_speech, window_frames=window_frames)
    return WindowedAudio(state, num_windows)
