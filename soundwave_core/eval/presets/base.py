"""What a benchmark preset is (a registered ``eval_preset`` component).

A preset's facts (benchmark name, task, metric, data layout, prompt parts, the paper's score) are
the defaults of its config model, a subclass of :class:`PresetConfig`; :class:`BenchmarkPreset`
turns them into the prompt and the report's description. A plugin registers a preset as
``registry.register("eval_preset", NAME, target="swv.eval.presets.base:BenchmarkPreset",
config="my_pkg.presets:MyBenchmark")`` (or its own subclass of :class:`BenchmarkPreset`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from swv.core.config import ComponentConfig
from swv.eval.evaluation import EVAL_TASKS, Task
from swv.eval.metrics import NORMALIZE_MODES, NormalizeMode

#: The metric each preset reports, and its key in the report's ``metrics``.
METRIC_KEYS = {"WER": "wer", "BLEU": "bleu", "accuracy": "accuracy"}
Metric = Literal["WER", "BLEU", "accuracy"]


class PaperResult(BaseModel):
    """Soundwave's score on the benchmark as the paper reports it (fractions for WER/accuracy)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    value: float


class PresetConfig(ComponentConfig):
    """One benchmark: what it is called, how the data is laid out, how the model is asked and scored.

    ``corpus_format``/``split`` are the registered corpus layout and split (``swv data manifest
    --format/--split``) read with ``--data``; ``options`` (multiple choice) are the choices in
    order A, B, ..., asked with ``question``; ``normalize`` (asr) and ``target_language`` (st) go to
    :func:`swv.eval.evaluation.evaluate`.
    """

    model_config = ConfigDict(frozen=True)

    benchmark: str
    task: Task
    metric: Metric
    corpus_format: str
    split: str | None = None
    normalize: NormalizeMode | None = None
    target_language: str | None = None
    question: str | None = None
    options: tuple[str, ...] | None = None
    paper: PaperResult | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PresetConfig:
        # checked here too, since a subclass may re-annotate a field with a plain ``str``
        for field, value, choices in (("task", self.task, EVAL_TASKS), ("metric", self.metric, tuple(METRIC_KEYS)),
                                      ("normalize", self.normalize or NORMALIZE_MODES[0], NORMALIZE_MODES)):
            if value not in choices:
                raise ValueError(f"{field}: {value!r} is not one of {', '.join(choices)}")
        if self.task in ("classification", "open") and not self.question:
            raise ValueError(f"the {self.task} task needs a 'question'")
        if (self.task == "classification") != bool(self.options):
            raise ValueError("'options' are needed for classification presets, and only for them")
        return self


class BenchmarkPreset:
    """A registered benchmark (``swv eval --preset NAME``): built as ``cls(config, name=NAME)``."""

    def __init__(self, config: PresetConfig, *, name: str) -> None:
        self.config = config
        self.name = name

    def prompt(self) -> str:
        """The instruction every record of the benchmark gets: the task's default instruction
        (asr, st), else ``question`` (with the lettered ``options`` of multiple choice)."""
        from swv.model.defaults import choice_question
        from swv.model.prompts import default_instruction, instruction_table

        cfg = self.config
        if cfg.options:
            return choice_question(cfg.question, cfg.options)
        if cfg.question:
            return cfg.question
        return default_instruction(instruction_table(), cfg.task, cfg.target_language)

    def describe(self) -> dict[str, Any]:
        """The preset as the report records it."""
        cfg = self.config
        return {
            "preset": self.name,
            "name": cfg.benchmark,
            "metric": cfg.metric,
            "prompt": self.prompt(),
            "normalize": cfg.normalize,
            "target_language": cfg.target_language,
            "options": list(cfg.options) if cfg.options else None,
            "paper": None if cfg.paper is None else {"table": cfg.paper.table, "soundwave": cfg.paper.value},
        }
