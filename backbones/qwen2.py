"""Qwen2-architecture backbone (``model_type`` "qwen2": Qwen2 and Qwen2.5 text models)."""

from __future__ import annotations

from typing import ClassVar

from transformers import PreTrainedConfig
from transformers import Qwen2Config as HFQwen2Config

from swv.backbones.causal_lm import CausalLMBackbone, CausalLMConfig


class Qwen2Config(CausalLMConfig):
    """:class:`CausalLMConfig` for a Qwen2 checkpoint; ``random_init`` takes
    ``transformers.Qwen2Config`` kwargs."""


class Qwen2Backbone(CausalLMBackbone):
    """A Qwen2 causal LM; a checkpoint of another ``model_type`` is refused."""

    config_class: ClassVar[type[CausalLMConfig]] = Qwen2Config
    expected_model_type: ClassVar[str | None] = "qwen2"
    hf_config_class: ClassVar[type[PreTrainedConfig] | None] = HFQwen2Config
