"""A causal-LM backbone's LoRA: its settings, applying it with PEFT, and saving/loading it in
PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``), checked against the
backbone before anything is loaded."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from transformers import PreTrainedModel

from swv.backbones.base import is_peft_adapter_weight
from swv.core.errors import ComponentError, InputError, first_line

#: Names PEFT gives the files of a saved adapter.
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"
#: Prefix of every key in a saved causal-LM LoRA (PeftModel -> LoraModel -> HF model).
_LORA_KEY_PREFIX = "base_model.model."
#: Saved name part of the added tokens' trained rows (``lora.train_added_tokens``).
_TOKEN_ROWS_KEY = ".token_adapter.trainable_tokens_delta"


class LoraSettings(BaseModel):
    """LoRA on the backbone's projections (Soundwave: r=64, alpha=16 on q, k, v, o)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(64, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)
    #: Also train the input- and output-embedding rows of the tokens swv adds (audio
    #: placeholder, ``special_tokens``) through PEFT's ``trainable_token_indices``; the other
    #: rows stay frozen. These rows are part of the LoRA (saved with it, trained by ``lora``).
    train_added_tokens: bool = False


def trainable_token_indices(model: PreTrainedModel, added_ids: list[int]) -> dict[str, list[int]]:
    """PEFT's ``trainable_token_indices``: the added tokens' rows of the input embeddings and,
    when not tied to them (PEFT follows tied heads itself), of the output embeddings."""
    names = {module: name for name, module in model.named_modules()}
    input_embeddings = model.get_input_embeddings()
    indices = {names[input_embeddings]: added_ids}
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != input_embeddings.weight.data_ptr():
        indices[names[output]] = added_ids
    return indices


def apply_lora(model: PreTrainedModel, lora: LoraSettings, added_ids: list[int]) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA; every target module must exist."""
    module_names = [name for name, _ in model.named_modules()]
    for target in lora.target_modules:
        if not any(name == target or name.endswith("." + target) for name in module_names):
            raise ComponentError(f"backbone.lora.target_modules: {target!r} matches no module of {type(model).__name__}")
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        trainable_token_indices=trainable_token_indices(model, added_ids) if lora.train_added_tokens else None,
    )
    return get_peft_model(model, peft_config)


def save_lora(model: PeftModel, directory: str | Path) -> None:
    """Write the LoRA in PEFT's format into ``directory``, next to whatever it already holds; each
    file is renamed into place only once complete. The only embedding rows saved are those of
    the added tokens with ``lora.train_added_tokens``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".lora.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        for item in Path(tmp).iterdir():
            if item.is_file():
                os.replace(item, directory / item.name)


def _check_token_rows(weights_file: Path, key: str, shape: tuple[int, ...], weight: torch.Tensor, token_rows: Any,
                      added_ids: list[int]) -> None:
    """Saved added-token rows ``[n_added, D]`` must be for exactly this backbone's added ids."""
    saved_ids = list(token_rows.values()) if isinstance(token_rows, dict) else [token_rows]
    if any(ids != added_ids for ids in saved_ids) or not saved_ids:
        raise InputError(
            f"{weights_file}: the LoRA trains the rows of token ids {saved_ids[0] if saved_ids else []}, but this "
            f"backbone's added tokens (audio token, special_tokens) have ids {added_ids}"
        )
    if shape != (len(added_ids), weight.shape[1]):
        raise InputError(f"{weights_file}: {key} has shape {list(shape)}, expected {[len(added_ids), weight.shape[1]]}")


def _target_module(base: PreTrainedModel, weights_file: Path, key: str, split: str) -> tuple[str, torch.nn.Module]:
    module_name = key.removeprefix(_LORA_KEY_PREFIX).split(split)[0]
    try:
        return module_name, base.get_submodule(module_name)
    except AttributeError:
        raise InputError(
            f"{weights_file}: LoRA targets {module_name!r}, which {type(base).__name__} does not have "
            "(trained for another backbone?)"
        ) from None


def _check_lora_weight(weights_file: Path, key: str, shape: tuple[int, ...], module_name: str, module: Any) -> None:
    in_features = getattr(module, "in_features", None)
    out_features = getattr(module, "out_features", None)
    fits = len(shape) == 2 and (shape[1] == in_features if ".lora_A." in key else shape[0] == out_features)
    if not fits:
        raise InputError(
            f"{weights_file}: {key} has shape {list(shape)}, which does not fit {module_name} "
            f"(in={in_features}, out={out_features}; trained for another backbone?)"
        )


def _check_rank(config_file: Path, adapter_config: dict[str, Any], weights_file: Path, key: str,
                shape: tuple[int, ...]) -> None:
    """The rank ``r`` of ``adapter_config.json`` (PEFT builds the LoRA from it before loading the
    weights) must be the rank of each saved A/B weight; per-module ``rank_pattern`` ranks are not checked."""
    rank = adapter_config.get("r")
    if adapter_config.get("rank_pattern") or not isinstance(rank, int):
        return
    saved = shape[0] if ".lora_A." in key else shape[1]
    if saved != rank:
        raise InputError(f"{config_file}: r is {rank}, but {weights_file} holds {key} with shape {list(shape)} "
                         f"(rank {saved}); the adapter config does not match its weights")


def check_lora_fits(base: PreTrainedModel, directory: Path, adapter_config: dict[str, Any], added_ids: list[int]) -> None:
    """Every LoRA tensor must target an existing linear layer of matching shape; trained rows of
    added tokens must be those of this backbone's added tokens."""
    weights_file = directory / LORA_WEIGHTS_FILE
    token_rows = adapter_config.get("trainable_token_indices") or {}
    seen = 0
    with safe_open(str(weights_file), framework="pt") as handle:
        for key in handle.keys():
            is_rows = key.endswith(_TOKEN_ROWS_KEY)
            if not is_rows and ".lora_A." not in key and ".lora_B." not in key:
                raise InputError(
                    f"{weights_file}: unexpected tensor {key!r} (only LoRA A/B weights and added-token rows are supported)"
                )
            module_name, module = _target_module(base, weights_file, key, _TOKEN_ROWS_KEY if is_rows else ".lora_")
            shape = tuple(handle.get_slice(key).get_shape())
            if is_rows:
                _check_token_rows(weights_file, key, shape, module.weight, token_rows, added_ids)
            else:
                _check_lora_weight(weights_file, key, shape, module_name, module)
                _check_rank(directory / LORA_CONFIG_FILE, adapter_config, weights_file, key, shape)
                seen += 1
    if seen == 0:
        raise InputError(f"{weights_file}: holds no LoRA weights")


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """The ``adapter_config.json`` of a PEFT LoRA directory (which must also hold its weights)."""
    config_file = directory / LORA_CONFIG_FILE
    if not config_file.is_file() or not (directory / LORA_WEIGHTS_FILE).is_file():
        raise InputError(f"{directory}: not a LoRA directory (expected {LORA_CONFIG_FILE} and {LORA_WEIGHTS_FILE})")
    try:
        adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{config_file}: unreadable adapter config: {first_line(error)}") from error
    if adapter_config.get("peft_type") != "LORA":
        raise InputError(f"{config_file}: peft_type is {adapter_config.get('peft_type')!r}, expected 'LORA'")
    return adapter_config


def load_lora(model: PreTrainedModel | PeftModel, directory: str | Path, added_ids: list[int], trainable: bool) -> PeftModel:
    """``model`` (its current LoRA, if any, removed) with the LoRA saved in ``directory``; with
    ``trainable`` the LoRA's weights require grad, the base stays frozen either way."""
    directory = Path(directory)
    adapter_config = read_adapter_config(directory)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    check_lora_fits(base, directory, adapter_config, added_ids)
    base = model.unload() if isinstance(model, PeftModel) else model
    loaded = PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
    for name, parameter in loaded.named_parameters():
        parameter.requires_grad_(trainable and is_peft_adapter_weight(name))
    return loaded
