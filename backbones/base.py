"""The backbone interface every ``backbone`` component implements (contract: docs/plugins.md)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from swv.core.errors import ComponentError
from swv.nn.context import BackboneInfo
from swv.nn.vocab_logits import VocabLogits

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: The special token that marks where a prompt's audio goes (also the CTC blank).
AUDIO_TOKEN = "<audio_patch>"


#: Name parts of the parameters a backbone's PEFT adapter holds: LoRA weights and the trained
#: embedding rows of added tokens (PEFT trainable tokens, ``lora.train_added_tokens``).
_PEFT_ADAPTER_MARKS = (".lora_", ".trainable_tokens_")


def is_peft_adapter_weight(name: str) -> bool:
    """Whether a parameter (or saved tensor) name belongs to a PEFT adapter rather than the base."""
    return any(mark in name for mark in _PEFT_ADAPTER_MARKS)


class Backbone(nn.Module, metaclass=ABCMeta):
    """A causal LM plus its tokenizer, with the audio placeholder token registered.

    Constructed as ``cls(config)`` by the registry. Subclasses set ``model`` (the module that
    holds every LM weight; a ``peft.PeftModel`` once a LoRA is applied), ``tokenizer`` (a
    Hugging Face tokenizer with a chat template) and ``audio_token_id`` (the id of the audio
    placeholder, one token), and implement :attr:`hf_model`, :meth:`info`, :meth:`embed_tokens`,
    :meth:`forward` and :meth:`generate`. LoRA support and bundling have defaults (none).
    LoRA parameter names contain ``.lora_`` (PEFT's naming): stages select them with ``lora``.
    """

    #: Every member swv's core reads or calls on a backbone (docs/plugins.md lists each one;
    #: tests/test_plugin_docs.py checks this list against the core's code and the doc).
    CORE_MEMBERS: ClassVar[tuple[str, ...]] = (
        "config", "model", "tokenizer", "audio_token_id", "hf_model", "info", "embed_tokens", "forward",
        "factored_logits", "generate", "audio_token", "special_tokens", "save_lora", "load_lora", "needs_bundle",
        "save_base", "bundled_config", "hub_commit",
    )
    #: Config fields the core reads, or sets, when a backbone's config declares them.
    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = (
        "path", "tokenizer", "gguf_file", "random_init", "revision", "lora", "special_tokens", "trust_remote_code",
    )

    config_class: ClassVar[type]
    #: The validated config (an instance of the component's registered pydantic model).
    config: BaseModel
    model: nn.Module
    tokenizer: Any
    audio_token_id: int
    #: Commit of the Hugging Face Hub snapshot the weights were loaded from (``None`` when not
    #: from the Hub). An export that references the backbone records it as the config's
    #: ``revision`` (the config must then have a ``revision`` field).
    hub_commit: str | None = None

    def __init__(self, config: BaseModel) -> None:
        super().__init__()
        self.config = config

    @property
    def audio_token(self) -> str:
        """The audio placeholder as text (what prompts contain where the audio goes)."""
        return str(self.tokenizer.convert_ids_to_tokens(self.audio_token_id))

    @property
    def special_tokens(self) -> list[str]:
        """Extra special tokens registered after the audio token (e.g. sound tags). Default: none.

        A backbone that can learn tags takes them from a ``special_tokens: list[str]`` config
        field: training a fresh model on data with tags sets it to the recipe's tags."""
        return []

    @property
    @abstractmethod
    def hf_model(self) -> PreTrainedModel:
        """The transformers causal LM (LoRA layers injected, if any; no PEFT wrapper): the core
        reads its ``generation_config`` (end-of-answer ids)."""

    @abstractmethod
    def info(self) -> BackboneInfo:
        """Facts the adapters need (width, heads, vocabulary rows, audio and pad ids, LM head)."""

    @abstractmethod
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, L, D]`` input embeddings."""

    @abstractmethod
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the LM on ``[B, L, D]`` embeddings with a ``[B, L]`` mask (right padding in training);
        returns an output with ``logits [B, L, V]`` (Hugging Face ``CausalLMOutputWithPast``)."""

    def factored_logits(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> VocabLogits | None:
        """The LM's logits ``[B, L, V]`` kept factored (final hidden states ``[B, L, D]`` + the LM
        head), so that a loss runs the head only where it needs it; the same arguments as
        :meth:`forward` (no cache). None (the default) when the backbone's logits are not a plain
        linear map of its hidden states: callers then use :meth:`forward`'s logits."""
        return None

    @abstractmethod
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Generate from left-padded ``[B, L, D]`` embeddings (KV cache on); returns only the new
        token ids ``[B, N]``. ``kwargs`` are transformers generation arguments."""

    def save_lora(self, directory: str | Path) -> bool:
        """Write the LoRA in PEFT's format (``adapter_model.safetensors`` +
        ``adapter_config.json``) into ``directory``; False when no LoRA is applied (the default)."""
        return False

    def load_lora(self, directory: str | Path, trainable: bool = False) -> None:
        """Replace (or create) the LoRA with the one :meth:`save_lora` wrote to ``directory``."""
        raise ComponentError(f"backbone {type(self).__name__} does not support LoRA ({directory} holds one)")

    @property
    def needs_bundle(self) -> bool:
        """True when ``cls(config)`` would not rebuild these base weights (e.g. a random init or a
        GGUF source), so an export must carry a copy (:meth:`save_base` + :meth:`bundled_config`).
        Default: False."""
        return False

    def save_base(self, directory: str | Path, merged: bool = False) -> None:
        """Write the full model and its tokenizer to ``directory`` (replaced atomically), loadable
        through :meth:`bundled_config`; with ``merged`` the LoRA is merged into the weights."""
        raise ComponentError(f"backbone {type(self).__name__} cannot be bundled (it implements no save_base)")

    def bundled_config(self, path: str, merged: bool = False) -> dict[str, Any]:
        """This backbone's config arguments (JSON values, without ``name``) changed to load the
        copy :meth:`save_base` wrote to ``path`` (without a LoRA when ``merged``). A relative
        ``path`` field is resolved against the model directory on load."""
        raise ComponentError(f"backbone {type(self).__name__} cannot be bundled (it implements no bundled_config)")
