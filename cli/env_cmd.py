"""``swv env``: versions and hardware, for bug reports."""

from __future__ import annotations

import importlib.metadata as md
import platform

import typer


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def env() -> None:
    """Print versions of Python and the ML stack, CUDA availability and plugins."""
    typer.echo(f"swv          {_version('swv')}")
    typer.echo(f"python       {platform.python_version()} ({platform.platform()})")
    for dist in ("torch", "torchaudio", "transformers", "peft", "accelerate", "datasets", "safetensors", "pydantic", "pluggy"):
        typer.echo(f"{dist:<12} {_version(dist)}")
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        typer.echo(f"cuda         available: {torch.cuda.device_count()} device(s): {names} (CUDA {torch.version.cuda})")
    else:
        typer.echo(f"cuda         not available (torch built with CUDA {torch.version.cuda or 'none'})")
    typer.echo(f"cpu threads  {torch.get_num_threads()}")
    from swv.registry.plugins import default_plugins

    plugins = default_plugins()
    listed = ", ".join(f"{p.name} ({p.status})" for p in plugins.plugins)
    typer.echo(f"plugins      {listed}")
