"""Stage kinds: what each Soundwave stage feeds the model, what it runs and how it weighs losses.

A stage kind is a small class; the training loop is shared (:mod:`swv.train.runner`).

Losses: the model reports every loss it computes unweighted (``lm_loss``, ``ctc_loss`` and the
adapters' ``aux_losses``, see :meth:`swv.model.speechlm.SpeechLM.forward`); the stage alone
weighs them with its recipe's ``losses:`` mapping. Its keys are ``lm``, ``ctc`` (each allowed by
the stage kind) and the auxiliary loss names the chain's adapters declare
(``Adapter.aux_loss_names``); any other key is an error naming the stage. An auxiliary loss an
adapter reports without a weight in ``losses:`` has weight 0: it is logged, not trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from swv.core.errors import UsageError
from swv.recipes.schema import StageSettings
from swv.registry.components import Registry

if TYPE_CHECKING:
    from swv.recipes.loader import LoadedRecipe

LM = "lm"
CTC = "ctc"


def declared_aux_losses(adapter_refs: Iterable[Mapping[str, Any]], registry: Registry) -> dict[str, str]:
    """Auxiliary loss name -> the adapter (chain name) that declares it, for the chain
    ``adapter_refs`` (``{name, **args}`` mappings) looked up in ``registry``."""
    owners: dict[str, str] = {}
    for ref in adapter_refs:
        adapter = str(ref["name"])
        for loss in registry.get("adapter", adapter).load_class().aux_loss_names:
            if loss in (LM, CTC) or loss in owners:
                other = "the model" if loss in (LM, CTC) else f"adapter {owners[loss]!r}"
                raise UsageError(f"adapter {adapter!r}: auxiliary loss name {loss!r} is already used by {other}")
            owners[loss] = adapter
    return owners


class Stage:
    kind: ClassVar[str]
    #: ``ctc``: audio + transcripts only, the backbone never runs; ``lm``: chat prompts.
    mode: ClassVar[Literal["ctc", "lm"]]
    #: which of the model's own losses (``lm``, ``ctc``) this kind may weigh
    allowed_losses: ClassVar[frozenset[str]]

    def __init__(self, settings: StageSettings, index: int, aux_losses: Mapping[str, str] | None = None) -> None:
        """``aux_losses``: the auxiliary loss names the model's adapters declare (name ->
        adapter, see :func:`declared_aux_losses`)."""
        self.settings = settings
        self.index = index
        self.where = f"stages[{index}] ({settings.name})"
        aux = dict(aux_losses or {})
        #: auxiliary loss name -> the adapter that declares it
        self.aux_losses = aux
        for name in settings.losses:
            if name in (LM, CTC):
                if name not in self.allowed_losses:
                    raise UsageError(
                        f"{self.where}: a {self.kind} stage takes losses {sorted(self.allowed_losses)}, not {name!r}"
                    )
            elif name not in aux:
                declared = ", ".join(f"{n!r} ({a})" for n, a in sorted(aux.items())) or "none"
                raise UsageError(
                    f"{self.where}: losses: unknown loss {name!r}; a {self.kind} stage takes "
                    f"{', '.join(sorted(self.allowed_losses))} and the adapters' auxiliary losses (declared: {declared})"
                )

    @property
    def name(self) -> str:
        return self.settings.name

    def weight(self, loss: str) -> float:
        """The recipe's weight for ``loss`` (``lm``, ``ctc`` or an auxiliary name); 0 when absent."""
        return float(self.settings.losses.get(loss, 0.0))

    @property
    def run_backbone(self) -> bool:
        """Whether the backbone runs: only for chat prompts with a weighted LM loss."""
        return self.mode == "lm" and self.weight(LM) > 0

    @property
    def needs_ctc_targets(self) -> bool:
        return self.weight(CTC) > 0

    @property
    def stop_after_ctc(self) -> bool:
        """Without the backbone, the adapter chain can end at the CTC head, unless a weighted
        auxiliary loss may come from an adapter after it."""
        return not self.run_backbone and not any(
            w > 0 for name, w in self.settings.losses.items() if name not in (LM, CTC)
        )

    def model_inputs(self, batch: dict) -> dict:
        """The collated ``batch``'s tensors this stage gives ``SpeechLM.forward``, plus what runs."""
        keys = ["input_features", "feature_lengths", "encoder_embeds", "encoder_lengths", "encoder_speech_lengths",
                "clip_targets"]
        if self.needs_ctc_targets:
            keys += ["ctc_targets", "ctc_target_lengths"]
        if self.run_backbone:
            keys += ["input_ids", "attention_mask", "labels"]
        inputs = {k: batch[k] for k in keys if k in batch}
        inputs = {**inputs, "run_backbone": self.run_backbone, "stop_after_ctc": self.stop_after_ctc}
        if self.run_backbone:
            inputs["lm_reduction"] = self.settings.lm_reduction
        return inputs

    def losses(self, out: Any) -> dict[str, torch.Tensor]:
        """The unweighted losses the model reported: ``lm``, ``ctc`` and each auxiliary name."""
        found = {LM: out.lm_loss, CTC: out.ctc_loss, **(out.aux_losses or {})}
        return {name: value for name, value in found.items() if value is not None}

    def total_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """``sum(weight * loss)`` over the weighted losses present; ``None`` when there is none."""
        terms = [self.weight(name) * value for name, value in losses.items() if self.weight(name) > 0]
        return torch.stack(terms).sum() if terms else None


class AlignmentStage(Stage):
    """Stage I: the alignment adapter learns from CTC alone; the LLM is not run."""

    kind = "alignment"
    mode = "ctc"
    allowed_losses = frozenset({CTC})


class ShrinkingStage(Stage):
    """Stage II: LM cross-entropy on responses + weighted CTC, tasks mixed by temperature."""

    kind = "shrinking"
    mode = "lm"
    allowed_losses = frozenset({LM, CTC})


class SFTStage(Stage):
    """Stage III: instruction fine-tuning (LM loss; CTC optional)."""

    kind = "sft"
    mode = "lm"
    allowed_losses = frozenset({LM, CTC})


STAGE_KINDS: dict[str, type[Stage]] = {cls.kind: cls for cls in (AlignmentStage, ShrinkingStage, SFTStage)}


def make_stage(settings: StageSettings, index: int, aux_losses: Mapping[str, str] | None = None) -> Stage:
    return STAGE_KINDS[settings.kind](settings, index, aux_losses)


def recipe_stages(loaded: LoadedRecipe, registry: Registry) -> list[Stage]:
    """Every stage of a loaded recipe, its ``losses:`` checked against the stage kind and the
    auxiliary losses of the recipe's adapter chain (raises :class:`UsageError` naming the stage)."""
    aux_losses = declared_aux_losses(loaded.resolved()["model"]["adapters"], registry)
    return [make_stage(settings, i, aux_losses) for i, settings in enumerate(loaded.recipe.stages)]
