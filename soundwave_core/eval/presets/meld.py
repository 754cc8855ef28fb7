"""MELD test split as speech emotion recognition, multiple choice (accuracy; paper Table 5)."""

from __future__ import annotations

from swv.dataprep.corpora.meld import MELD_EMOTIONS
from swv.eval.evaluation import Task
from swv.eval.presets.base import Metric, PaperResult, PresetConfig


class MeldTest(PresetConfig):
    benchmark: str = "MELD (test), emotion"
    task: Task = "classification"
    metric: Metric = "accuracy"
    corpus_format: str = "meld"
    split: str | None = "test"
    question: str | None = "What is the emotion of the speaker?"
    options: tuple[str, ...] | None = MELD_EMOTIONS
    paper: PaperResult | None = PaperResult(table="Table 5", value=0.635)
