"""MMAU test-mini, speech and sound questions (each item's own multiple choice; paper Table 12).

Table 12 prints 46.25 for Soundwave's speech score, its sound score and their average alike; the
preset compares with the average (the mean of the two tasks' accuracies). The paper does not name
the split: test-mini is the one MMAU releases with its answers.
"""

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
