"""Whole weights of a model whose parameters are sharded over the processes (FSDP: the
``FullyShardedDataParallel`` wrapper of FSDP1, or FSDP2's ``fully_shard`` with ``DTensor``
parameters). Each process holds a slice of every sharded parameter, so the unwrapped model's
``state_dict`` is that slice, not the weights: the export and the trainable-weights checkpoint
gather the full tensors first, through torch's ``torch.distributed.checkpoint.state_dict`` API
(what ``Accelerator.get_state_dict`` calls for FSDP2), and load them back the same way.

Gathering is a collective: every process calls these functions, the main process (rank 0) gets
the tensors, on the CPU, and the others an empty dict. A model that is not sharded (one
process, DDP, DeepSpeed ZeRO-2, which shards only gradients and optimizer states) is read and
written directly, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable

#: the name part FSDP1's wrapper adds to every parameter name below it
FSDP1_WRAPPED = "_fsdp_wrapped_module."


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (as prepared for training) holds FSDP-sharded parameters."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules()) or any(
        isinstance(p, DTensor) for p in model.parameters()
    )


def _options(**kwargs: bool) -> object:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every process: the model's whole state dict, gathered from the shards onto the CPU of
    the main process (the other processes get ``{}``); the names are the unwrapped model's."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def trainable_names(model: nn.Module) -> set[str]:
    """The names of the trainable parameters, as in the unwrapped model's state dict."""
    return {n.replace(FSDP1_WRAPPED, "") for n, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the CPU. Sharded: a collective (call it on every
    process; the main process gets the weights, the others ``{}``)."""
    if not is_sharded(model):
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = trainable_names(model)
    state = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    return {n: t.contiguous() for n, t in state.items() if n in names}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Copy the whole tensors ``weights`` into ``model``'s parameters (sharded: each process
    keeps its slice; every process calls it with the same ``weights``); returns the names the
    model lacks (nothing is loaded then)."""
    if not is_sharded(model):
        params = dict(model.named_parameters())
        unknown = [k for k in weights if k not in params]
        if not unknown:
            with torch.no_grad():
                for name, tensor in weights.items():
                    params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        return unknown
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    known = {n.replace(FSDP1_WRAPPED, "") for n, _ in model.named_parameters()}
    unknown = [k for k in weights if k not in known]
    if not unknown:
        set_model_state_dict(model, weights, options=_options(strict=False))
    return unknown


def whole_model(model: nn.Module, unwrapped: nn.Module, rebuild: Callable[[], nn.Module], main: bool) -> nn.Module | None:
    """Every process: the model to save whole, on the main process (None on the others).
    ``model`` as prepared, ``unwrapped`` its module. Not sharded: ``unwrapped`` itself. Sharded:
    ``rebuild()`` (an unsharded model of the same structure, built on the main process only)
    loaded with the gathered weights, with ``unwrapped``'s config."""
    if not is_sharded(model):
        return unwrapped if main else None
    state = full_state_dict(model)
    if not main:
        return None
    copy = rebuild()
    copy.load_state_dict(state, strict=True)
    copy.config = unwrapped.config
    return copy
