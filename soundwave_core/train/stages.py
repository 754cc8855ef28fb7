"""Stage kinds: what each Soundwave stage feeds the model and which losses it allows.

A stage kind is a small class; the training loop is shared (:mod:`swv.train.runner`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from swv.errors import UsageError
from swv.recipes.schema import StageSettings


class Stage:
    kind: ClassVar[str]
    #: ``ctc``: audio + transcripts only, the backbone never runs; ``lm``: chat prompts.
    mode: ClassVar[Literal["ctc", "lm"]]
    allowed_losses: ClassVar[frozenset[str]]

    def __init__(self, settings: StageSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        extra = set(settings.losses) - self.allowed_losses
        if extra:
            raise UsageError(
                f"stages[{index}] ({settings.name}): a {self.kind} stage takes losses "
                f"{sorted(self.allowed_losses)}, not {sorted(extra)}"
            )

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def lm_weight(self) -> float:
        return float(self.settings.losses.get("lm", 0.0))

    @property
    def ctc_weight(self) -> float:
        return float(self.settings.losses.get("ctc", 0.0))

    def model_inputs(self, batch: dict) -> dict:
        keys = ["input_features", "feature_lengths", "encoder_embeds", "encoder_lengths", "ctc_targets", "ctc_target_lengths"]
        if self.mode == "lm":
            keys += ["input_ids", "attention_mask", "labels"]
        inputs = {k: batch[k] for k in keys if k in batch}
        if self.ctc_weight == 0:
            inputs.pop("ctc_targets", None)
            inputs.pop("ctc_target_lengths", None)
        return {**inputs, "lm_weight": self.lm_weight, "ctc_weight": self.ctc_weight}


class AlignmentStage(Stage):
    """Stage I: the alignment adapter learns from CTC alone; the LLM is not run."""

    kind = "alignment"
    mode = "ctc"
    allowed_losses = frozenset({"ctc"})


class ShrinkingStage(Stage):
    """Stage II: LM cross-entropy on responses + weighted CTC, tasks mixed by temperature."""

    kind = "shrinking"
    mode = "lm"
    allowed_losses = frozenset({"lm", "ctc"})


class SFTStage(Stage):
    """Stage III: instruction fine-tuning (LM loss; CTC optional)."""

    kind = "sft"
    mode = "lm"
    allowed_losses = frozenset({"lm", "ctc"})


STAGE_KINDS: dict[str, type[Stage]] = {cls.kind: cls for cls in (AlignmentStage, ShrinkingStage, SFTStage)}


def make_stage(settings: StageSettings, index: int) -> Stage:
    return STAGE_KINDS[settings.kind](settings, index)
