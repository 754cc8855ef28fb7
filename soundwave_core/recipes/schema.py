"""The recipe schema (pydantic v2, unknown fields are errors everywhere).

A recipe is YAML with ``model``, ``data``, ``stages``, ``output_dir``, ``seed`` and
``precision``. Component references (``model.encoder``, ``model.adapters[i]``,
``model.backbone``) are ``{name: ..., **args}``; their args are validated against the named
component's own config model by :func:`swv.recipes.loader.validate_components`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swv.core.audio import DEFAULT_MAX_AUDIO_BYTES
from swv.model.defaults import (
    PAPER_SYSTEM_PROMPT,
    GenerationDefaults,
    LmReduction,
)

#: A stage name is one path component of the run directory (``<output_dir>/<name>/``).
STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentRef(BaseModel):
    """``{name: <registered name>, **args}``; args are checked against the component's config."""

    model_config = ConfigDict(extra="allow")
    name: str

    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelSection(StrictModel):
    encoder: ComponentRef
    adapters: list[ComponentRef] = Field(min_length=1)
    backbone: ComponentRef
    system_prompt: str = PAPER_SYSTEM_PROMPT
    #: task -> default instruction, merged over :data:`DEFAULT_INSTRUCTIONS`
    instructions: dict[str, str] = Field(default_factory=dict)
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)

    @field_validator("adapters")
    @classmethod
    def _unique_adapter_names(cls, adapters: list[ComponentRef]) -> list[ComponentRef]:
        seen: set[str] = set()
        for ref in adapters:
            if ref.name in seen:
                raise ValueError(f"adapter {ref.name!r} appears twice in the chain; each adapter may appear once")
            seen.add(ref.name)
        return adapters


class DatasetSpec(StrictModel):
    """One named data source: a JSONL manifest, a Hugging Face ``datasets`` dataset or tar shards."""

    manifest: str | None = None
    hf_dataset: str | None = None
    shards: str | None = Field(default=None, description="a folder of webdataset-style .tar shards (swv data shard)")
    split: str = "train"
    task: str | None = None
    instruction: str | None = None
    max_samples: int | None = Field(default=None, ge=1)
    on_error: Literal["error", "skip"] = "error"
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="hf_dataset: swv field -> dataset column, e.g. {text: sentence, audio: speech}",
    )
    streaming: bool = Field(default=False, description="hf_dataset: read it as a stream (swv.data.streaming)")
    num_rows: int | None = Field(
        default=None, ge=1, description="streaming: the source's size for the mixture (default: the dataset's metadata)")
    shuffle_buffer: int = Field(default=1000, ge=1, description="streaming: rows in the shuffle buffer")
    max_member_bytes: int = Field(
        default=DEFAULT_MAX_AUDIO_BYTES, ge=1,
        description="shards: largest tar member read (bytes), checked from its tar header before reading")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if [self.manifest, self.hf_dataset, self.shards].count(None) != 2:
            raise ValueError("give exactly one of 'manifest', 'hf_dataset' or 'shards'")
        if self.hf_dataset is None and (self.columns or self.streaming):
            raise ValueError("'columns' and 'streaming' apply to 'hf_dataset' sources")
        return self


class SpecAugmentSettings(StrictModel):
    enabled: bool = True
    freq_mask_param: int = Field(default=27, ge=0)
    time_mask_param: int = Field(default=40, ge=0)
    num_freq_masks: int = Field(default=2, ge=0)
    num_time_masks: int = Field(default=2, ge=0)


class CachedAugmentSettings(StrictModel):
    """Masks on cached frozen-encoder outputs ``[T, D]`` in training: SpecAugment's time and
    frequency masking applied to the encoder's output frames and channels, for batches read from
    the feature cache (where ``spec_augment``, which masks the encoder's input, cannot act)."""

    enabled: bool = False
    channel_mask_param: int = Field(default=48, ge=0, description="widest channel mask (encoder output channels)")
    time_mask_param: int = Field(default=10, ge=0, description="widest time mask (encoder output frames)")
    num_channel_masks: int = Field(default=2, ge=0)
    num_time_masks: int = Field(default=2, ge=0)

    def as_spec_augment(self) -> SpecAugmentSettings:
        """The same masks in SpecAugment's terms (channels on the frequency axis)."""
        return SpecAugmentSettings(enabled=self.enabled, freq_mask_param=self.channel_mask_param,
                                   time_mask_param=self.time_mask_param, num_freq_masks=self.num_channel_masks,
                                   num_time_masks=self.num_time_masks)


class DataSection(StrictModel):
    datasets: dict[str, DatasetSpec] = Field(default_factory=dict)
    spec_augment: SpecAugmentSettings = Field(default_factory=SpecAugmentSettings)
    cached_augment: CachedAugmentSettings = Field(default_factory=CachedAugmentSettings)
    max_frames_per_batch: int | None = Field(default=None, ge=1)
    feature_cache: str | None = Field(
        default=None,
        description="directory of cached frozen-encoder outputs (default: <output_dir>/feature_cache)",
    )
    use_feature_cache: bool = True
    num_workers: int | None = Field(
        default=None,
        ge=0,
        description="data loader worker processes per training process (0: load in the training "
        "process; default: from the CPU count, see swv.data.loader.default_num_workers)",
    )
    log_batches: bool = Field(
        default=False,
        description="write the row indices each process trains on, per step, to <stage>/batches-rank<N>.jsonl",
    )


class OptimizerSettings(StrictModel):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    #: module name or glob (as in ``trainable``; ``lora`` too) -> multiplier of ``lr`` for the
    #: parameters it matches (the first matching entry wins), e.g. ``{adapters.utterance: 10}``
    lr_scale: dict[str, float] = Field(default_factory=dict)

    @field_validator("lr_scale")
    @classmethod
    def _positive_scales(cls, scales: dict[str, float]) -> dict[str, float]:
        for pattern, scale in scales.items():
            if not scale > 0:
                raise ValueError(f"lr_scale[{pattern!r}] must be > 0, got {scale}")
        return scales


class ScheduleSettings(StrictModel):
    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)


class MixtureSettings(StrictModel):
    """Task sampling p_k proportional to (n_k / sum n)^(1/T); T grows by ``temperature_step`` per epoch."""

    temperature: float = Field(default=1.0, gt=0)
    temperature_step: float = Field(default=0.0, ge=0)


class StageData(StrictModel):
    datasets: list[str] = Field(min_length=1)
    eval_datasets: list[str] = Field(default_factory=list)
    mixture: MixtureSettings = Field(default_factory=MixtureSettings)


class StageSettings(StrictModel):
    name: str
    kind: Literal["alignment", "shrinking", "sft"]
    trainable: list[str] = Field(min_length=1)
    #: ``lm``, ``ctc`` or an adapter's auxiliary loss name -> weight (checked by swv.train.stages)
    losses: dict[str, float] = Field(min_length=1)
    #: how the LM loss averages its tokens: ``token`` (every answer token of the batch alike, the
    #: Hugging Face mean) or ``row`` (each row's mean, then the rows: a one-token label answer
    #: weighs as much as a transcript); see swv.model.losses.lm_loss
    lm_reduction: LmReduction = "token"
    optimizer: OptimizerSettings
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    #: the global batch: rows per micro-step summed over all processes (each process takes
    #: batch_size / world_size); an optimizer step sees batch_size x grad_accum rows
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    data: StageData
    init_from: str | None = None
    log_every: int = Field(default=10, ge=1)
    save_every: int | None = Field(default=None, ge=1)
    keep_last: int = Field(default=2, ge=1)
    max_bad_steps: int = Field(default=10, ge=1)

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str) -> str:
        """The stage's directory is ``<output_dir>/<name>``: a name must not leave the run directory."""
        if not STAGE_NAME.fullmatch(name):
            raise ValueError(
                f"stage name {name!r} must be one directory name: 1-64 letters, digits, '_', '-' or '.', "
                "not starting with '-' or '.' (no path separators)"
            )
        return name

    @model_validator(mode="after")
    def _length(self) -> StageSettings:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'max_steps' or 'epochs'")
        for loss, weight in self.losses.items():
            if weight < 0:
                raise ValueError(f"loss weight for {loss!r} must be >= 0, got {weight}")
        return self


#: accelerate's mixed-precision name of each dtype a recipe's ``precision`` may name
PRECISION_OF_DTYPE = {"float32": "no", "float16": "fp16", "bfloat16": "bf16"}


class Recipe(StrictModel):
    description: str = ""
    output_dir: str
    seed: int = 0
    precision: Literal["no", "fp16", "bf16"] = "no"
    #: experiment trackers by accelerate's names (tensorboard, wandb, mlflow, trackio, ...;
    #: checked against accelerate's list when training starts, see swv.train.tracking)
    trackers: list[str] = Field(default_factory=list)
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    stages: list[StageSettings] = Field(min_length=1)

    @field_validator("output_dir")
    @classmethod
    def _non_empty_output_dir(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("output_dir must name a directory, got an empty string")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_names(cls, value: Any) -> Any:
        """YAML 1.1 (``yaml.safe_load``) reads an unquoted ``no`` as ``false``; a dtype name or
        alias (``bfloat16``, ``half``, ``float32``...) stands for accelerate's name of it."""
        if value is False:
            return "no"
        if isinstance(value, str) and value.strip().lower() not in ("no", "fp16", "bf16"):
            from swv.core.dtypes import canonical_dtype

            try:
                return PRECISION_OF_DTYPE[canonical_dtype(value)]
            except ValueError:
                return value  # the Literal's own error names the choices
        return value

    @model_validator(mode="after")
    def _cross_refs(self) -> Recipe:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique, repeated: {', '.join(dupes)}")
        known = set(self.data.datasets)
        for i, stage in enumerate(self.stages):
            for ds in [*stage.data.datasets, *stage.data.eval_datasets]:
                if ds not in known:
                    raise ValueError(
                        f"stages[{i}].data: dataset {ds!r} is not defined under data.datasets "
                        f"(defined: {', '.join(sorted(known)) or 'none'})"
                    )
        return self
