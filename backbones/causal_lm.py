"""A Hugging Face causal LM (+ tokenizer) as a swv backbone, with an optional LoRA.

The generic component behind the ``llama`` and ``qwen2`` presets. It loads a checkpoint
(a local directory or hub id, safetensors only, or a GGUF file through transformers' GGUF
support) or builds a randomly initialised model from config kwargs, registers the audio
placeholder token, freezes every base weight and, when configured, wraps the model with a
PEFT LoRA (the only trainable parameters).

Shapes: ``B`` batch, ``L`` sequence length, ``D`` hidden size, ``V`` vocabulary size (rows of
the output embedding, which can exceed ``len(tokenizer)`` for padded vocabularies).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from huggingface_hub.errors import StrictDataclassError
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
)

from swv.backbones.base import AUDIO_TOKEN, Backbone, is_peft_adapter_weight
from swv.backbones.shared_prefix import (
    MIN_SHARED_PREFIX,
    decode_with_shared_prefix,
    shared_prefix_length,
)
from swv.core.config import ComponentConfig
from swv.core.dtypes import torch_dtype
from swv.core.errors import ComponentError, InputError, UsageError, first_line
from swv.core.hub import resolve_dir
from swv.core.io import atomic_directory
from swv.nn.context import BackboneInfo
from swv.nn.vocab_logits import VocabLogits

#: Names PEFT gives the files of a saved adapter.
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHTS_FILE = "adapter_model.safetensors"
#: Files of a hub checkpoint the backbone needs: configs, tokenizer files, safetensors weights.
_CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
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


class CausalLMConfig(ComponentConfig):
    """Config of a causal-LM backbone.

    Exactly one of ``path`` (a local directory or hub id; with ``gguf_file`` the directory or
    repo holding that file) and ``random_init`` (kwargs of the architecture's transformers
    config, e.g. ``LlamaConfig``, for a randomly initialised model, which needs ``tokenizer``).
    An absolute ``gguf_file`` may stand alone: its directory is then the path.
    """

    path: str | None = None
    #: Branch, tag or commit of a hub id ``path`` (exports record the commit used).
    revision: str | None = None
    gguf_file: str | None = None
    random_init: dict[str, Any] | None = None
    tokenizer: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    lora: LoraSettings | None = None
    trust_remote_code: bool = False
    audio_token: str = AUDIO_TOKEN
    #: Extra tokens added as special tokens after the audio token, in this order (e.g. the
    #: sound tags of ``swv data sound-insert``; training adds every tag its manifests carry).
    #: Rows of tokens new to the tokenizer start as the mean embedding of the words of their name
    #: (``<throat_clearing>`` -> "throat clearing"); ``lora.train_added_tokens`` trains them.
    special_tokens: list[str] = []
    attn_implementation: str | None = "sdpa"
    gradient_checkpointing: bool = False
    #: In training, run the prompt prefix that every row of a batch shares (template header and
    #: system prompt) once per batch (see :mod:`swv.backbones.shared_prefix`).
    share_prompt_prefix: bool = True
    chat_template: str | None = None

    @model_validator(mode="after")
    def _check_source(self) -> CausalLMConfig:
        gguf_absolute = self.gguf_file is not None and Path(self.gguf_file).is_absolute()
        if self.random_init is not None:
            if self.path is not None or self.gguf_file is not None:
                raise ValueError("set either 'path' (with optional 'gguf_file') or 'random_init', not both")
            if self.tokenizer is None:
                raise ValueError("'random_init' needs 'tokenizer' (a tokenizer directory or hub id)")
        elif self.path is None and not gguf_absolute:
            raise ValueError("one of 'path' (a checkpoint directory or hub id) or 'random_init' is required")
        if self.revision is not None and self.path is None:
            raise ValueError("'revision' pins a hub id given as 'path'; it needs 'path'")
        if self.gguf_file is not None and not self.gguf_file.endswith(".gguf"):
            raise ValueError(f"'gguf_file' must name a .gguf file, got {self.gguf_file!r}")
        if not self.audio_token or self.audio_token.strip() != self.audio_token:
            raise ValueError(
                f"'audio_token' must be a non-empty token without surrounding spaces, got {self.audio_token!r}"
            )
        for token in self.special_tokens:
            if not token or any(c.isspace() for c in token):
                raise ValueError(f"'special_tokens' entries must be non-empty and without spaces, got {token!r}")
        if len(set(self.special_tokens)) != len(self.special_tokens) or self.audio_token in self.special_tokens:
            raise ValueError("'special_tokens' must be distinct and must not repeat 'audio_token'")
        return self

    def source(self) -> tuple[str | None, str | None]:
        """``(path, gguf_file)`` as transformers takes them (an absolute GGUF path is split)."""
        if self.gguf_file is not None and Path(self.gguf_file).is_absolute():
            gguf = Path(self.gguf_file)
            return str(gguf.parent), gguf.name
        return self.path, self.gguf_file


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).exists()


def positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, S]`` 0/1 mask (past + current tokens) -> ``[B, length]`` position ids of the last
    ``length`` tokens, counting only attended tokens (so left padding does not shift them)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp(min=0)
    return positions[:, -length:]


def _enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing (gradients reach ``inputs_embeds`` with a frozen base);
    ``activation_checkpointing_enable`` replaced ``gradient_checkpointing_enable`` in transformers 5.x."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class _LMHeadWeight:
    """Callable returning a backbone's current ``[V, D]`` LM-head weight (detached)."""

    def __init__(self, backbone: CausalLMBackbone) -> None:
        self._backbone = backbone

    def __call__(self) -> torch.Tensor:
        return self._backbone.hf_model.get_output_embeddings().weight.detach()

    def __repr__(self) -> str:
        return f"<LM-head weight of {type(self._backbone).__name__}>"


class _InputEmbeddingWeight(_LMHeadWeight):
    """Callable returning a backbone's current ``[V, D]`` input-embedding table (detached)."""

    def __call__(self) -> torch.Tensor:
        return self._backbone.hf_model.get_input_embeddings().weight.detach()

    def __repr__(self) -> str:
        return f"<input embeddings of {type(self._backbone).__name__}>"


class CausalLMBackbone(Backbone):
    """A transformers causal LM with its tokenizer, the audio token registered, base frozen.

    Subclasses (presets) set ``expected_model_type`` (a checkpoint of another architecture is
    refused) and ``hf_config_class`` (the transformers config ``random_init`` instantiates).
    Attributes: ``model`` (the HF model, a ``peft.PeftModel`` once a LoRA is applied),
    ``tokenizer``, ``audio_token_id``, ``special_token_ids`` (of ``config.special_tokens``),
    ``new_token_ids`` (those of the added tokens the loaded tokenizer did not have yet),
    ``pad_token_id``.
    """

    config_class: ClassVar[type[CausalLMConfig]] = CausalLMConfig
    config: CausalLMConfig
    expected_model_type: ClassVar[str | None] = None
    hf_config_class: ClassVar[type[PreTrainedConfig] | None] = None
    #: The model's logits are its LM head (a Linear) applied to the decoder's last hidden state,
    #: nothing after (Llama, Qwen2). A subclass for an architecture that rescales or soft-caps
    #: its logits (Gemma 2, Cohere, Granite...) sets False: training then uses the full logits.
    linear_lm_head: ClassVar[bool] = True

    def __init__(self, config: CausalLMConfig | Mapping[str, Any]) -> None:
        if not isinstance(config, CausalLMConfig):
            config = self.config_class.model_validate(dict(config))
        super().__init__(config)
        self._check_local_files()
        self._checkpoint = self._resolve_checkpoint()
        self.tokenizer = self._load_tokenizer()
        known_tokens = self.tokenizer.get_vocab()
        self._base_vocab_size = len(self.tokenizer)
        self.audio_token_id = self._register_audio_token()
        self.special_token_ids = self._register_special_tokens()
        added = [self.config.audio_token, *self.config.special_tokens]
        self.new_token_ids = [i for t, i in zip(added, self.added_token_ids) if t not in known_tokens]
        self.pad_token_id = self._ensure_pad_token()
        model = self._build_random_model() if config.random_init is not None else self._load_pretrained_model()
        self._fit_embeddings(model)
        model.requires_grad_(False)
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self.pad_token_id
        if config.gradient_checkpointing:
            _enable_activation_checkpointing(model)
        if config.lora is not None:
            model = self._apply_lora(model, config.lora)
        self.model = model

    # -- loading ----------------------------------------------------------------------------
    def _describe(self) -> str:
        path, gguf_file = self.config.source()
        return f"{path}/{gguf_file}" if gguf_file else str(path)

    def _check_local_files(self) -> None:
        """Fail early, with the field name, on local paths that do not exist."""
        cfg = self.config
        path, gguf_file = cfg.source()
        if path is not None and _looks_local(path):
            directory = Path(path).expanduser()
            if not directory.is_dir():
                raise InputError(
                    f"backbone.path: {path} does not exist or is not a directory "
                    "(expected a checkpoint directory or hub id)"
                )
            if gguf_file is not None and not (directory / gguf_file).is_file():
                raise InputError(f"backbone.gguf_file: {directory / gguf_file} does not exist")
        tokenizer = cfg.tokenizer
        if tokenizer is not None and _looks_local(tokenizer) and not Path(tokenizer).expanduser().exists():
            raise InputError(
                f"backbone.tokenizer: {tokenizer} does not exist (expected a tokenizer directory or hub id)"
            )

    def _resolve_checkpoint(self) -> str | None:
        """The local directory of ``path`` (a hub id at ``revision`` is fetched into the Hugging
        Face cache by :func:`swv.core.hub.resolve_dir`, which sets :attr:`hub_commit`); ``None`` for
        ``random_init``."""
        path, gguf_file = self.config.source()
        if path is None:
            return None
        patterns = [*_CHECKPOINT_PATTERNS, *([gguf_file] if gguf_file is not None else [])]
        resolved = resolve_dir(path, "backbone.path", revision=self.config.revision, allow_patterns=patterns)
        self.hub_commit = resolved.commit
        return str(resolved.path)

    def _load_tokenizer(self) -> Any:
        cfg = self.config
        _, gguf_file = cfg.source()
        source = cfg.tokenizer if cfg.tokenizer is not None else self._checkpoint
        assert source is not None  # guaranteed by CausalLMConfig
        field = "tokenizer" if cfg.tokenizer is not None else "path"
        kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        if cfg.tokenizer is None and gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        if _looks_local(source):
            source = str(Path(source).expanduser())
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as error:
            raise InputError(
                f"backbone.{field}: cannot load a tokenizer from {source}: {first_line(error)}"
            ) from error
        if cfg.chat_template is not None:
            tokenizer.chat_template = cfg.chat_template
        return tokenizer

    def _register_audio_token(self) -> int:
        tok = self.tokenizer
        token = self.config.audio_token
        tok.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
        token_id = tok.convert_tokens_to_ids(token)
        encoded = tok(token, add_special_tokens=False)["input_ids"]
        if not isinstance(token_id, int) or encoded != [token_id]:
            raise ComponentError(
                f"backbone.audio_token: the tokenizer does not keep {token!r} as one token (got ids {encoded})"
            )
        named = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id} - {None}
        if token_id in named:
            raise ComponentError(
                f"backbone.audio_token: {token!r} is already the tokenizer's bos/eos/pad/unk token; "
                "choose a distinct token"
            )
        return int(token_id)

    def _register_special_tokens(self) -> list[int]:
        tok = self.tokenizer
        tokens = self.config.special_tokens
        if not tokens:
            return []
        tok.add_special_tokens({"extra_special_tokens": list(tokens)}, replace_extra_special_tokens=False)
        ids = []
        for token in tokens:
            token_id = tok.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or tok(token, add_special_tokens=False)["input_ids"] != [token_id]:
                raise ComponentError(f"backbone.special_tokens: the tokenizer does not keep {token!r} as one token")
            ids.append(int(token_id))
        return ids

    def _ensure_pad_token(self) -> int:
        tok = self.tokenizer
        if tok.pad_token_id is None:
            if tok.eos_token is None:
                source = self.config.tokenizer or self._describe()
                raise InputError(f"backbone.tokenizer: the tokenizer of {source} has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        return int(tok.pad_token_id)

    def _load_pretrained_model(self) -> PreTrainedModel:
        cfg = self.config
        _, gguf_file = cfg.source()
        path = self._checkpoint
        assert path is not None  # guaranteed by CausalLMConfig
        where = self._describe()
        field = "gguf_file" if gguf_file is not None else "path"
        load_kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        if gguf_file is not None:
            load_kwargs["gguf_file"] = gguf_file
        try:
            hf_config = AutoConfig.from_pretrained(path, **load_kwargs)
        except (OSError, ValueError) as error:
            raise InputError(
                f"backbone.{field}: cannot read a model config from {where}: {first_line(error)}"
            ) from error
        self._check_model_type(hf_config.model_type, where)
        if gguf_file is None:
            load_kwargs["use_safetensors"] = True
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                config=hf_config,
                dtype=torch_dtype(cfg.dtype),
                attn_implementation=cfg.attn_implementation,
                **load_kwargs,
            )
        except (OSError, ValueError, SafetensorError) as error:
            raise InputError(
                f"backbone.{field}: cannot load a causal LM from {where} (safetensors or GGUF only): "
                f"{first_line(error)}"
            ) from error
        return model

    def _check_model_type(self, found: str, where: str) -> None:
        expected = self.expected_model_type
        if expected is not None and found != expected:
            raise ComponentError(
                f"backbone.path: {where} is a {found!r} model but this backbone expects model_type {expected!r}"
            )

    def _hf_config_for_random_init(self, kwargs: dict[str, Any]) -> PreTrainedConfig:
        """Instantiate the architecture's transformers config; unknown keys are errors."""
        kwargs = dict(kwargs)
        model_type = kwargs.pop("model_type", None)
        if self.hf_config_class is not None:
            if model_type is not None and model_type != self.expected_model_type:
                raise ComponentError(
                    f"backbone.random_init.model_type: {model_type!r} does not match this backbone's "
                    f"{self.expected_model_type!r}"
                )
            config_cls: type[PreTrainedConfig] = self.hf_config_class
        else:
            if model_type is None:
                raise ComponentError(
                    "backbone.random_init: 'model_type' is required for the generic causal LM backbone"
                )
            try:
                config_cls = type(AutoConfig.for_model(model_type))
            except ValueError as error:
                raise ComponentError(f"backbone.random_init.model_type: {first_line(error)}") from error
        tok = self.tokenizer
        kwargs.setdefault("vocab_size", len(tok))
        kwargs.setdefault("bos_token_id", tok.bos_token_id)
        kwargs.setdefault("eos_token_id", tok.eos_token_id)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        try:
            hf_config = config_cls(**kwargs)
        except (TypeError, ValueError, StrictDataclassError) as error:
            raise ComponentError(
                f"backbone.random_init: invalid {config_cls.__name__}: {first_line(error)}"
            ) from error
        fields = {f.name for f in dataclasses.fields(config_cls)} if dataclasses.is_dataclass(config_cls) else set()
        # Keys the config neither declares nor consumes (legacy aliases are consumed) stay as
        # plain attributes: those are typos that transformers would silently ignore.
        unknown = sorted(k for k in kwargs if k not in fields and k in vars(hf_config))
        if fields and unknown:
            raise ComponentError(
                f"backbone.random_init: unknown {config_cls.__name__} field(s): {', '.join(unknown)}"
            )
        return hf_config

    def _build_random_model(self) -> PreTrainedModel:
        assert self.config.random_init is not None
        hf_config = self._hf_config_for_random_init(self.config.random_init)
        return AutoModelForCausalLM.from_config(
            hf_config,
            dtype=torch_dtype(self.config.dtype),
            attn_implementation=self.config.attn_implementation,
            trust_remote_code=self.config.trust_remote_code,
        )

    @property
    def added_token_ids(self) -> list[int]:
        """Ids of the tokens swv adds: the audio placeholder (also the CTC blank), then
        ``special_tokens``."""
        return [self.audio_token_id, *self.special_token_ids]

    def _fit_embeddings(self, model: PreTrainedModel) -> None:
        """Grow the embeddings only when a tokenizer id does not fit (grown rows, input and
        output, start as the mean of the old ones), then give each newly added token its own
        rows (:meth:`_init_new_token_rows`). Deterministic: the same checkpoint always gives the
        same model."""
        old_rows = model.get_input_embeddings().weight.shape[0]
        top = max(self.added_token_ids)
        if top >= old_rows:
            new_rows = max(len(self.tokenizer), top + 1)
            model.resize_token_embeddings(new_rows, mean_resizing=False)
            with torch.no_grad():
                input_weight = model.get_input_embeddings().weight
                input_weight[old_rows:] = input_weight[:old_rows].mean(dim=0, keepdim=True)
                output = model.get_output_embeddings()
                if output is not None and output.weight.data_ptr() != input_weight.data_ptr():
                    output.weight[old_rows:] = output.weight[:old_rows].mean(dim=0, keepdim=True)
                if output is not None and getattr(output, "bias", None) is not None:
                    output.bias[old_rows:] = output.bias[:old_rows].mean()
        self._init_new_token_rows(model, min(old_rows, self._base_vocab_size))

    def _name_token_ids(self, token: str, base_rows: int) -> list[int]:
        """Ids of the words in a token's name (``<throat_clearing>`` -> "throat clearing"),
        keeping only ids of rows ``< base_rows`` (the checkpoint's own tokens)."""
        words = re.sub(r"[\W_]+", " ", token).strip()
        if not words:
            return []
        new = set(self.new_token_ids)
        ids = self.tokenizer(words, add_special_tokens=False)["input_ids"]
        return [i for i in ids if i < base_rows and i not in new]

    def _init_new_token_rows(self, model: PreTrainedModel, base_rows: int) -> None:
        """Set the input- and output-embedding rows (and output bias) of each newly added token
        to the mean over the tokens of the words in its name, or over rows ``[0, base_rows)``
        when the name gives none. Rows of tokens the tokenizer already had are left as saved."""
        if not self.new_token_ids:
            return
        tokens = self.tokenizer.convert_ids_to_tokens(self.new_token_ids)
        sources = {i: self._name_token_ids(t, base_rows) for i, t in zip(self.new_token_ids, tokens)}
        input_weight = model.get_input_embeddings().weight
        output = model.get_output_embeddings()
        weights = [input_weight]
        if output is not None and output.weight.data_ptr() != input_weight.data_ptr():
            weights.append(output.weight)
        if output is not None and getattr(output, "bias", None) is not None:
            weights.append(output.bias)
        with torch.no_grad():
            for weight in weights:
                fallback = weight[:base_rows].float().mean(dim=0)
                for token_id, source in sources.items():
                    row = weight[source].float().mean(dim=0) if source else fallback
                    weight[token_id] = row.to(weight.dtype)

    def _apply_lora(self, model: PreTrainedModel, lora: LoraSettings) -> PeftModel:
        module_names = [name for name, _ in model.named_modules()]
        for target in lora.target_modules:
            if not any(name == target or name.endswith("." + target) for name in module_names):
                raise ComponentError(
                    f"backbone.lora.target_modules: {target!r} matches no module of {type(model).__name__}"
                )
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            trainable_token_indices=self._trainable_token_indices(model) if lora.train_added_tokens else None,
        )
        return get_peft_model(model, peft_config)

    def _trainable_token_indices(self, model: PreTrainedModel) -> dict[str, list[int]]:
        """PEFT's ``trainable_token_indices``: the added tokens' rows of the input embeddings and,
        when not tied to them (PEFT follows tied heads itself), of the output embeddings."""
        names = {module: name for name, module in model.named_modules()}
        input_embeddings = model.get_input_embeddings()
        indices = {names[input_embeddings]: self.added_token_ids}
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != input_embeddings.weight.data_ptr():
            indices[names[output]] = self.added_token_ids
        return indices

    # -- the Backbone interface ---------------------------------------------------------------
    @property
    def hf_model(self) -> PreTrainedModel:
        """The transformers model (LoRA layers injected, if any)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def has_lora(self) -> bool:
        return isinstance(self.model, PeftModel)

    @property
    def audio_token(self) -> str:
        return self.config.audio_token

    @property
    def special_tokens(self) -> list[str]:
        return list(self.config.special_tokens)

    @property
    def needs_bundle(self) -> bool:
        """A random init or a GGUF source: exports carry the weights in transformers' format."""
        return self.config.random_init is not None or self.config.gguf_file is not None

    def bundled_config(self, path: str, merged: bool = False) -> dict[str, Any]:
        changes: dict[str, Any] = {"path": path, "revision": None, "random_init": None, "gguf_file": None,
                                   "tokenizer": None}
        if merged:
            changes["lora"] = None
        return {**self.config.model_dump(mode="json"), **changes}

    def info(self) -> BackboneInfo:
        text_config = self.hf_model.config.get_text_config()
        return BackboneInfo(
            hidden_size=int(text_config.hidden_size),
            num_attention_heads=int(text_config.num_attention_heads),
            vocab_size=int(self.hf_model.get_output_embeddings().weight.shape[0]),
            audio_token_id=self.audio_token_id,
            pad_token_id=self.pad_token_id,
            added_token_ids=tuple(self.added_token_ids),
            output_embedding=_LMHeadWeight(self),
            input_embedding=_InputEmbeddingWeight(self),
        )

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, L, D]`` input embeddings."""
        return self.hf_model.get_input_embeddings()(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the LM on ``[B, L, D]`` embeddings.

        ``attention_mask`` is ``[B, S]`` (``S = L`` plus any cached length when
        ``past_key_values`` is passed). Without ``position_ids`` they are counted over attended
        tokens, so left- and right-padded rows get the positions generation uses. Other kwargs
        (``past_key_values``, ``use_cache``, ``labels``...) go to the HF model. Returns its
        ``CausalLMOutputWithPast`` (``logits`` ``[B, L, V]``).
        """
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1])
        return self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **kwargs,
        )

    def factored_logits(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> VocabLogits | None:
        """The decoder's final hidden states ``[B, L, D]`` (LoRA included; the rows' shared prompt
        prefix run once unless ``share_prompt_prefix`` is off) with the LM head: logits
        ``[B, L, V]`` that are never materialised. None when ``linear_lm_head`` is
        False, or when the head is not a plain ``Linear`` (e.g. wrapped by PEFT's trainable tokens
        for ``lora.train_added_tokens``): the caller then uses the full logits."""
        head = self.hf_model.get_output_embeddings()
        if not self.linear_lm_head or type(head) is not torch.nn.Linear:
            return None
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1])
        decoder = self.hf_model.get_decoder()
        prefix = 0
        if self.config.share_prompt_prefix and not self.config.gradient_checkpointing:
            prefix = min(shared_prefix_length(inputs_embeds, attention_mask, position_ids), inputs_embeds.shape[1] - 1)
        if prefix >= MIN_SHARED_PREFIX:
            hidden = decode_with_shared_prefix(decoder, inputs_embeds, attention_mask, position_ids, prefix)
        else:
            hidden = decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state
        return VocabLogits(hidden, head.weight, head.bias)

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **gen_kwargs: Any) -> torch.Tensor:
        """Generate from ``[B, L, D]`` (left-padded) prompt embeddings and their ``[B, L]`` mask.

        Returns ``[B, N]`` new token ids only (rows that stop early are filled with the pad
        id). ``gen_kwargs`` go to ``transformers``' ``generate`` (``max_new_tokens``,
        ``do_sample``...); the KV cache is on. The module's train/eval mode is left as is.
        """
        if gen_kwargs.get("input_ids") is not None or gen_kwargs.get("return_dict_in_generate"):
            raise UsageError(
                "backbone.generate: 'input_ids' and 'return_dict_in_generate' are not supported "
                "(the prompt is given as embeddings; new token ids are returned)"
            )
        gen_kwargs.setdefault("pad_token_id", self.pad_token_id)
        generation_config = self.hf_model.generation_config
        eos_configured = generation_config is not None and generation_config.eos_token_id is not None
        if not eos_configured and self.tokenizer.eos_token_id is not None:
            gen_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        # Decoder-only generate() starts from empty input_ids when given only inputs_embeds,
        # so the returned sequences are exactly the new tokens.
        return self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **gen_kwargs)

    # -- LoRA I/O -------------------------------------------------------------------------------
    def save_lora(self, directory: str | Path) -> bool:
        """Write the LoRA in PEFT's format (``adapter_model.safetensors`` +
        ``adapter_config.json``) into ``directory``, next to whatever it already holds; each
        file is renamed into place only once complete. False when no LoRA is applied.
        The only embedding rows saved are those of the added tokens with
        ``lora.train_added_tokens``."""
        if not isinstance(self.model, PeftModel):
            return False
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".lora.") as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
            for item in Path(tmp).iterdir():
                if item.is_file():
                    os.replace(item, directory / item.name)
        return True

    def _check_lora_fits(self, directory: Path, adapter_config: dict[str, Any]) -> None:
        """Every LoRA tensor must target an existing linear layer of matching shape; trained
        rows of added tokens must be those of this backbone's added tokens."""
        weights_file = directory / LORA_WEIGHTS_FILE
        base = self.hf_model
        token_rows = adapter_config.get("trainable_token_indices") or {}
        seen = 0
        with safe_open(str(weights_file), framework="pt") as handle:
            for key in handle.keys():
                is_rows = key.endswith(_TOKEN_ROWS_KEY)
                if not is_rows and ".lora_A." not in key and ".lora_B." not in key:
                    raise InputError(
                        f"{weights_file}: unexpected tensor {key!r} (only LoRA A/B weights and added-token rows "
                        "are supported)"
                    )
                split = _TOKEN_ROWS_KEY if is_rows else ".lora_"
                module_name = key.removeprefix(_LORA_KEY_PREFIX).split(split)[0]
                try:
                    module = base.get_submodule(module_name)
                except AttributeError:
                    raise InputError(
                        f"{weights_file}: LoRA targets {module_name!r}, which {type(base).__name__} does not have "
                        "(trained for another backbone?)"
                    ) from None
                shape = tuple(handle.get_slice(key).get_shape())
                if is_rows:
                    self._check_token_rows(weights_file, key, shape, module.weight, token_rows)
                    continue
                in_features = getattr(module, "in_features", None)
                out_features = getattr(module, "out_features", None)
                fits = len(shape) == 2 and (
                    shape[1] == in_features if ".lora_A." in key else shape[0] == out_features
                )
                if not fits:
                    raise InputError(
                        f"{weights_file}: {key} has shape {list(shape)}, which does not fit {module_name} "
                        f"(in={in_features}, out={out_features}; trained for another backbone?)"
                    )
                seen += 1
        if seen == 0:
            raise InputError(f"{weights_file}: holds no LoRA weights")

    def _check_token_rows(
        self, weights_file: Path, key: str, shape: tuple[int, ...], weight: torch.Tensor, token_rows: Any
    ) -> None:
        """Saved added-token rows ``[n_added, D]`` must be for exactly this backbone's added ids."""
        saved_ids = list(token_rows.values()) if isinstance(token_rows, dict) else [token_rows]
        if any(ids != self.added_token_ids for ids in saved_ids) or not saved_ids:
            raise InputError(
                f"{weights_file}: the LoRA trains the rows of token ids {saved_ids[0] if saved_ids else []}, but this "
                f"backbone's added tokens (audio token, special_tokens) have ids {self.added_token_ids}"
            )
        if shape != (len(self.added_token_ids), weight.shape[1]):
            raise InputError(
                f"{weights_file}: {key} has shape {list(shape)}, expected {[len(self.added_token_ids), weight.shape[1]]}"
            )

    def load_lora(self, directory: str | Path, trainable: bool = False) -> None:
        """Replace (or create) the LoRA with the one saved in ``directory`` (PEFT format).

        With ``trainable`` its weights require grad; the base stays frozen either way.
        """
        directory = Path(directory)
        config_file = directory / LORA_CONFIG_FILE
        if not config_file.is_file() or not (directory / LORA_WEIGHTS_FILE).is_file():
            raise InputError(f"{directory}: not a LoRA directory (expected {LORA_CONFIG_FILE} and {LORA_WEIGHTS_FILE})")
        try:
            adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"{config_file}: unreadable adapter config: {first_line(error)}") from error
        if adapter_config.get("peft_type") != "LORA":
            raise InputError(f"{config_file}: peft_type is {adapter_config.get('peft_type')!r}, expected 'LORA'")
        self._check_lora_fits(directory, adapter_config)
        base = self.model.unload() if isinstance(self.model, PeftModel) else self.model
        self.model = PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(trainable and is_peft_adapter_weight(name))

    # -- export ---------------------------------------------------------------------------------
    def merged_model(self) -> PreTrainedModel:
        """A copy of the model with the LoRA merged in (memory: a second full model), or the
        base model itself when no LoRA is applied."""
        if not isinstance(self.model, PeftModel):
            return self.model
        return copy.deepcopy(self.model).merge_and_unload()

    def _base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base weights under their transformers names (PEFT adapter tensors left out)."""
        state: dict[str, torch.Tensor] = {}
        for name, tensor in self.hf_model.state_dict().items():
            if is_peft_adapter_weight(name):
                continue
            state[name.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = tensor
        return state

    def save_base(self, directory: str | Path, merged: bool = False) -> None:
        """``save_pretrained`` the full model and the tokenizer (audio token and chat template
        included) into ``directory`` (replaced atomically), loadable as a ``path``.

        Without ``merged`` the base weights are saved without the LoRA; with it, the LoRA is
        merged in first (see :meth:`merged_model`).
        """
        if merged:
            model, state_dict = self.merged_model(), None
        elif isinstance(self.model, PeftModel):
            model, state_dict = self.hf_model, self._base_state_dict()
        else:
            model, state_dict = self.model, None
        with atomic_directory(directory) as tmp:
            model.save_pretrained(str(tmp), state_dict=state_dict)
            self.tokenizer.save_pretrained(str(tmp))

    def trainable_parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)
