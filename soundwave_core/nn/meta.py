"""Building modules on the meta device to check a config against its weights before anything
is allocated: :func:`meta_build` (no memory, a parameter budget) and :func:`check_shapes`
(each parameter against the shapes stored in safetensors headers). With ``config_only`` (a
training plan, :mod:`swv.train.plan`) components build from their configs alone and read no
weight file (:func:`reading_weights`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch.nn.modules.module import register_module_parameter_registration_hook

from swv.core.config import BUILDING
from swv.core.errors import InputError

#: Weight files hold at least one parameter per this many bits (2-bit GGUF quantisation), so a
#: config may build at most ``8 / MIN_BITS_PER_PARAMETER`` parameters per byte of its weight files.
MIN_BITS_PER_PARAMETER = 2
#: Parameters a config may build beyond what its weight files can hold (buffers, added tokens).
META_PARAMETER_MARGIN = 1_000_000

_CONFIG_ONLY: ContextVar[bool] = ContextVar("swv_meta_config_only", default=False)


def parameter_budget(weight_bytes: int) -> int:
    """The most parameters weight files of ``weight_bytes`` bytes can back (see :data:`MIN_BITS_PER_PARAMETER`)."""
    return weight_bytes * 8 // MIN_BITS_PER_PARAMETER + META_PARAMETER_MARGIN


@contextmanager
def meta_build(max_parameters: int | None, where: str, weight_bytes: int, *, config_only: bool = False) -> Iterator[None]:
    """Modules created inside are on the meta device (no memory); registering more than
    ``max_parameters`` parameters in all (``None``: no limit) stops the build with an
    :class:`InputError` naming ``where`` (the config file), the component being built and the
    parameter, so a config asking for 100,000 layers is refused after a few hundred. With
    ``config_only`` no component reads or checks its weight files (see :func:`reading_weights`)."""
    seen: set[int] = set()
    total = 0

    def count(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        nonlocal total
        if param is None or max_parameters is None or id(param) in seen:
            return
        seen.add(id(param))
        total += param.numel()
        if total > max_parameters:
            component = BUILDING.get() or "the model"
            raise InputError(
                f"{where}: {component} builds over {total:,} parameters ({type(module).__name__}.{name} "
                f"{tuple(param.shape)}), more than its {weight_bytes:,} bytes of weight files can hold; "
                "the config does not match its weights"
            )

    handle = register_module_parameter_registration_hook(count)
    token = _CONFIG_ONLY.set(config_only)
    try:
        with torch.device("meta"):
            yield
    finally:
        _CONFIG_ONLY.reset(token)
        handle.remove()


def building_on_meta() -> bool:
    """Whether modules are being created on the meta device (inside :func:`meta_build`): a
    component then builds its architecture from its config without reading weights."""
    return torch.get_default_device().type == "meta"


def reading_weights() -> bool:
    """Whether a component being built reads (or checks against) its checkpoint's weight files:
    always, except inside ``meta_build(..., config_only=True)``, where a checkpoint directory
    needs its config (and tokenizer) files only."""
    return not (_CONFIG_ONLY.get() and building_on_meta())


def check_shapes(params: Iterable[tuple[str, torch.Tensor]], stored: dict[str, tuple[tuple[int, ...], Path]],
                 what: str, config: str, *, prefix: str = "") -> None:
    """Every parameter (named without ``prefix``) must be stored (as ``prefix + name``) with its
    shape; an :class:`InputError` naming the component ``what``, the parameter, its config
    ``config`` (file and field) and both shapes otherwise."""
    for name, param in params:
        built = tuple(param.shape)
        entry = stored.get(prefix + name)
        if entry is None:
            files = sorted({str(file) for _, file in stored.values()}) or ["no weight file"]
            raise InputError(f"{what}: parameter {prefix + name} {built} built from {config} is not in {files[0]}")
        shape, file = entry
        if shape != built:
            raise InputError(f"{what}: parameter {prefix + name} is {built} as built from {config} but {shape} in {file}")
