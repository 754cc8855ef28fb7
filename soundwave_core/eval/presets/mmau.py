"""MMAU test-mini, speech and sound questions (each item's own multiple choice; paper Table 12
reports 46.25 for both and their average)."""

from __future__ import annotations

from swv.eval.evaluation import Task
from swv.eval.presets.base import Metric, PaperResult, PresetConfig


class MMAUTestMini(PresetConfig):
    benchmark: str = "MMAU test-mini, speech and sound"
    task: Task = "classification"
    metric: Metric = "macro accuracy"
    corpus_format: str = "mmau"
    item_questions: bool = True
    tasks: tuple[str, ...] | None = ("speech", "sound")
    paper: PaperResult | None = PaperResult(table="Table 12", value=0.4625)
