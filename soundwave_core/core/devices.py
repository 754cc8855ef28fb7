"""Torch devices by name, including ``auto``: the one place a device option is resolved.

Importing this module does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swv.core.errors import UsageError, first_line

if TYPE_CHECKING:
    import torch

#: The device name that picks the best available device (:func:`auto_device`).
AUTO_DEVICE = "auto"
#: What ``--device`` help texts say about the accepted names.
DEVICE_HELP = "Torch device: auto (CUDA if available, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps..."


def auto_device() -> torch.device:
    """CUDA if a GPU is usable, else Apple's MPS if available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``"auto"`` is :func:`auto_device`. An invalid name is a
    :class:`UsageError` naming it."""
    import torch

    if isinstance(device, str) and device.strip().lower() == AUTO_DEVICE:
        return auto_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device: invalid device {device!r} ({first_line(exc)})") from None
