"""LibriSpeech test-clean and test-other (WER, English normaliser; paper Table 5)."""

from __future__ import annotations

from swv.eval.evaluation import Task
from swv.eval.metrics import NormalizeMode
from swv.eval.presets.base import Metric, PaperResult, PresetConfig


class _LibriSpeech(PresetConfig):
    task: Task = "asr"
    metric: Metric = "WER"
    corpus_format: str = "librispeech"
    normalize: NormalizeMode | None = "english"


class LibriSpeechTestClean(_LibriSpeech):
    benchmark: str = "LibriSpeech test-clean"
    split: str | None = "test-clean"
    paper: PaperResult | None = PaperResult(table="Table 5", value=0.021)


class LibriSpeechTestOther(_LibriSpeech):
    benchmark: str = "LibriSpeech test-other"
    split: str | None = "test-other"
    paper: PaperResult | None = PaperResult(table="Table 5", value=0.050)
