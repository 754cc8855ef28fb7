"""Frame stacking shared by the adapters that concatenate adjacent frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swv.nn.state import lengths_to_mask


def stacked_lengths(lengths: torch.Tensor, factor: int, *, drop_remainder: bool) -> torch.Tensor:
    """Valid frames after stacking ``factor`` frames into one.

    ``drop_remainder=True`` drops a trailing partial group (``floor``); otherwise the partial
    group is zero-padded and kept (``ceil``).
    """
    if drop_remainder:
        return torch.div(lengths, factor, rounding_mode="floor")
    return torch.div(lengths + factor - 1, factor, rounding_mode="floor")


def stack_frames(embeds: torch.Tensor, lengths: torch.Tensor, factor: int, *, drop_remainder: bool) -> torch.Tensor:
    """``[B, T, D]`` -> ``[B, T', factor * D]``: concatenate each group of ``factor`` adjacent
    frames along the channel axis. Padding frames are zeroed first so partial groups only see
    real frames and zeros."""
    batch, time, dim = embeds.shape
    if factor == 1:
        return embeds
    embeds = embeds * lengths_to_mask(lengths, time).unsqueeze(-1).to(embeds.dtype)
    if drop_remainder:
        time_out = time // factor
        embeds = embeds[:, : time_out * factor]
    else:
        time_out = -(-time // factor)
        embeds = F.pad(embeds, (0, 0, 0, time_out * factor - time))
    return embeds.reshape(batch, time_out, factor * dim)
