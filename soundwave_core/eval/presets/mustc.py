"""MuST-C tst-COMMON, English -> Dutch, Italian, Romanian, Spanish: zero-shot translation for
Soundwave, trained on En->De only (BLEU; paper Table 5). The paper does not name the split;
tst-COMMON is MuST-C's common test set."""

from __future__ import annotations

from swv.dataprep.corpora.mustc import MUSTC_TEST_SPLIT
from swv.eval.evaluation import Task
from swv.eval.presets.base import Metric, PaperResult, PresetConfig


class _MuSTC(PresetConfig):
    task: Task = "st"
    metric: Metric = "BLEU"
    corpus_format: str = "mustc"
    split: str | None = MUSTC_TEST_SPLIT


class MuSTCEnNl(_MuSTC):
    benchmark: str = "MuST-C En->Nl (tst-COMMON, zero-shot)"
    target_language: str | None = "nl"
    paper: PaperResult | None = PaperResult(table="Table 5", value=27.0)


class MuSTCEnIt(_MuSTC):
    benchmark: str = "MuST-C En->It (tst-COMMON, zero-shot)"
    target_language: str | None = "it"
    paper: PaperResult | None = PaperResult(table="Table 5", value=22.2)


class MuSTCEnRo(_MuSTC):
    benchmark: str = "MuST-C En->Ro (tst-COMMON, zero-shot)"
    target_language: str | None = "ro"
    paper: PaperResult | None = PaperResult(table="Table 5", value=16.9)


class MuSTCEnEs(_MuSTC):
    # the paper's text cuts this score off after "26."; no value is stored rather than a guess
    benchmark: str = "MuST-C En->Es (tst-COMMON, zero-shot)"
    target_language: str | None = "es"
