"""VocalSound test split as multiple choice (accuracy; paper Table 5).

The paper does not print its evaluation prompt; the question lists the options in the
"Pick one answer from: A. ... B. ..." form of the paper's SFT data (Table 4).
"""

from __future__ import annotations

from swv.dataprep.corpora.vocalsound import VOCALSOUND_LABELS
from swv.eval.evaluation import Task
from swv.eval.presets.base import Metric, PaperResult, PresetConfig


class VocalSoundTest(PresetConfig):
    benchmark: str = "VocalSound (test)"
    task: Task = "classification"
    metric: Metric = "accuracy"
    corpus_format: str = "vocalsound"
    split: str | None = "te"
    question: str | None = "What vocal sound does the person make?"
    options: tuple[str, ...] | None = tuple(VOCALSOUND_LABELS.values())
    paper: PaperResult | None = PaperResult(table="Table 5", value=0.905)
