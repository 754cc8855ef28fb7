"""A backbone implementing only swv.backbones.base.Backbone: a small transformers Llama, built
at random from the config (``tokenizer`` given) or loaded from a directory its ``save_base``
wrote (``path``). No LoRA: stages train its weights as ``backbone``."""

import os
import shutil
import tempfile
from pathlib import Path

import torch
from pydantic import Field, model_validator
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from swv.backbones.base import AUDIO_TOKEN, Backbone
from swv.core.config import ComponentConfig
from swv.nn.context import BackboneInfo


class TinyLlamaConfig(ComponentConfig):
    path: str | None = Field(default=None, description="a directory written by save_base")
    tokenizer: str | None = Field(default=None, description="tokenizer directory for a random model")
    hidden_size: int = Field(default=32, ge=8)
    layers: int = Field(default=1, ge=1)
    heads: int = Field(default=4, ge=1)
    special_tokens: list[str] = []

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.tokenizer is None):
            raise ValueError("set exactly one of 'path' and 'tokenizer'")
        return self


class TinyLlama(Backbone):
    config_class = TinyLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self.tokenizer = AutoTokenizer.from_pretrained(config.path or config.tokenizer)
        self.tokenizer.add_special_tokens(
            {"extra_special_tokens": [AUDIO_TOKEN, *config.special_tokens]}, replace_extra_special_tokens=False
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.audio_token_id = self.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        if config.path is not None:
            self.model = LlamaForCausalLM.from_pretrained(config.path)
        else:
            self.model = LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=len(self.tokenizer),
                    hidden_size=config.hidden_size,
                    intermediate_size=2 * config.hidden_size,
                    num_hidden_layers=config.layers,
                    num_attention_heads=config.heads,
                    num_key_value_heads=config.heads,
                    max_position_embeddings=512,
                    bos_token_id=self.tokenizer.bos_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            )
        self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False)

    @property
    def hf_model(self):
        return self.model

    @property
    def special_tokens(self):
        return list(self.config.special_tokens)

    def _lm_head_weight(self):
        return self.model.get_output_embeddings().weight.detach()

    def info(self):
        return BackboneInfo(
            hidden_size=self.model.config.hidden_size,
            num_attention_heads=self.model.config.num_attention_heads,
            vocab_size=self.model.get_output_embeddings().weight.shape[0],
            audio_token_id=self.audio_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            output_embedding=self._lm_head_weight,
        )

    def embed_tokens(self, input_ids):
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds, attention_mask, position_ids=None, **kwargs):
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    @torch.no_grad()
    def generate(self, inputs_embeds, attention_mask, **kwargs):
        return self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    @property
    def needs_bundle(self):
        return self.config.path is None

    def save_base(self, directory, merged=False):
        directory = Path(directory)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        self.model.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)

    def bundled_config(self, path, merged=False):
        return {**self.config.model_dump(mode="json"), "path": path, "tokenizer": None}
