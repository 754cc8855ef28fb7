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
from swv.core.errors import InputError
from swv.eval.evaluation import EVAL_TASKS, Task
from swv.eval.metrics import NORMALIZE_MODES, NormalizeMode

#: The metric each preset reports, and its key in the report's ``metrics`` ("macro accuracy": the
#: unweighted mean of the accuracies of the record tasks; "judge score": the mean 1-10 score an
#: LLM judge gives the open answers, :mod:`swv.eval.judge`).
METRIC_KEYS = {"WER": "wer", "BLEU": "bleu", "accuracy": "accuracy", "macro accuracy": "macro_accuracy",
               "judge score": "judge_score"}
Metric = Literal["WER", "BLEU", "accuracy", "macro accuracy", "judge score"]
#: What :meth:`BenchmarkPreset.prompt` shows for a benchmark whose records ask their own questions.
ITEM_QUESTION_FORM = {
    "classification": "<the item's question> Pick one answer from: A. <option> B. <option> ...",
    "open": "<the item's question>",
}
#: The metrics shown as percentages in the report's benchmark line (the others as plain numbers).
PERCENT_METRICS = ("WER", "accuracy", "macro accuracy")


class PaperResult(BaseModel):
    """Soundwave's score on the benchmark as the paper reports it (fractions for WER/accuracy,
    0-100 for BLEU, 1-10 for a judge score)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    value: float


class PresetConfig(ComponentConfig):
    """One benchmark: what it is called, how the data is laid out, how the model is asked and scored.

    ``corpus_format``/``split`` are the registered corpus layout and split (``swv data manifest
    --format/--split``) read with ``--data``; ``options`` (multiple choice) are the choices in
    order A, B, ..., asked with ``question``; ``normalize`` (asr) and ``target_language`` (st) go to
    :func:`swv.eval.evaluation.evaluate`. ``item_questions``: every record asks its own
    ``question`` (with its own ``options`` for multiple choice), as AIR-Bench and MMAU do;
    ``tasks``: only the records of these tasks (the record's ``task`` field) are scored.
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
    item_questions: bool = False
    tasks: tuple[str, ...] | None = None
    paper: PaperResult | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PresetConfig:
        # checked here too, since a subclass may re-annotate a field with a plain ``str``
        for field, value, choices in (("task", self.task, EVAL_TASKS), ("metric", self.metric, tuple(METRIC_KEYS)),
                                      ("normalize", self.normalize or NORMALIZE_MODES[0], NORMALIZE_MODES)):
            if value not in choices:
                raise ValueError(f"{field}: {value!r} is not one of {', '.join(choices)}")
        if self.item_questions:
            if self.question or self.options or self.task not in ("classification", "open"):
                raise ValueError("'item_questions' is for classification and open presets without 'question'/'options'")
            return self
        if self.task in ("classification", "open") and not self.question:
            raise ValueError(f"the {self.task} task needs a 'question' (or 'item_questions')")
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
        (asr, st), else ``question`` (with the lettered ``options`` of multiple choice); with
        ``item_questions``, the form of each record's own (see :meth:`instruction`)."""
        from swv.model.defaults import choice_question
        from swv.model.prompts import default_instruction, instruction_table

        cfg = self.config
        if cfg.item_questions:
            return ITEM_QUESTION_FORM[cfg.task]
        if cfg.options:
            return choice_question(cfg.question, cfg.options)
        if cfg.question:
            return cfg.question
        return default_instruction(instruction_table(), cfg.task, cfg.target_language)

    def instruction(self, record: dict[str, Any], where: str) -> str:
        """The instruction of one record: :meth:`prompt`, or with ``item_questions`` the record's
        ``question`` (with its lettered ``options`` for multiple choice)."""
        from swv.model.defaults import choice_question

        if not self.config.item_questions:
            return self.prompt()
        question, options = record.get("question"), record.get("options")
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{where}: preset {self.name} needs each record's 'question'")
        if self.config.task != "classification":
            return question
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise InputError(f"{where}: preset {self.name} needs each record's 'options' (two or more strings)")
        return choice_question(question, options)

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
            "tasks": list(cfg.tasks) if cfg.tasks else None,
            "paper": None if cfg.paper is None else {"table": cfg.paper.table, "soundwave": cfg.paper.value},
        }
