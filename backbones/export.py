"""Writing a causal-LM backbone out in transformers' own format: the base weights without the
LoRA, or with it merged in, plus the tokenizer (audio token and chat template included)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from swv.backbones.base import is_peft_adapter_weight
from swv.core.io import atomic_directory


def merged_model(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """A copy of the model with the LoRA merged in (memory: a second full model), or the base
    model itself when no LoRA is applied."""
    if not isinstance(model, PeftModel):
        return model
    return copy.deepcopy(model).merge_and_unload()


def base_state_dict(hf_model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The base weights under their transformers names (PEFT adapter tensors left out)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in hf_model.state_dict().items():
        if is_peft_adapter_weight(name):
            continue
        state[name.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = tensor
    return state


def save_base(model: PreTrainedModel | PeftModel, tokenizer: Any, directory: str | Path, merged: bool = False) -> None:
    """``save_pretrained`` the full model and the tokenizer into ``directory`` (replaced
    atomically), loadable as a backbone ``path``: without ``merged`` the base weights without the
    LoRA; with it, the LoRA merged in first (see :func:`merged_model`)."""
    if merged:
        out, state_dict = merged_model(model), None
    elif isinstance(model, PeftModel):
        out, state_dict = model.get_base_model(), base_state_dict(model.get_base_model())
    else:
        out, state_dict = model, None
    with atomic_directory(directory) as tmp:
        out.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
