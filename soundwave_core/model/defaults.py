"""What a model is saved with unless its recipe says otherwise: the system prompt, the default
instruction of each task and the decoding defaults. Kept free of torch imports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: how the LM loss averages its per-token losses (a stage's ``lm_reduction``; see
#: :func:`swv.model.losses.lm_loss`): over the batch's answer tokens, or per row first
LmReduction = Literal["token", "row"]

#: The system prompt of the Soundwave paper (appendix C), used for training and decoding.
PAPER_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides and assist the user with a variety of tasks using natural language."
)

#: The transcription instruction: the default for records that carry only a transcript, for
#: ``swv infer`` and for ``swv eval --task asr``.
ASR_INSTRUCTION = "Transcribe the speech."

def choice_question(question: str, options: Sequence[str]) -> str:
    """A multiple-choice instruction in the wording of the paper's SFT data (Table 4, format 2):
    ``"<question> Pick one answer from: A. neutral B. fear C. surprise D. happiness."``; used
    alike by ``swv data sft`` and the benchmark presets (at most 26 options)."""
    listed = " ".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))
    return f"{question} Pick one answer from: {listed}."


def choice_answer(options: Sequence[str], label: str) -> str:
    """The answer to :func:`choice_question` in Table 4's wording: ``"The one answer you should
    pick is D. happiness."`` (``label`` must be one of ``options``)."""
    return f"The one answer you should pick is {chr(ord('A') + list(options).index(label))}. {label}."


#: The default instruction of each task, for records without an ``instruction``: used alike by
#: training, ``swv infer`` and ``swv eval`` (saved with every model; ``model.instructions`` in a
#: recipe overrides or extends it). ``{language}`` is filled with the record's target language.
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "asr": ASR_INSTRUCTION,
    "st": "Translate the speech into {language}.",
    "sound": "What sound events can you hear in this audio?",
    "emotion": "What is the emotion of the speaker?",
    "gender": "What is the gender of the speaker?",
    "age": "How old is the speaker?",
    "language_id": "Which language is spoken in this audio?",
    "intent": "What is the intent of the speaker?",
    "entity": "Which named entities are mentioned in the speech?",
    "speaker_count": "How many speakers are there in this audio?",
    "synthetic_voice": "Is this voice real or synthesized?",
    "vocal_sound": "What vocal sound is this?",
    "scene": "What is the acoustic scene of this recording?",
}

#: The tasks of swv's data (the one list: SFT question wordings, the CLI's help and the README's
#: table follow it); a recipe's ``model.instructions`` may add more.
TASKS: tuple[str, ...] = tuple(DEFAULT_INSTRUCTIONS)

#: Tasks whose answer renders the speech itself (a transcript, a translation): their answers are
#: capped by the audio-derived length bound (``GenerationDefaults.length_bound``).
TRANSCRIPTION_TASKS = ("asr", "st")


class GenerationDefaults(BaseModel):
    """Decoding defaults of a model, saved with every export (``swv_config.json`` and
    ``generation_config.json``) and used by ``swv infer``/``swv eval``/``swv serve`` and
    ``Pipeline`` unless overridden.

    Against runaway answers (an answer looping to ``max_new_tokens``):

    * ``no_repeat_ngram_size`` (0: off) and ``repetition_penalty`` (1.0: off): transformers'
      ``NoRepeatNGramLogitsProcessor`` and ``RepetitionPenaltyLogitsProcessor`` over the
      answer's tokens. The default 10 forbids only exact repeats of 10 tokens (about seven
      words), which stops a loop after a few turns and leaves normal transcripts alone; a
      penalty above 1 also lowers every word already said, so it is off.
    * ``length_bound``: the answer of a transcription-like request (``TRANSCRIPTION_TASKS``)
      gets at most ``ceil(clamp(length_bound_per_audio_token * audio_tokens,
      length_bound_min_tokens_per_second * seconds, length_bound_tokens_per_second * seconds))
      + length_bound_margin`` new tokens (never more than ``max_new_tokens``): ``seconds`` of
      audio, ``audio_tokens`` the embeddings the adapter chain hands to the LLM (one per kept
      frame after a shrinking adapter, about one per transcript token). Measured: English speech
      at 110-180 words per minute is 1.4-5.5 SmolLM2 tokens per second (the demo's four
      engines), but up to 9 with the small test tokenizer of the shipped tiny speech, hence a
      floor of 2 and a ceiling of 10; between them the audio-token term decides. See
      :func:`swv.model.stopping.length_bound`.

    Against an LLM that reads worse than its own CTC head:

    * ``ctc_weight`` (0: off): a transcript (task ``asr``, one clip) is rescored with the clip's
      CTC posteriors, as hybrid CTC/attention models do (WeNet's attention rescoring, ESPnet's
      ``ctc_weight``): of the generated answer and the CTC head's greedy transcript, the one with
      the higher ``(1 - ctc_weight) * log P_LLM + ctc_weight * log P_CTC`` is the answer. Needs a
      chain with a CTC head; applied to answers that are not streamed
      (:mod:`swv.infer.rescoring`).

    Imported released checkpoints (``swv import soundwave``) keep the released decoding: no
    repetition control, no length bound, no rescoring.
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=256, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    no_repeat_ngram_size: int = Field(default=10, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0)
    length_bound: bool = True
    length_bound_tokens_per_second: float = Field(default=10.0, gt=0)
    length_bound_min_tokens_per_second: float = Field(default=2.0, gt=0)
    length_bound_per_audio_token: float = Field(default=1.5, gt=0)
    length_bound_margin: int = Field(default=4, ge=0)
    ctc_weight: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _rates_in_order(self) -> GenerationDefaults:
        if self.length_bound_min_tokens_per_second > self.length_bound_tokens_per_second:
            raise ValueError(
                f"length_bound_min_tokens_per_second ({self.length_bound_min_tokens_per_second:g}) must not exceed "
                f"length_bound_tokens_per_second ({self.length_bound_tokens_per_second:g})"
            )
        return self

    def to_generation_config(self) -> Any:
        """A ``transformers.GenerationConfig`` (sampling knobs only when ``do_sample``; the
        repetition controls under transformers' names)."""
        from transformers import GenerationConfig

        knobs = {"temperature": self.temperature, "top_p": self.top_p} if self.do_sample else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                no_repeat_ngram_size=self.no_repeat_ngram_size,
                                repetition_penalty=self.repetition_penalty, **knobs)
