"""Utterance adapter (beyond the paper): one vector per clip for what holds over the whole clip.

Statistics pooling as x-vector speaker embeddings do it: the mean and the standard deviation
over time of the incoming frames ``[B, T, D]`` (the frames that hold audio) -> ``[B, 2D]``,
standardised per channel over the training data (``BatchNorm1d`` without affine parameters: batch
statistics in training, the running averages at inference), then ``Linear -> [B, D_llm]``.

The frames pass through unchanged; the vector travels on the state (``AudioState.utterance_embeds``)
and ``SpeechLM`` puts it before the audio tokens at the end of the chain, as one more token. Put
the adapter first, on the encoder's frames (a linear probe reads the voice's pitch, sex and
speaking rate there far better than after an alignment adapter trained for the words,
docs/demo.md).

Why a token of standardised statistics and not a pathway learned through the shrinking adapter's
cross-attention alone: an LLM learns to read a direction its audio tokens already carry in a few
dozen steps, but while none is there it learns to ignore the audio for a label question instead
(its answer stops depending on the clip) and the adapter's gradient vanishes with it (docs/demo.md,
dev experiments). Standardised statistics through a projection at the LLM's embedding scale give
the LLM that direction from the first step. Its own token, not a vector added to every audio
token: added, a vector at that scale drowned the words (the dev WER went above 100 %).

With ``classes`` (``{task: [label, ...]}``), a linear classifier per task reads the vector and
the adapter reports the cross-entropy of the training rows' labels as the auxiliary loss
``clip_class`` (weigh it in a stage's ``losses:``): the vector is then taught to carry those
labels directly, not only through the LLM's answers, which gave it a weak and noisy gradient in
a batch of mixed tasks (docs/demo.md). With ``lm_gradient: false`` the LLM's losses do not reach
the projection at all, so the vector stays what the classifiers make of it and the LLM learns to
read it. The classifiers are not used at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from swv.adapters.base import Adapter
from swv.core.config import ComponentConfig
from swv.nn.context import BackboneInfo
from swv.nn.state import IGNORE_INDEX, AudioState

#: the auxiliary loss the classifiers report (weigh it in a stage's ``losses:``)
CLIP_CLASS_LOSS = "clip_class"


class UtteranceConfig(ComponentConfig):
    gain: float = Field(
        default=3.0,
        ge=0,
        description=(
            "per-channel standard deviation of the vector at initialisation, in units of the standard "
            "deviation of the LLM's input-embedding table (of 1.0 when the backbone does not expose it)"
        ),
    )
    classes: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "whole-clip labels to learn per task, e.g. {pitch: [high, low]}: a linear classifier per task "
            "on the vector, trained on the rows of that task through the auxiliary loss 'clip_class'"
        ),
    )

    lm_gradient: bool = Field(
        default=True,
        description=(
            "whether the LLM's losses train the projection; false: the LLM reads the vector detached, so "
            "only the classifiers' loss 'clip_class' shapes it (needs classes)"
        ),
    )

    @model_validator(mode="after")
    def _detached_needs_classes(self) -> UtteranceConfig:
        if not self.lm_gradient and not self.classes:
            raise ValueError("lm_gradient: false needs classes (nothing else would train the projection)")
        return self

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for task, labels in value.items():
            if not task or "." in task:
                raise ValueError(f"classes: task names must be non-empty and without '.', got {task!r}")
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise ValueError(f"classes.{task}: needs at least two distinct labels, got {labels}")
        return value


def pooled_statistics(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``embeds [B, T, D]`` and ``mask [B, T]`` (True on the frames to pool; a row without any
    pools nothing and gives zeros) -> ``[B, 2D]`` float32 mean and standard deviation over time."""
    weights = mask.to(torch.float32)[..., None]
    count = weights.sum(dim=1).clamp(min=1.0)
    values = embeds.to(torch.float32)
    mean = (values * weights).sum(dim=1) / count
    variance = (((values - mean[:, None]) ** 2) * weights).sum(dim=1) / count
    return torch.cat([mean, variance.clamp(min=1e-8).sqrt()], dim=-1)


class UtteranceAdapter(Adapter):
    config_class = UtteranceConfig
    aux_loss_names = frozenset({CLIP_CLASS_LOSS})

    def __init__(self, config: UtteranceConfig, *, input_dim: int, backbone: BackboneInfo) -> None:
        super().__init__(config, input_dim=input_dim, backbone=backbone)
        self.output_dim = input_dim
        self.norm = nn.BatchNorm1d(2 * input_dim, affine=False, momentum=None)
        self.proj = nn.Linear(2 * input_dim, backbone.hidden_size)
        table = backbone.input_embedding() if backbone.input_embedding is not None else None
        scale = float(table.float().std()) if table is not None and not table.is_meta else 1.0
        with torch.no_grad():
            nn.init.normal_(self.proj.weight, std=config.gain * scale / (2 * input_dim) ** 0.5)
            nn.init.zeros_(self.proj.bias)
        self.classifiers = nn.ModuleDict(
            {task: nn.Linear(backbone.hidden_size, len(labels)) for task, labels in config.classes.items()}
        )

    def clip_classes(self) -> dict[str, list[str]]:
        return {task: list(labels) for task, labels in self.config.classes.items()}

    @torch.no_grad()
    def silence(self) -> None:
        """Zero the projection: the vector is then zero for every clip (an ablation)."""
        self.proj.weight.zero_()
        self.proj.bias.zero_()

    def output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return input_lengths

    def standardise(self, stats: torch.Tensor) -> torch.Tensor:
        """``[B, 2D]`` -> per-channel standardised: batch statistics when training on more than
        one clip (running averages updated), the running averages otherwise."""
        if self.training and stats.shape[0] > 1:
            return self.norm(stats)
        return F.batch_norm(stats, self.norm.running_mean, self.norm.running_var, training=False, eps=self.norm.eps)

    def forward(self, state: AudioState) -> AudioState:
        """``embeds [B, T, D]`` unchanged; ``utterance_embeds [B, D_llm]`` set (the sum with one an
        earlier adapter set)."""
        stats = self.standardise(pooled_statistics(state.embeds, state.speech_mask()))
        vector = self.proj(stats.to(self.proj.weight.dtype))
        aux = dict(state.aux_losses)
        loss = self.class_loss(vector, state.clip_targets or {})
        if loss is not None:
            aux[CLIP_CLASS_LOSS] = loss
        if not self.config.lm_gradient:
            vector = vector.detach()
        if state.utterance_embeds is not None:
            vector = vector + state.utterance_embeds
        return state.replace(utterance_embeds=vector, aux_losses=aux)

    def class_loss(self, vector: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Cross-entropy of the classifiers on ``vector [B, D_llm]`` against ``targets`` (task ->
        ``[B]`` class indices, -100 ignored), averaged over every labelled (row, task) pair;
        ``None`` when no row has a label of a task this adapter classifies."""
        total, count = None, 0
        for task, classifier in self.classifiers.items():  # one per task, not per sample
            target = targets.get(task)
            if target is None:
                continue
            target = target.to(vector.device)
            labelled = int((target != IGNORE_INDEX).sum())
            if labelled == 0:
                continue
            summed = F.cross_entropy(classifier(vector).float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
            total = summed if total is None else total + summed
            count += labelled
        return None if total is None else total / count
