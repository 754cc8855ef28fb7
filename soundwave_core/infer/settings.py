"""Decoding settings of a request: :class:`GenerationSettings`, how they resolve over a model's
saved :class:`~swv.model.defaults.GenerationDefaults`, and the keyword arguments and logits
processors (repetition controls) they give transformers' ``generate``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from swv.core.errors import UsageError
from swv.model.defaults import GenerationDefaults

__all__ = ["GenerationSettings"]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; a field left ``None`` takes the model's saved default
    (``SpeechLM.generation_defaults()``, :class:`~swv.model.defaults.GenerationDefaults`: greedy,
    256 new tokens, no repeated runs of ``no_repeat_ngram_size`` tokens, the length bound on,
    unless the model says otherwise; see :meth:`Pipeline.resolve`). ``temperature``, ``top_p``
    and ``top_k`` apply only with ``do_sample`` (``top_k`` 0: off; ``None``: the backbone's
    generation config, transformers' default otherwise). ``no_repeat_ngram_size`` (0: off) and
    ``repetition_penalty`` (1.0: off) act on every answer, ``length_bound`` and its ``length_bound_*`` factors on answers that render the
    speech (see :mod:`swv.infer.pipeline`). ``seed`` seeds torch's RNG once at the start of each call.
    ``transcript_first``: the answer starts with a transcript of the audio (chain of thought,
    ``swv data sft --cot``), so the token budget grows by the audio tokens of the longest clip of
    the batch (the shrinking adapter keeps about one frame per transcript token), and the answer
    after it is not cut (no length bound). ``ctc_weight`` (0: off): transcripts are rescored with
    the CTC head's posteriors (:mod:`swv.infer.rescoring`)."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    no_repeat_ngram_size: int | None = None
    repetition_penalty: float | None = None
    length_bound: bool | None = None
    length_bound_tokens_per_second: float | None = None
    length_bound_min_tokens_per_second: float | None = None
    length_bound_per_audio_token: float | None = None
    length_bound_margin: int | None = None
    seed: int | None = None
    transcript_first: bool | None = None
    ctc_weight: float | None = None

    def __post_init__(self) -> None:
        """The fields a model's defaults also hold are checked by the same rules."""
        if self.top_k is not None and self.top_k < 0:
            raise UsageError(f"top_k: must be >= 0 (got {self.top_k})")
        given = {k: v for k, v in asdict(self).items() if v is not None and k in GenerationDefaults.model_fields}
        try:
            GenerationDefaults.model_validate(given)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise UsageError(f"{error['loc'][0]}: {error['msg'].lower()} (got {error['input']!r})") from None

    def over(self, defaults: GenerationDefaults) -> GenerationSettings:
        """These settings with every ``None`` taken from ``defaults``."""
        given = {k: v for k, v in asdict(self).items() if v is not None}
        return GenerationSettings(**{**defaults.model_dump(), **given})

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (of resolved settings)."""
        if self.max_new_tokens is None or self.do_sample is None:
            raise UsageError("generation settings are not resolved against a model's defaults (Pipeline.resolve)")
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                  "logits_processor": self.repetition_processors(),
                                  # off in the config: the processors above are the ones used
                                  "no_repeat_ngram_size": 0, "repetition_penalty": 1.0}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = self.top_k
        return kwargs

    def repetition_processors(self) -> LogitsProcessorList:
        """transformers' ``NoRepeatNGramLogitsProcessor``/``RepetitionPenaltyLogitsProcessor`` for
        these (resolved) settings, over the answer's tokens. Built here rather than from
        ``generate``'s own arguments: generating from ``inputs_embeds``, transformers' penalty
        would skip as many of a left-padded row's first answer tokens as the row has padding."""
        processors = LogitsProcessorList()
        if self.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        if self.repetition_penalty is not None and self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty)))
        return processors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
