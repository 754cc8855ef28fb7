"""Llama-architecture backbone (``model_type`` "llama": Llama 2/3.x, and GGUF files of them)."""

from __future__ import annotations

from typing import ClassVar

from transformers import LlamaConfig as HFLlamaConfig
from transformers import PreTrainedConfig

from swv.backbones.causal_lm import CausalLMBackbone, CausalLMConfig


class LlamaConfig(CausalLMConfig):
    """:class:`CausalLMConfig` for a Llama checkpoint; ``random_init`` takes
    ``transformers.LlamaConfig`` kwargs."""


class LlamaBackbone(CausalLMBackbone):
    """A Llama causal LM; a checkpoint of another ``model_type`` is refused."""

    config_class: ClassVar[type[CausalLMConfig]] = LlamaConfig
    expected_model_type: ClassVar[str | None] = "llama"
    hf_config_class: ClassVar[type[PreTrainedConfig] | None] = HFLlamaConfig
