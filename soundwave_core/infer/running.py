"""Rows generated together whose membership changes at token boundaries (continuous batching):
:class:`RunningBatch` holds the backbone's KV cache of every running row (a transformers
``DynamicCache``, rows left-padded to a common length) and their attention mask.

* :meth:`RunningBatch.prefill` runs the prompts of a prepared batch
  (:class:`~swv.infer.batching.Prepared`: spliced prompt embeddings, as
  :meth:`SpeechLM.generate` gives ``generate``) and appends their rows: the shorter side (the
  running rows or the newcomers) is padded on the left, keys and values and mask alike.
* :meth:`RunningBatch.start` / :meth:`RunningBatch.join`: the same, a chunk of prompt positions
  at a time (:class:`PartialPrefill`, chunked prefill), the rows joining once their prompts are run.
* :meth:`RunningBatch.step` feeds every row its last token and returns the next logits.
* :meth:`RunningBatch.keep` drops finished rows, and the leading columns no kept row attends.

A row's positions are counted over its attended tokens (the backbone's ``forward`` does so from
the mask), so left padding does not change them: a row's logits are those ``generate`` computes
for it in a left-padded batch, and greedy answers are the same. Choosing tokens, stopping and
streaming are the caller's (:mod:`swv.serve.scheduler`).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache

from swv.infer.batching import Prepared
from swv.model.speechlm import SpeechLM

__all__ = ["PartialPrefill", "RunningBatch"]


class RunningBatch:
    """The KV cache and attention mask ``[B, S]`` of the rows being generated (none at first)."""

    def __init__(self, model: SpeechLM) -> None:
        self.model = model
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        forward = model.backbone.hf_model.forward
        # generate() computes the prompt's logits at its last position only, where the model can
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward).parameters else {}

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def length(self) -> int:
        """Cached positions per row (padding included)."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def prefill(self, prepared: Prepared) -> torch.Tensor:
        """Run the prompts of ``prepared`` and append them as the last rows; their next-token
        logits ``[N, V]`` (float32)."""
        spliced = self.model.splice(prepared.state, prepared.input_ids, prepared.attention_mask, padding_side="left")
        cache = DynamicCache()
        out = self.model.backbone.forward(spliced.inputs_embeds, spliced.attention_mask, cache=cache,
                                          use_cache=True, **self._last_only)
        self._append(cache, spliced.attention_mask)
        return out.logits[:, -1].float()

    def start(self, prepared: Prepared) -> PartialPrefill:
        """The prompts of ``prepared``, to be run a chunk at a time (:meth:`PartialPrefill.run`)
        and then joined to the batch (:meth:`join`)."""
        spliced = self.model.splice(prepared.state, prepared.input_ids, prepared.attention_mask, padding_side="left")
        return PartialPrefill(self.model, spliced.inputs_embeds, spliced.attention_mask, self._last_only)

    def join(self, partial: PartialPrefill) -> torch.Tensor:
        """Append the rows of a completed :class:`PartialPrefill`; their next-token logits ``[N, V]``."""
        if partial.logits is None:
            raise RuntimeError("RunningBatch.join: the prefill is not complete")
        self._append(partial.cache, partial.mask)
        return partial.logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens [B]`` (each row's last chosen token); the next logits ``[B, V]`` (float32)."""
        if self.mask is None or self.cache is None:
            raise RuntimeError("RunningBatch.step: no rows")
        device = self.mask.device
        embeds = self.model.backbone.embed_tokens(tokens.to(device)[:, None])
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)
        out = self.model.backbone.forward(embeds, self.mask, cache=self.cache, use_cache=True)
        return out.logits[:, -1].float()

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); drop the leading columns none of them attends."""
        if not rows:
            self.cache = self.mask = None
            return
        if self.mask is None or self.cache is None or rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).long().argmax())
        self.mask = mask[:, start:]
        self.cache = DynamicCache(ddp_cache_data=[(keys.index_select(0, index)[:, :, start:],
                                                   values.index_select(0, index)[:, :, start:])
                                                  for keys, values, _ in self.cache])

    def _append(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add the rows of ``cache`` (mask ``[N, S']``) after the running ones."""
        if self.mask is None or self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.length, int(mask.shape[1]))
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)], dim=0)
        self.cache = DynamicCache(ddp_cache_data=[
            (torch.cat([_left_pad(k_run, width), _left_pad(k_new, width)], dim=0),
             torch.cat([_left_pad(v_run, width), _left_pad(v_new, width)], dim=0))
            for (k_run, v_run, _), (k_new, v_new, _) in zip(self.cache, cache)
        ])


class PartialPrefill:
    """Prompts (spliced embeddings ``[N, L, D]``, mask ``[N, L]``) run into a cache of their own a
    chunk of positions at a time (chunked prefill), so the running rows can take decoding steps
    between two chunks. Each chunk attends to the cached chunks before it and its positions come
    from the mask, so the cache and the last logits equal those of one :meth:`RunningBatch.prefill`
    (up to float summation order)."""

    def __init__(self, model: SpeechLM, embeds: torch.Tensor, mask: torch.Tensor, last_only: dict) -> None:
        self.model = model
        self.embeds = embeds
        self.mask = mask
        self.cache = DynamicCache()
        self.done = 0
        self.logits: torch.Tensor | None = None
        self._last_only = last_only

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def remaining(self) -> int:
        """Prompt positions not run yet."""
        return self.length - self.done

    def run(self, positions: int) -> bool:
        """Run the next ``positions`` (at least 1) prompt positions; whether the prompt is done
        (then :attr:`logits` are its next-token logits ``[N, V]``)."""
        end = min(self.length, self.done + max(1, positions))
        out = self.model.backbone.forward(self.embeds[:, self.done:end], self.mask[:, :end], cache=self.cache,
                                          use_cache=True, **self._last_only)
        self.done = end
        if end == self.length:
            self.logits = out.logits[:, -1].float()
            self.embeds = self.embeds[:, :0]  # no longer needed
        return self.logits is not None


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence dimension (the mask's last, the cache's third) up to ``width``."""
    dim = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
