"""Held-out evaluation of the demo's models.

* the alignment adapter's CTC head: greedy CTC transcripts (the LLM does not run), scored with
  :func:`swv.eval.metrics.wer`;
* the whole model: ``swv eval`` (ASR WER, pitch classification accuracy, and the answers to the
  spoken questions, which :func:`qa_keyword_accuracy` scores: an answer is right when it
  contains one of the question's keywords);
* the backbone alone answering the held-out questions as text: what the LLM knows.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swv.data.manifest import (
    read_manifest,
    rebase_record,
    resolve_audio,
    write_manifest,
)

#: rows per generation batch of every evaluation here (fewer, longer batches: the demo's
#: evaluation phases took 30-40 % less time in the seventh session's README run than with 8;
#: a by-hand measurement, not a benchmark in benchmarks/)
EVAL_BATCH_SIZE = 32


@dataclass
class Items:
    """A held-out manifest: its path, records and decoded waveforms (16 kHz)."""

    manifest: Path
    records: list[dict[str, Any]]
    waveforms: list[np.ndarray]

    @classmethod
    def load(cls, manifest: Path, limit: int | None = None) -> Items:
        from swv.core.audio import load_audio

        records = [r for _, r in read_manifest(manifest)][:limit]
        return cls(manifest, records, [load_audio(resolve_audio(manifest, r), 16_000) for r in records])

    def write(self, path: Path) -> Path:
        """These records as a manifest at ``path`` (audio paths rebased)."""
        write_manifest(path, [rebase_record(r, self.manifest, path) for r in self.records])
        return path


def ctc_wer(model: Any, items: Items) -> dict[str, Any]:
    """WER of the alignment adapter's greedy CTC transcripts."""
    from swv.demo.ctc import transcribe_ctc
    from swv.eval.metrics import wer

    start = time.perf_counter()
    hypotheses = transcribe_ctc(model, items.waveforms)
    score = wer([r["text"] for r in items.records], hypotheses)
    return {"wer": score["wer"], "num_ref_words": score["num_ref_words"], "seconds": round(time.perf_counter() - start, 2),
            "examples": examples(items.records, hypotheses, "text")}


@torch.no_grad()
def text_qa_accuracy(model: Any, questions: Sequence[Any], batch_size: int = EVAL_BATCH_SIZE) -> dict[str, Any]:
    """The backbone answering ``questions`` (:class:`swv.demo.text.Question`) as text, no audio,
    greedy, with the model's system prompt and chat template, through :meth:`SpeechLM.generate`."""
    from swv.model.processor import SpeechLMProcessor
    from swv.model.stopping import left_pad

    processor = SpeechLMProcessor.from_model(model)
    builder, pad_id = processor.prompts, processor.pad_token_id
    start = time.perf_counter()
    answers: list[str] = []
    for i in range(0, len(questions), batch_size):
        rows = [builder.generation_ids(q.text[0].upper() + q.text[1:] + "?", has_audio=False) for q in questions[i : i + batch_size]]
        ids, mask = left_pad(rows, pad_id)
        new = model.generate(ids, mask, max_new_tokens=24, do_sample=False)
        answers += processor.batch_decode(new)
    hits = [q.is_answered_by(a) for q, a in zip(questions, answers)]
    return {"accuracy": sum(hits) / max(1, len(hits)), "correct": sum(hits), "total": len(hits),
            "seconds": round(time.perf_counter() - start, 2),
            "examples": [{"reference": q.text, "prediction": a} for q, a in list(zip(questions, answers))[:3]]}


def swv_eval(model_dir: Path, items: Items, task: str, out_dir: Path, max_new_tokens: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What ``swv eval MODEL --manifest ... --task TASK`` does, from a clean ``out_dir``.

    Returns ``(report, predictions)``: the JSON report (with the score ``table`` swv eval prints)
    and the prediction records."""
    from swv.eval.evaluation import PREDICTIONS_FILE, evaluate_model, format_table
    from swv.infer.settings import GenerationSettings

    if out_dir.exists():  # eval resumes from existing predictions: never reuse another model's
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    manifest = items.write(out_dir / "manifest.jsonl")
    run = evaluate_model(model_dir, manifest, task, out_dir, settings=GenerationSettings(max_new_tokens=max_new_tokens),
                         batch_size=EVAL_BATCH_SIZE)  # type: ignore[arg-type]
    report = json.loads(run.report.read_text(encoding="utf-8"))
    predictions = [json.loads(line) for line in (out_dir / PREDICTIONS_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
    report["table"] = format_table(run.result)
    return report, predictions


def eval_task(model_dir: Path, items: Items, task: str, out_dir: Path, max_new_tokens: int) -> dict[str, Any]:
    """The model on ``items`` through ``swv eval``: ``wer`` (asr) or ``accuracy`` (classification)."""
    start = time.perf_counter()
    report, predictions = swv_eval(model_dir, items, task, out_dir, max_new_tokens)
    metrics = report.get("metrics", {})
    field = "text" if task == "asr" else "label"
    by_id = {p["id"]: p.get("prediction", "") for p in predictions}
    answers = [by_id.get(r["id"], "") for r in items.records]
    out = {k: metrics.get(k) for k in ("wer", "cer", "accuracy", "correct", "total", "ambiguous", "unmatched") if k in metrics}
    if "wer" in out:
        out["num_ref_words"] = metrics.get("wer_details", {}).get("num_ref_words")
        out["overlong"] = report.get("overlong", {}).get("count")
    return {**out, "seconds": round(time.perf_counter() - start, 2), "predictions_file": str(out_dir / "predictions.jsonl"),
            "table": report.get("table", ""), "examples": examples(items.records, answers, field)}


def qa_keyword_accuracy(model_dir: Path, items: Items, questions: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Spoken questions answered through ``swv eval --task open``, scored by keywords."""
    start = time.perf_counter()
    _, predictions = swv_eval(model_dir, items, "open", out_dir, max_new_tokens=24)
    by_id = {p["id"]: p.get("prediction", "") for p in predictions}
    answers = [by_id.get(r["id"], "") for r in items.records]
    hits = [questions[r["text"]].is_answered_by(a) for r, a in zip(items.records, answers)]
    return {"accuracy": sum(hits) / max(1, len(hits)), "correct": sum(hits), "total": len(hits),
            "seconds": round(time.perf_counter() - start, 2), "predictions_file": str(out_dir / "predictions.jsonl"),
            "examples": examples(items.records, answers, "text")}


def examples(records: list[dict[str, Any]], predictions: list[str], field: str, n: int = 5) -> list[dict[str, str]]:
    return [{"id": r["id"], "reference": str(r.get(field, "")), "prediction": p} for r, p in list(zip(records, predictions))[:n]]
