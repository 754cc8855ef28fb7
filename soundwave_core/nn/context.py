"""What adapters need to know about the backbone they feed, without holding the backbone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BackboneInfo:
    """Facts about the LLM an adapter chain feeds.

    ``output_embedding`` returns the ``[V, D]`` LM-head weight (used to initialise CTC heads) and
    ``input_embedding`` the ``[V, D]`` input-embedding table (used by adapters that hand the LLM
    token embeddings); they are callables so the weights are only touched by components that
    need them, and always give the backbone's current (detached) weights. ``added_token_ids``
    are the ids of the tokens added to the LLM's vocabulary for swv (audio placeholder, i.e. the
    CTC blank, first; then special tokens such as sound tags).
    """

    hidden_size: int
    num_attention_heads: int
    vocab_size: int
    audio_token_id: int
    pad_token_id: int
    output_embedding: Callable[[], torch.Tensor] | None = None
    input_embedding: Callable[[], torch.Tensor] | None = None
    added_token_ids: tuple[int, ...] = ()
