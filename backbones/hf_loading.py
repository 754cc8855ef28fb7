"""Loading a causal-LM backbone's parts: the checkpoint directory, the tokenizer with swv's added
tokens, the transformers model (pretrained, GGUF or randomly initialised) and the embedding
rows of the added tokens.

Functions of a :class:`~swv.backbones.causal_lm.CausalLMConfig` (and what it has loaded so far);
errors name the recipe field (``backbone.path``, ``backbone.tokenizer``...).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from swv.backbones.gguf_header import gguf_shapes
from swv.core.dtypes import torch_dtype
from swv.core.errors import ComponentError, InputError, first_line
from swv.core.hub import Resolved, resolve_dir
from swv.core.io import read_regular, safetensors_shapes
from swv.nn.meta import building_on_meta, check_shapes, reading_weights

if TYPE_CHECKING:
    from swv.backbones.causal_lm import CausalLMConfig

#: Largest shard index read (``model.safetensors.index.json``).
MAX_INDEX_BYTES = 64 << 20
#: Files of a hub checkpoint the backbone needs: configs, tokenizer files, safetensors weights.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists()


def describe_source(cfg: CausalLMConfig) -> str:
    path, gguf_file = cfg.source()
    return f"{path}/{gguf_file}" if gguf_file else str(path)


def check_local_files(cfg: CausalLMConfig) -> None:
    """Fail early, with the field name, on local paths that do not exist."""
    path, gguf_file = cfg.source()
    if path is not None and looks_local(path):
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise InputError(
                f"backbone.path: {path} does not exist or is not a directory (expected a checkpoint directory or hub id)"
            )
        if gguf_file is not None and not (directory / gguf_file).is_file():
            raise InputError(f"backbone.gguf_file: {directory / gguf_file} does not exist")
    tokenizer = cfg.tokenizer
    if tokenizer is not None and looks_local(tokenizer) and not Path(tokenizer).expanduser().exists():
        raise InputError(f"backbone.tokenizer: {tokenizer} does not exist (expected a tokenizer directory or hub id)")


def resolve_checkpoint(cfg: CausalLMConfig) -> Resolved | None:
    """The local directory of ``path`` (a hub id at ``revision`` is fetched into the Hugging Face
    cache by :func:`swv.core.hub.resolve_dir`); ``None`` for ``random_init``."""
    path, gguf_file = cfg.source()
    if path is None:
        return None
    patterns = [*CHECKPOINT_PATTERNS, *([gguf_file] if gguf_file is not None else [])]
    return resolve_dir(path, "backbone.path", revision=cfg.revision, allow_patterns=patterns)


def load_tokenizer(cfg: CausalLMConfig, checkpoint: str | None) -> Any:
    """The tokenizer of ``cfg.tokenizer`` or of the checkpoint, with ``cfg.chat_template`` if set."""
    _, gguf_file = cfg.source()
    source = cfg.tokenizer if cfg.tokenizer is not None else checkpoint
    assert source is not None  # guaranteed by CausalLMConfig
    field = "tokenizer" if cfg.tokenizer is not None else "path"
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.tokenizer is None and gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    if looks_local(source):
        source = str(Path(source).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"backbone.{field}: cannot load a tokenizer from {source}: {first_line(error)}") from error
    if cfg.chat_template is not None:
        tokenizer.chat_template = cfg.chat_template
    return tokenizer


def register_audio_token(tokenizer: Any, token: str) -> int:
    """Add the audio placeholder as a special token; it must stay one token and differ from
    bos/eos/pad/unk."""
    tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    token_id = tokenizer.convert_tokens_to_ids(token)
    encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
    if not isinstance(token_id, int) or encoded != [token_id]:
        raise ComponentError(f"backbone.audio_token: the tokenizer does not keep {token!r} as one token (got ids {encoded})")
    named = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id} - {None}
    if token_id in named:
        raise ComponentError(
            f"backbone.audio_token: {token!r} is already the tokenizer's bos/eos/pad/unk token; choose a distinct token"
        )
    return int(token_id)


def register_special_tokens(tokenizer: Any, tokens: list[str]) -> list[int]:
    """Add ``special_tokens`` (each must stay one token); their ids in order."""
    if not tokens:
        return []
    tokenizer.add_special_tokens({"extra_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
    ids = []
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or tokenizer(token, add_special_tokens=False)["input_ids"] != [token_id]:
            raise ComponentError(f"backbone.special_tokens: the tokenizer does not keep {token!r} as one token")
        ids.append(int(token_id))
    return ids


def ensure_pad_token(tokenizer: Any, source: str) -> int:
    """The pad id, the eos token standing in when the tokenizer has no pad token."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise InputError(f"backbone.tokenizer: the tokenizer of {source} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def check_model_type(found: str, expected: str | None, where: str) -> None:
    if expected is not None and found != expected:
        raise ComponentError(f"backbone.path: {where} is a {found!r} model but this backbone expects model_type {expected!r}")


def load_pretrained(cfg: CausalLMConfig, checkpoint: str, expected_model_type: str | None) -> PreTrainedModel:
    """The checkpoint's causal LM (safetensors or GGUF only) at ``cfg.dtype``."""
    _, gguf_file = cfg.source()
    where = describe_source(cfg)
    field = "gguf_file" if gguf_file is not None else "path"
    load_kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if gguf_file is not None:
        load_kwargs["gguf_file"] = gguf_file
    try:
        hf_config = AutoConfig.from_pretrained(checkpoint, **load_kwargs)
    except (OSError, ValueError) as error:
        raise InputError(f"backbone.{field}: cannot read a model config from {where}: {first_line(error)}") from error
    check_model_type(hf_config.model_type, expected_model_type, where)
    if building_on_meta():
        return _meta_checked(cfg, checkpoint, hf_config)
    if gguf_file is None:
        load_kwargs["use_safetensors"] = True
    try:
        return AutoModelForCausalLM.from_pretrained(
            checkpoint, config=hf_config, dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation,
            **load_kwargs,
        )
    except (OSError, ValueError, SafetensorError) as error:
        raise InputError(
            f"backbone.{field}: cannot load a causal LM from {where} (safetensors or GGUF only): {first_line(error)}"
        ) from error


def checkpoint_safetensors(directory: Path) -> list[Path]:
    """The safetensors files of a transformers checkpoint directory (``model.safetensors`` or the
    shards its index lists); empty when it has none."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(read_regular(index, "a shard index", MAX_INDEX_BYTES))["weight_map"]
            return sorted({directory / name for name in weight_map.values()})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{index}: not a valid shard index ({first_line(error)})") from None
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def _meta_checked(cfg: CausalLMConfig, checkpoint: str, hf_config: PreTrainedConfig) -> PreTrainedModel:
    """The architecture of ``checkpoint``'s config on the meta device (inside
    :func:`swv.nn.meta.meta_build`), every parameter checked against the shapes in the
    checkpoint's safetensors headers, or the GGUF file's tensor headers (``gguf_file``, whose
    metadata is the config; see :func:`swv.backbones.gguf_header.gguf_shapes`)."""
    model = AutoModelForCausalLM.from_config(
        hf_config, dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    if not reading_weights():  # config only (a training plan): nothing to compare
        return model
    directory, gguf_file = Path(checkpoint), cfg.source()[1]
    what = f"backbone ({hf_config.model_type})"
    if gguf_file is None:
        stored = safetensors_shapes(checkpoint_safetensors(directory))
        check_shapes(model.named_parameters(), stored, what, str(directory / "config.json"))
        return model
    stored_gguf = gguf_shapes(directory / gguf_file, model)
    if stored_gguf is not None:
        check_shapes(model.named_parameters(), stored_gguf, what, f"the metadata of {directory / gguf_file} (backbone.gguf_file)")
    return model


def _random_init_config_class(model_type: str | None, config_class: type[PreTrainedConfig] | None,
                              expected_model_type: str | None) -> type[PreTrainedConfig]:
    if config_class is not None:
        if model_type is not None and model_type != expected_model_type:
            raise ComponentError(
                f"backbone.random_init.model_type: {model_type!r} does not match this backbone's {expected_model_type!r}"
            )
        return config_class
    if model_type is None:
        raise ComponentError("backbone.random_init: 'model_type' is required for the generic causal LM backbone")
    try:
        return type(AutoConfig.for_model(model_type))
    except ValueError as error:
        raise ComponentError(f"backbone.random_init.model_type: {first_line(error)}") from error


def random_init_config(kwargs: dict[str, Any], tokenizer: Any, pad_token_id: int,
                       config_class: type[PreTrainedConfig] | None, expected_model_type: str | None) -> PreTrainedConfig:
    """Instantiate the architecture's transformers config from ``random_init``; unknown keys are errors."""
    kwargs = dict(kwargs)
    config_cls = _random_init_config_class(kwargs.pop("model_type", None), config_class, expected_model_type)
    kwargs.setdefault("vocab_size", len(tokenizer))
    kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    kwargs.setdefault("pad_token_id", pad_token_id)
    try:
        hf_config = config_cls(**kwargs)
    except (TypeError, ValueError, StrictDataclassError) as error:
        raise ComponentError(f"backbone.random_init: invalid {config_cls.__name__}: {first_line(error)}") from error
    fields = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
    # Keys the config neither declares nor consumes (legacy aliases are consumed) stay as
    # plain attributes: those are typos that transformers would silently ignore.
    unknown = sorted(k for k in kwargs if k not in fields and k in vars(hf_config))
    if fields and unknown:
        raise ComponentError(f"backbone.random_init: unknown {config_cls.__name__} field(s): {', '.join(unknown)}")
    return hf_config


def build_random(cfg: CausalLMConfig, hf_config: PreTrainedConfig) -> PreTrainedModel:
    return AutoModelForCausalLM.from_config(
        hf_config, dtype=torch_dtype(cfg.dtype), attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )


def name_token_ids(tokenizer: Any, token: str, base_rows: int, new_ids: list[int]) -> list[int]:
    """Ids of the words in a token's name (``<throat_clearing>`` -> "throat clearing"), keeping
    only ids of rows ``< base_rows`` (the checkpoint's own tokens)."""
    words = re.sub(r"[\W_]+", " ", token).strip()
    if not words:
        return []
    new = set(new_ids)
    return [i for i in tokenizer(words, add_special_tokens=False)["input_ids"] if i < base_rows and i not in new]


def _embedding_weights(model: PreTrainedModel) -> list[torch.Tensor]:
    """The input embedding, and the output embedding and its bias unless tied to it."""
    input_weight = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    weights = [input_weight]
    if output is not None and output.weight.data_ptr() != input_weight.data_ptr():
        weights.append(output.weight)
    if output is not None and getattr(output, "bias", None) is not None:
        weights.append(output.bias)
    return weights


def init_new_token_rows(model: PreTrainedModel, tokenizer: Any, new_ids: list[int], base_rows: int) -> None:
    """Set the input- and output-embedding rows (and output bias) of each newly added token to the
    mean over the tokens of the words in its name, or over rows ``[0, base_rows)`` when the name
    gives none. Rows of tokens the tokenizer already had are left as saved."""
    if not new_ids:
        return
    tokens = tokenizer.convert_ids_to_tokens(new_ids)
    sources = {i: name_token_ids(tokenizer, t, base_rows, new_ids) for i, t in zip(new_ids, tokens)}
    with torch.no_grad():
        for weight in _embedding_weights(model):
            fallback = weight[:base_rows].float().mean(dim=0)
            for token_id, source in sources.items():
                row = weight[source].float().mean(dim=0) if source else fallback
                weight[token_id] = row.to(weight.dtype)


def fit_embeddings(model: PreTrainedModel, tokenizer: Any, added_ids: list[int], new_ids: list[int], base_vocab: int) -> None:
    """Grow the embeddings only when a tokenizer id does not fit (grown rows, input and output,
    start as the mean of the old ones), then give each newly added token its own rows
    (:func:`init_new_token_rows`). Deterministic: the same checkpoint always gives the same model."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    top = max(added_ids)
    if top >= old_rows:
        model.resize_token_embeddings(max(len(tokenizer), top + 1), mean_resizing=False)
        with torch.no_grad():
            for weight in _embedding_weights(model):
                weight[old_rows:] = weight[:old_rows].mean(dim=0, keepdim=True)
    init_new_token_rows(model, tokenizer, new_ids, min(old_rows, base_vocab))
