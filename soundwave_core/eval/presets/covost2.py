"""CoVoST 2 English -> German and English -> Chinese, test split (BLEU; En->De in paper Table 5)."""

from __future__ import annotations

from swv.eval.evaluation import Task
from swv.eval.presets.base import Metric, PaperResult, PresetConfig


class _CoVoST2(PresetConfig):
    task: Task = "st"
    metric: Metric = "BLEU"
    corpus_format: str = "covost2"
    split: str | None = "test"


class CoVoST2EnDe(_CoVoST2):
    benchmark: str = "CoVoST 2 En->De (test)"
    target_language: str | None = "de"
    paper: PaperResult | None = PaperResult(table="Table 5", value=30.6)


class CoVoST2EnZh(_CoVoST2):
    benchmark: str = "CoVoST 2 En->Zh (test)"
    target_language: str | None = "zh"
