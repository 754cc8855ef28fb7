"""The backbone interface every ``backbone`` component implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from swv.model.context import BackboneInfo
from swv.model.vocab_logits import VocabLogits

#: The special token that marks where a prompt's audio goes (also the CTC blank).
AUDIO_TOKEN = "<audio_patch>"


class Backbone(nn.Module):
    """A causal LM plus its tokenizer, with the audio placeholder token registered.

    Constructed as ``cls(config)``. Attributes: ``model`` (the Hugging Face causal LM, a
    ``peft.PeftModel`` once LoRA is applied), ``tokenizer``, ``audio_token_id``.
    """

    config_class: ClassVar[type]
    model: nn.Module
    tokenizer: Any
    audio_token_id: int

    def info(self) -> BackboneInfo:
        raise NotImplementedError

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, L, D]`` input embeddings."""
        raise NotImplementedError

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the LM on embeddings; returns the Hugging Face ``CausalLMOutputWithPast``."""
        raise NotImplementedError

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

    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Generate from embeddings (KV cache on); returns only the new token ids ``[B, N]``."""
        raise NotImplementedError

    def save_lora(self, directory: str | Path) -> bool:
        """Write the LoRA in PEFT's format (``adapter_model.safetensors`` +
        ``adapter_config.json``) into ``directory``; False when no LoRA is applied."""
        raise NotImplementedError

    def load_lora(self, directory: str | Path, trainable: bool = False) -> None:
        raise NotImplementedError
