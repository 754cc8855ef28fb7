"""Running a batch's shared prompt prefix once.

In training, every row of a batch usually starts with the same tokens: the chat template's
header, the system prompt and the user turn's header, up to the audio. A causal LM's hidden
states (and keys/values) at those positions depend on nothing after them, so they are the same
in every row: the prefix can run once (one row), its key/value cache be repeated over the
batch, and the rest of every row run against it. The hidden states are those of the plain
forward pass (to float rounding), and gradients flow through the repeated cache into the one
prefix computation. With LoRA on attention the prefix changes at every optimizer step, so it
cannot be cached across steps: only within one.

Dropout (e.g. LoRA's) draws one mask for the prefix, shared by the rows of the batch, instead
of one per row.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache

#: Below this many shared positions, the extra pass over the layers costs about what it saves.
MIN_SHARED_PREFIX = 8


def shared_prefix_length(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> int:
    """Number of leading positions at which every row of ``inputs_embeds [B, L, D]`` has the
    same embedding, is attended (``attention_mask [B, L]``) and has the same position
    (``position_ids [B, L]``); 0 for a single row."""
    if inputs_embeds.shape[0] < 2 or inputs_embeds.shape[1] == 0:
        return 0
    with torch.no_grad():
        same = (inputs_embeds == inputs_embeds[:1]).all(dim=-1).all(dim=0)
        same &= attention_mask.bool().all(dim=0)
        same &= (position_ids == position_ids[:1]).all(dim=0)
        return int(same.long().cumprod(dim=0).sum())


def decode_with_shared_prefix(
    decoder: Any,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prefix_length: int,
) -> torch.Tensor:
    """Final hidden states ``[B, L, D]`` of a Hugging Face decoder (``model.get_decoder()``) on
    ``inputs_embeds [B, L, D]``, running the first ``prefix_length`` positions (equal in every
    row, see :func:`shared_prefix_length`) once."""
    batch = inputs_embeds.shape[0]
    p = prefix_length
    cache = DynamicCache(config=decoder.config)
    cache_kwarg = {cache_argument(decoder): cache}
    prefix = decoder(
        inputs_embeds=inputs_embeds[:1, :p],
        attention_mask=attention_mask[:1, :p],
        position_ids=position_ids[:1, :p],
        use_cache=True,
        **cache_kwarg,
    ).last_hidden_state
    cache.batch_repeat_interleave(batch)
    rest = decoder(
        inputs_embeds=inputs_embeds[:, p:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, p:],
        use_cache=True,
        **cache_kwarg,
    ).last_hidden_state
    return torch.cat([prefix.expand(batch, -1, -1), rest], dim=1)


def cache_argument(decoder: Any) -> str:
    """The name of a decoder's key/value cache argument: transformers 5.x renamed
    ``past_key_values`` to ``cache`` (the old name is deprecated, to be removed in 5.40)."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
