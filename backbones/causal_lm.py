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

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from peft import PeftModel
from pydantic import model_validator
from transformers import PreTrainedConfig, PreTrainedModel

from swv.backbones import export, hf_loading, lora_io
from swv.backbones.base import AUDIO_TOKEN, Backbone
from swv.backbones.lora_io import LoraSettings
from swv.backbones.shared_prefix import (
    MIN_SHARED_PREFIX,
    decode_with_shared_prefix,
    shared_prefix_length,
)
from swv.core.config import ComponentConfig
from swv.core.errors import UsageError
from swv.nn.context import BackboneInfo
from swv.nn.vocab_logits import VocabLogits

__all__ = ["CausalLMBackbone", "CausalLMConfig", "LoraSettings", "positions_from_mask"]


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
        hf_loading.check_local_files(config)
        resolved = hf_loading.resolve_checkpoint(config)
        if resolved is not None:
            self.hub_commit = resolved.commit
        checkpoint = str(resolved.path) if resolved is not None else None
        self.tokenizer = self._load_tokens(checkpoint)
        model = self._build_model(checkpoint)
        hf_loading.fit_embeddings(model, self.tokenizer, self.added_token_ids, self.new_token_ids, self._base_vocab_size)
        model.requires_grad_(False)
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self.pad_token_id
        if config.gradient_checkpointing:
            _enable_activation_checkpointing(model)
        if config.lora is not None:
            model = lora_io.apply_lora(model, config.lora, self.added_token_ids)
        self.model = model

    # -- loading (swv.backbones.hf_loading) -----------------------------------------------------
    def _load_tokens(self, checkpoint: str | None) -> Any:
        """The tokenizer with the audio token and ``special_tokens`` registered (sets the token id
        attributes and ``new_token_ids``, the added tokens it did not know yet)."""
        cfg = self.config
        tokenizer = hf_loading.load_tokenizer(cfg, checkpoint)
        known_tokens = tokenizer.get_vocab()
        self._base_vocab_size = len(tokenizer)
        self.audio_token_id = hf_loading.register_audio_token(tokenizer, cfg.audio_token)
        self.special_token_ids = hf_loading.register_special_tokens(tokenizer, cfg.special_tokens)
        added = [cfg.audio_token, *cfg.special_tokens]
        self.new_token_ids = [i for t, i in zip(added, self.added_token_ids) if t not in known_tokens]
        self.pad_token_id = hf_loading.ensure_pad_token(tokenizer, cfg.tokenizer or hf_loading.describe_source(cfg))
        return tokenizer

    def _build_model(self, checkpoint: str | None) -> PreTrainedModel:
        cfg = self.config
        if cfg.random_init is None:
            assert checkpoint is not None  # guaranteed by CausalLMConfig
            return hf_loading.load_pretrained(cfg, checkpoint, self.expected_model_type)
        hf_config = hf_loading.random_init_config(
            cfg.random_init, self.tokenizer, self.pad_token_id, self.hf_config_class, self.expected_model_type
        )
        return hf_loading.build_random(cfg, hf_config)

    @property
    def added_token_ids(self) -> list[int]:
        """Ids of the tokens swv adds: the audio placeholder (also the CTC blank), then
        ``special_tokens``."""
        return [self.audio_token_id, *self.special_token_ids]

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
        a ``cache`` is passed). Without ``position_ids`` they are counted over attended
        tokens, so left- and right-padded rows get the positions generation uses. Other kwargs
        (``cache``, ``use_cache``, ``labels``...) go to the HF model. Returns its
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

    # -- LoRA I/O (swv.backbones.lora_io) --------------------------------------------------------
    def save_lora(self, directory: str | Path) -> bool:
        """Write the LoRA in PEFT's format (``adapter_model.safetensors`` + ``adapter_config.json``)
        into ``directory`` (see :func:`swv.backbones.lora_io.save_lora`). False when no LoRA is applied."""
        if not isinstance(self.model, PeftModel):
            return False
        lora_io.save_lora(self.model, directory)
        return True

    def load_lora(self, directory: str | Path, trainable: bool = False) -> None:
        """Replace (or create) the LoRA with the one saved in ``directory`` (PEFT format), checked
        against this backbone first. With ``trainable`` its weights require grad; the base stays
        frozen either way."""
        self.model = lora_io.load_lora(self.model, directory, self.added_token_ids, trainable)

    # -- export (swv.backbones.export) ----------------------------------------------------------
    def merged_model(self) -> PreTrainedModel:
        """A copy of the model with the LoRA merged in, or the base model itself without a LoRA."""
        return export.merged_model(self.model)

    def save_base(self, directory: str | Path, merged: bool = False) -> None:
        """``save_pretrained`` the full model and the tokenizer into ``directory`` (replaced
        atomically): the base weights without the LoRA, or with it merged in (``merged``)."""
        export.save_base(self.model, self.tokenizer, directory, merged)

    def trainable_parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)
