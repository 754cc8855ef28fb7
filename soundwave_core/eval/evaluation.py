"""Scoring model predictions and writing the evaluation report (``swv eval`` is a thin layer over this).

A *record* is one line of a predictions JSONL, as a dict:

``id``
    item identifier (used in messages; the record's position ``#N`` is used when absent).
``prediction``
    the model's output text.
reference fields
    ``text`` (ASR transcript), ``target_text`` (translation; ``response`` is accepted when it is
    absent), ``label`` (classification; with optional ``options``, the list of choices in order
    A, B, C, ...), ``response`` (reference answer of an open-ended question).
``task``, ``language``, ``target_language``, ``instruction`` (or ``prompt``)
    descriptive fields; see :func:`evaluate`.
``error``
    set (non-empty) when generation failed for this item: the record is counted as failed and
    left out of every score.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import swv.eval.metrics as M
from swv.core.audio import DEFAULT_MAX_DURATION
from swv.core.config import CONFIG_NAME
from swv.core.devices import resolve_device
from swv.core.errors import InputError, UsageError
from swv.core.hub import resolve_model
from swv.core.io import atomic_file, atomic_write_json
from swv.infer.fingerprint import sha256_file, shared_fingerprint

if TYPE_CHECKING:
    from swv.eval.judge import JudgeSettings
    from swv.infer.batch import ManifestItem, RunSummary
    from swv.infer.pipeline import GenerationSettings

__all__ = [
    "EVAL_TASKS", "REFERENCE_FIELDS", "EvalRun", "Task", "evaluate", "evaluate_model", "format_table", "sha256_file",
    "write_report",
]

#: Files :func:`evaluate_model` writes in its output directory.
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.json"
JUDGE_FILE = "judge_inputs.jsonl"

#: What ``swv eval --task`` scores (the one list: the CLI and the presets use it).
Task = Literal["asr", "st", "classification", "open"]
EVAL_TASKS: tuple[str, ...] = get_args(Task)

#: Reference field(s) looked up for each task, first present wins.
REFERENCE_FIELDS: dict[str, tuple[str, ...]] = {
    "asr": ("text",),
    "st": ("target_text", "response"),
    "classification": ("label",),
    "open": ("response", "target_text"),
}

_TASK_SETTINGS: dict[str, set[str]] = {
    "asr": {"normalize", "spelling_mapping", "reference_field"},
    "st": {"target_language", "reference_field"},
    "classification": {"reference_field"},
    "open": {"judge_path", "reference_field"},
}

#: An answer longer than this many times its reference (in characters) is a runaway answer,
#: counted in the result's ``overlong`` (tasks asr and st).
OVERLONG_RATIO = 2.0

OPEN_TASK_NOTE = (
    "open-ended task: no automatic score is computed; the (instruction, prediction, reference) "
    "items are provided for an external judge (an LLM judge or human raters)"
)


# ---------------------------------------------------------------------------------------------
# Record handling
# ---------------------------------------------------------------------------------------------


def _record_name(record: Mapping[str, Any], index: int) -> str:
    rid = record.get("id")
    return f"record {rid!r}" if rid not in (None, "") else f"record #{index}"


def _record_id(record: Mapping[str, Any], index: int) -> str:
    rid = record.get("id")
    return str(rid) if rid not in (None, "") else f"#{index}"


def _is_failed(record: Mapping[str, Any]) -> bool:
    error = record.get("error")
    return error is not None and error != "" and error is not False


def _text_field(record: Mapping[str, Any], index: int, fields: Sequence[str], purpose: str) -> str:
    for field in fields:
        if field in record and record[field] is not None:
            value = record[field]
            if not isinstance(value, str):
                raise InputError(
                    f"{_record_name(record, index)}: field {field!r} must be a string, got {type(value).__name__}"
                )
            return value
    wanted = " or ".join(repr(f) for f in fields)
    raise InputError(f"{_record_name(record, index)}: missing field {wanted} ({purpose})")


def _prediction(record: Mapping[str, Any], index: int) -> str:
    return _text_field(record, index, ("prediction",), "the model output; failed items need an 'error' field")


def _split_records(records: Iterable[Mapping[str, Any]]) -> tuple[list[tuple[int, Mapping[str, Any]]], list[str], int]:
    """(index, record) pairs to score, ids of failed records, total number of records."""
    scored: list[tuple[int, Mapping[str, Any]]] = []
    failed: list[str] = []
    total = 0
    for index, record in enumerate(records):
        total += 1
        if not isinstance(record, Mapping):
            raise InputError(f"record #{index}: expected a JSON object, got {type(record).__name__}")
        if _is_failed(record):
            failed.append(_record_id(record, index))
        else:
            scored.append((index, record))
    return scored, failed, total


def _jsonable_setting(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return f"<mapping with {len(value)} entries>"
    return value


def _overlong(items: list[tuple[int, Mapping[str, Any]]], fields: Sequence[str], purpose: str) -> dict[str, Any]:
    """Runaway answers: predictions longer than :data:`OVERLONG_RATIO` times their reference, in
    characters (whitespace runs counted as one space)."""
    ids = []
    for index, record in items:
        reference = " ".join(_text_field(record, index, fields, purpose).split())
        prediction = " ".join(_prediction(record, index).split())
        if len(prediction) > OVERLONG_RATIO * len(reference):
            ids.append(_record_id(record, index))
    return {"count": len(ids), "ratio": OVERLONG_RATIO, "unit": "characters", "ids": ids}


# ---------------------------------------------------------------------------------------------
# Per-task scoring
# ---------------------------------------------------------------------------------------------


def _evaluate_asr(items: list[tuple[int, Mapping[str, Any]]], settings: dict[str, Any]) -> dict[str, Any]:
    mode = settings.get("normalize", M.AUTO_NORMALIZE)
    if mode not in M.NORMALIZE_CHOICES:
        raise UsageError(f"normalize: unknown mode {mode!r}, expected one of {', '.join(M.NORMALIZE_CHOICES)}")
    fields = (settings["reference_field"],) if settings.get("reference_field") else REFERENCE_FIELDS["asr"]
    spelling = settings.get("spelling_mapping")
    normalizers: dict[str, Any] = {}

    groups: dict[str, tuple[list[str], list[str]]] = {}
    modes_used: set[str] = set()
    for index, record in items:
        reference = _text_field(record, index, fields, "the reference transcript for task 'asr'")
        prediction = _prediction(record, index)
        lang = M.canonical_language(record.get("language"))
        if mode == M.AUTO_NORMALIZE:
            record_mode = "english" if lang in (None, "en") else "basic"
        else:
            record_mode = mode
        modes_used.add(record_mode)
        if record_mode not in normalizers:
            normalizers[record_mode] = M.get_normalizer(record_mode, spelling)
        norm = normalizers[record_mode]
        refs, hyps = groups.setdefault(lang or "unknown", ([], []))
        refs.append(norm(reference))
        hyps.append(norm(prediction))

    def score(refs: list[str], hyps: list[str]) -> dict[str, Any]:
        # the texts are normalised already ("none" only collapses whitespace)
        w = M.wer(refs, hyps, normalize="none")
        c = M.cer(refs, hyps, normalize="none")
        for details in (w, c):
            details.pop("normalize")
        return {"wer": w["wer"], "cer": c["cer"], "wer_details": w, "cer_details": c}

    all_refs = [r for refs, _ in groups.values() for r in refs]
    all_hyps = [h for _, hyps in groups.values() for h in hyps]
    result_metrics = score(all_refs, all_hyps)
    used = "+".join(sorted(modes_used))
    result_metrics["normalize"] = mode if mode != M.AUTO_NORMALIZE else f"{M.AUTO_NORMALIZE} ({used})"
    notes = []
    if spelling is None and "english" in modes_used:
        notes.append("English normaliser used without a British->American spelling mapping")
    empty = result_metrics["wer_details"]["num_empty_references"]
    if empty:
        notes.append(f"{empty} record(s) with an empty reference after normalisation were not scored")
    return {
        "metrics": result_metrics,
        "per_language": {lang: score(*groups[lang]) for lang in sorted(groups)},
        "overlong": _overlong(items, fields, "the reference transcript for task 'asr'"),
        "notes": notes,
    }


def _evaluate_st(items: list[tuple[int, Mapping[str, Any]]], settings: dict[str, Any]) -> dict[str, Any]:
    fields = (settings["reference_field"],) if settings.get("reference_field") else REFERENCE_FIELDS["st"]
    forced = settings.get("target_language")
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for index, record in items:
        reference = _text_field(record, index, fields, "the reference translation for task 'st'")
        prediction = _prediction(record, index)
        lang = forced or record.get("target_language") or record.get("language")
        refs, hyps = groups.setdefault(M.canonical_language(lang) or "unknown", ([], []))
        refs.append(reference)
        hyps.append(prediction)

    per_language = {
        lang: M.bleu(groups[lang][0], groups[lang][1], None if lang == "unknown" else lang) for lang in sorted(groups)
    }
    notes: list[str] = []
    if not per_language:
        result_metrics: dict[str, Any] = {"bleu": None, "chrf": None, "aggregate": "none"}
    elif len(per_language) == 1:
        only = next(iter(per_language.values()))
        result_metrics = {"bleu": only["bleu"], "chrf": only["chrf"], "aggregate": "corpus"}
    else:
        result_metrics = {
            "bleu": sum(v["bleu"] for v in per_language.values()) / len(per_language),
            "chrf": sum(v["chrf"] for v in per_language.values()) / len(per_language),
            "aggregate": f"macro-average over {len(per_language)} target languages",
        }
        notes.append("several target languages: overall BLEU/chrF is the unweighted mean of the per-language scores")
    if "unknown" in groups:
        notes.append("records without 'target_language'/'language' were scored with the default '13a' tokenizer")
    overlong = _overlong(items, fields, "the reference translation for task 'st'")
    return {"metrics": result_metrics, "per_language": per_language, "overlong": overlong, "notes": notes}


def _evaluate_classification(items: list[tuple[int, Mapping[str, Any]]], settings: dict[str, Any]) -> dict[str, Any]:
    field = settings.get("reference_field") or REFERENCE_FIELDS["classification"][0]
    groups: dict[str, dict[str, list[Any]]] = {}
    for index, record in items:
        name = _record_name(record, index)
        if record.get(field) is None:
            raise InputError(f"{name}: missing field {field!r} (the correct label for task 'classification')")
        label = record[field]
        if not isinstance(label, (str, int)) or isinstance(label, bool):
            raise InputError(f"{name}: field {field!r} must be a string, got {type(label).__name__}")
        options = record.get("options")
        if options is not None and (
            not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options)
        ):
            raise InputError(f"{name}: field 'options' must be a non-empty list of strings")
        group = groups.setdefault(str(record.get("task") or "default"), {"p": [], "l": [], "o": [], "i": []})
        group["p"].append(_prediction(record, index))
        group["l"].append(str(label))
        group["o"].append(options)
        group["i"].append(_record_id(record, index))

    per_task = {
        name: M.classification_accuracy(g["p"], g["l"], g["o"], ids=g["i"]) for name, g in sorted(groups.items())
    }
    if len(per_task) == 1:
        only = next(iter(per_task.values()))
        return {"metrics": {**only, "macro_accuracy": only["accuracy"]}, "notes": []}
    totals = {k: sum(v[k] for v in per_task.values()) for k in ("correct", "total", "ambiguous", "unmatched")}
    accuracies = [v["accuracy"] for v in per_task.values() if v["accuracy"] is not None]
    result_metrics = {"accuracy": totals["correct"] / totals["total"] if totals["total"] else None,
                      "macro_accuracy": sum(accuracies) / len(accuracies) if accuracies else None, **totals}
    return {"metrics": result_metrics, "per_task": per_task, "notes": []}


def _evaluate_open(items: list[tuple[int, Mapping[str, Any]]], settings: dict[str, Any]) -> dict[str, Any]:
    fields = (settings["reference_field"],) if settings.get("reference_field") else REFERENCE_FIELDS["open"]
    pairs = []
    for index, record in items:
        reference = _text_field(record, index, fields, "the reference answer for task 'open'")
        instruction = record.get("instruction", record.get("prompt"))
        pairs.append(
            {
                "id": _record_id(record, index),
                "task": record.get("task"),
                "instruction": instruction,
                "prediction": _prediction(record, index),
                "reference": reference,
            }
        )
    out: dict[str, Any] = {"metrics": None, "scored": False, "judge_inputs": pairs, "notes": [OPEN_TASK_NOTE]}
    judge_path = settings.get("judge_path")
    if judge_path is not None:
        with atomic_file(judge_path) as fh:
            for pair in pairs:
                fh.write(json.dumps(pair, ensure_ascii=False) + "\n")
        out["judge_path"] = os.fspath(judge_path)
        out["notes"].append(f"judge inputs written to {os.fspath(judge_path)}")
    return out


_SCORERS = {
    "asr": _evaluate_asr,
    "st": _evaluate_st,
    "classification": _evaluate_classification,
    "open": _evaluate_open,
}


def evaluate(records: Iterable[Mapping[str, Any]], task: Task, **settings: Any) -> dict[str, Any]:
    """Score prediction records for one kind of task.

    ``task``:

    ``"asr"``
        WER and CER against ``text``. Settings: ``normalize`` (``"auto"`` by default: the Whisper
        English normaliser for records whose ``language`` is English or missing, the basic
        normaliser for other languages; or force ``"english"``, ``"basic"``, ``"none"``) and
        ``spelling_mapping`` (Whisper's ``normalizer.json`` or a mapping, see
        :mod:`swv.eval.metrics`). ``per_language`` holds the scores for each language.
    ``"st"``
        BLEU and chrF against ``target_text`` (or ``response``), grouped by target language
        (``target_language``, else ``language``, or the ``target_language`` setting); the
        tokenizer follows :func:`swv.eval.metrics.bleu_tokenizer_for`. With several target languages
        the overall scores are the unweighted mean of the per-language corpus scores.
    ``"classification"``
        accuracy of ``prediction`` against ``label`` (and ``options`` when present), see
        :func:`swv.eval.metrics.classification_accuracy`. Records are grouped by their ``task`` field;
        answers are only matched against labels of their own group, and with several groups
        ``per_task`` holds each group's result; ``macro_accuracy`` is the unweighted mean of the
        groups' accuracies (``accuracy`` counts every record alike).
    ``"open"``
        no score. The result holds ``judge_inputs`` (``id``, ``task``, ``instruction``,
        ``prediction``, ``reference`` from ``response``/``target_text``) for an external judge,
        ``scored: False`` and a note saying so; the ``judge_path`` setting also writes them as
        JSONL (an LLM judge, :mod:`swv.eval.judge`, scores them in :func:`evaluate_model`).

    For ``"asr"`` and ``"st"``, ``overlong`` counts the runaway answers: ``count`` predictions
    longer than ``ratio`` (:data:`OVERLONG_RATIO`, 2) times their reference in characters, and
    their ``ids``.

    Every task accepts ``reference_field`` to read the reference from another field; settings
    passed as ``None`` are ignored (so a CLI can forward all its options). Records without a
    ``language`` appear under ``"unknown"`` in ``per_language``. Records with
    a non-empty ``error`` field are counted in ``num_failed``/``failed_ids`` and not scored. A
    scored record without its reference field or ``prediction`` raises :class:`InputError`.
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    if task not in EVAL_TASKS:
        raise UsageError(f"task: unknown task {task!r}, expected one of {', '.join(EVAL_TASKS)}")
    unknown = sorted(set(settings) - _TASK_SETTINGS[task])
    if unknown:
        allowed = ", ".join(sorted(_TASK_SETTINGS[task]))
        raise UsageError(f"unknown setting {unknown[0]!r} for task {task!r} (allowed: {allowed})")
    scored, failed, total = _split_records(records)
    result: dict[str, Any] = {
        "task": task,
        "num_records": total,
        "num_failed": len(failed),
        "num_scored": len(scored),
        "failed_ids": failed,
        "settings": {k: _jsonable_setting(v) for k, v in sorted(settings.items())},
    }
    result.update(_SCORERS[task](scored, settings))
    if failed:
        result["notes"].append(f"{len(failed)} record(s) failed during generation and were not scored")
    if not scored and task != "open":
        result["notes"].append("no records to score")
    return result


# ---------------------------------------------------------------------------------------------
# Presentation and report
# ---------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by two spaces; numeric-looking cells right-aligned, text left-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    numeric = [
        i > 0 and all(str(r[i]).rstrip("%").replace(".", "", 1).lstrip("-").isdigit() or r[i] == "-" for r in rows)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if num else str(c).ljust(w) for c, w, num in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text summary of an :func:`evaluate` result (WER/CER/accuracy as percentages,
    BLEU/chrF on the 0-100 scale)."""
    task = result["task"]
    parts = [
        f"task: {task}   records: {result['num_records']}   scored: {result['num_scored']}"
        f"   failed: {result['num_failed']}"
    ]
    metrics = result.get("metrics")
    if task == "asr":
        def asr_row(name: str, m: Mapping[str, Any]) -> list[str]:
            w = m["wer_details"]
            return [name, str(w["num_scored"]), _pct(m["wer"]), _pct(m["cer"]), str(w["substitutions"]),
                    str(w["deletions"]), str(w["insertions"]), str(w["num_ref_words"])]
        rows = [asr_row("all", metrics)]
        if len(result.get("per_language", {})) > 1:
            rows += [asr_row(lang, m) for lang, m in result["per_language"].items()]
        parts.append(_grid(["group", "n", "WER", "CER", "sub", "del", "ins", "ref words"], rows))
        parts.append(f"normalisation: {metrics['normalize']}")
    elif task == "st":
        per_language = result.get("per_language", {})
        rows = [["all", str(result["num_scored"]), _num(metrics["bleu"]), _num(metrics["chrf"]), metrics["aggregate"]]]
        rows += [[lang, str(m["num_segments"]), _num(m["bleu"]), _num(m["chrf"]), m["tokenizer"]]
                 for lang, m in per_language.items()]
        parts.append(_grid(["group", "n", "BLEU", "chrF", "tokenizer / aggregate"], rows))
        signatures = [f"BLEU {lang}: {m['bleu_signature']}" for lang, m in per_language.items() if m["bleu_signature"]]
        signatures += [f"chrF: {m['chrf_signature']}" for m in list(per_language.values())[:1] if m["chrf_signature"]]
        if signatures:
            parts.append("\n".join(signatures))
    elif task == "classification":
        def cls_row(name: str, m: Mapping[str, Any]) -> list[str]:
            return [name, str(m["total"]), _pct(m["accuracy"]), str(m["correct"]), str(m["ambiguous"]),
                    str(m["unmatched"])]
        headers = ["group", "n", "accuracy", "correct", "ambiguous", "unmatched"]
        per_task = result.get("per_task")
        rows = [cls_row("all", metrics)]
        if per_task:
            rows += [cls_row(name, m) for name, m in per_task.items()]
        parts.append(_grid(headers, rows))
        if per_task:
            parts.append(f"macro accuracy (mean over {len(per_task)} tasks): {_pct(metrics['macro_accuracy'])}")
        label_rows = []
        for name, m in (per_task or {"": metrics}).items():
            for label, c in m.get("per_label", {}).items():
                label_rows.append([f"{name}/{label}" if name else label, str(c["total"]), _pct(c["accuracy"]),
                                   str(c["correct"])])
        if label_rows:
            parts.append(_grid(["label", "n", "accuracy", "correct"], label_rows))
    elif task == "open" and result.get("scored"):
        rows = [["all", str(metrics["scored"]), _num(metrics["judge_score"])]]
        rows += [[name, str(m["scored"]), _num(m["judge_score"])] for name, m in result.get("per_task", {}).items()]
        parts.append(_grid(["group", "n", "judge score (1-10)"], rows))
    elif task == "open":
        parts.append(f"{len(result.get('judge_inputs', []))} item(s) for an external judge; no score computed")
    if "overlong" in result:
        overlong = result["overlong"]
        parts.append(f"overlong answers (longer than {overlong['ratio']:g}x the reference): {overlong['count']}")
    if result.get("notes"):
        parts.append("\n".join(f"note: {note}" for note in result["notes"]))
    return "\n\n".join(parts) + "\n"


def _swv_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("swv")
    except Exception:  # not installed as a distribution
        return None


def write_report(
    result: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None,
    manifest_path: str | os.PathLike[str] | None,
    generation_settings: Mapping[str, Any] | None,
    fingerprint: Mapping[str, str] | None = None,
    model_identity: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``result`` as a JSON report (atomically) with its provenance.

    The report holds ``report_version``, ``created_at`` (UTC), ``swv_version``, ``model_dir``
    (absolute path), ``model_identity`` (:func:`swv.infer.fingerprint.model_identity`, or
    ``None``), ``manifest`` (``path`` and ``sha256`` of the manifest file, or ``None``),
    ``generation_settings``, ``fingerprint`` (the parts of :mod:`swv.infer.fingerprint`, as in
    every prediction line, or ``None``), and every key of ``result`` (``task``, counts,
    ``metrics``, breakdowns, notes, judge inputs). Returns the report path.
    """
    manifest: dict[str, Any] | None = None
    if manifest_path is not None:
        mpath = Path(manifest_path)
        if not mpath.is_file():
            raise InputError(f"{mpath}: manifest file not found (needed for its sha256 in the report)")
        manifest = {"path": os.fspath(mpath.resolve()), "sha256": sha256_file(mpath)}
    report: dict[str, Any] = {
        "report_version": 1,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "swv_version": _swv_version(),
        "model_dir": None if model_dir is None else os.fspath(Path(model_dir).resolve()),
        "model_identity": dict(model_identity) if model_identity is not None else None,
        "manifest": manifest,
        "generation_settings": dict(generation_settings) if generation_settings is not None else None,
        "fingerprint": dict(fingerprint) if fingerprint is not None else None,
    }
    clash = sorted(set(report) & set(result))
    if clash:
        raise UsageError(f"result has reserved report key {clash[0]!r}")
    report.update(result)
    try:
        report = json.loads(json.dumps(report, default=_jsonable))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"report is not JSON-serialisable: {exc}") from None
    return atomic_write_json(path, report)


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: paths become strings, anything else unknown is an error."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"value of type {type(obj).__name__} in the report")


# ---------------------------------------------------------------------------------------------
# A model on a test manifest (``swv eval``)
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalRun:
    """What :func:`evaluate_model` did: the scored ``result`` (see :func:`evaluate`), where the
    report was written, and the generation run (``None`` when existing predictions were scored)."""

    result: dict[str, Any]
    report: Path
    generation: RunSummary | None


def evaluate_model(
    model_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    task: Task,
    out_dir: str | os.PathLike[str],
    *,
    predictions: str | os.PathLike[str] | None = None,
    settings: GenerationSettings | None = None,
    system: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 8,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    normalize: str | None = None,
    target_language: str | None = None,
    revision: str | None = None,
    benchmark: Mapping[str, Any] | None = None,
    judge: JudgeSettings | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> EvalRun:
    """Evaluate a model on a test manifest and write ``out_dir/report.json``.

    Without ``predictions``, generates into ``out_dir/predictions.jsonl`` first, resumably: the
    items answered there by a run with the same fingerprint (:mod:`swv.infer.fingerprint`: the
    model, the generation settings, the prompts, the manifest) are kept; a file written by
    another run or by an older swv is refused (one line naming what differs), or with
    ``overwrite`` emptied first (the run starts over). Prompts: the record's
    instruction/prompt, else the task default of the model's instruction table
    (:func:`swv.infer.batch.task_prompt`); generation settings left open take the model's saved
    defaults. ``normalize`` and ``target_language`` go to :func:`evaluate`; the report records
    the generation settings (the decoding controls included: ``no_repeat_ngram_size``,
    ``repetition_penalty``, ``length_bound`` and its factors), the run's ``fingerprint`` (also in
    every prediction line; with ``predictions``, the one all their lines carry, else ``None``)
    and ``model_identity``, and ``benchmark`` (a preset's description, :mod:`swv.eval.presets`)
    under ``"benchmark"``; ``judge`` (task open) scores the answers (:func:`_apply_judge`).
    ``model_dir`` may be a Hugging Face Hub id (at ``revision``; :func:`swv.core.hub.resolve_model`):
    the report then records its snapshot directory, which names the repository and the commit.
    """
    model_dir, manifest, out_dir = Path(model_dir), Path(manifest), Path(out_dir)
    if predictions is None:
        model_dir = resolve_model(model_dir, revision)
        load = _Loading(system, device, dtype, batch_size, max_duration, trust_remote_code)
        run = _generate(model_dir, manifest, task, out_dir / PREDICTIONS_FILE, settings, load, target_language,
                        overwrite)
    else:
        if overwrite:
            raise UsageError("--overwrite starts generated predictions over; it does not apply to --predictions")
        run = _existing(Path(predictions), manifest)
    records = _eval_records(run.items, run.predictions)
    judge_path = out_dir / JUDGE_FILE if task == "open" else None
    result = evaluate(records, task, normalize=normalize, target_language=target_language, judge_path=judge_path)
    _apply_judge(result, judge, out_dir)
    result["predictions_file"] = str(run.predictions.resolve())
    if benchmark is not None:
        result["benchmark"] = dict(benchmark)
    report = write_report(result, out_dir / REPORT_FILE, model_dir=model_dir, manifest_path=manifest,
                          generation_settings=run.generation, fingerprint=run.fingerprint,
                          model_identity=run.model_identity)
    return EvalRun(result, report, run.summary)


def _apply_judge(result: dict[str, Any], judge: JudgeSettings | None, out_dir: Path) -> None:
    """Score an ``open`` result's answers with the LLM judge, if any (:func:`swv.eval.judge.judge_items`,
    its judgments in ``out_dir``): ``metrics`` get ``judge_score``, ``per_task`` each task's, every
    judge input its ``score``, ``judge`` describes the judge."""
    from swv.eval.judge import JUDGE_SCORES_FILE, judge_items

    if judge is None:
        return
    if result["task"] != "open":
        raise UsageError(f"--judge-url scores open answers (--task open), not task {result['task']!r}")
    judged = judge_items(result["judge_inputs"], judge, out_dir / JUDGE_SCORES_FILE)
    for item in result["judge_inputs"]:
        item["score"] = judged["scores"][item["id"]]
    result.update(metrics=judged["metrics"], per_task=judged["per_task"], judge=judged["judge"], scored=True)
    result["notes"] = [note for note in result["notes"] if note != OPEN_TASK_NOTE]
    result["notes"].append(f"scored 1-10 by the LLM judge {judge.model!r} at {judge.endpoint()}; "
                           f"judgments in {out_dir / JUDGE_SCORES_FILE}")


@dataclass(frozen=True)
class _Loading:
    """How :func:`evaluate_model` loads and runs the model (its keyword arguments of that name)."""

    system: str | None
    device: str
    dtype: str | None
    batch_size: int
    max_duration: float | None
    trust_remote_code: bool


@dataclass(frozen=True)
class _Predictions:
    """The predictions :func:`evaluate_model` scores: the file, the manifest's items, and when it
    generated them, the generation settings as the report records them, the run's summary, its
    fingerprint and the model's identity (for existing predictions: the fingerprint their lines
    share, if any)."""

    predictions: Path
    items: list[ManifestItem]
    generation: dict[str, Any] | None = None
    summary: RunSummary | None = None
    fingerprint: dict[str, str] | None = None
    model_identity: dict[str, Any] | None = None


def _existing(predictions: Path, manifest: Path) -> _Predictions:
    """Existing predictions (``--predictions``) of the manifest's items."""
    from swv.infer.batch import read_items, read_output

    items = read_items(manifest, None)
    shared = shared_fingerprint(record for _, record in read_output(predictions)) if predictions.is_file() else None
    return _Predictions(predictions, items, fingerprint=shared)


def _generate(
    model_dir: Path, manifest: Path, task: Task, predictions: Path, settings: GenerationSettings | None,
    load: _Loading, target_language: str | None, overwrite: bool,
) -> _Predictions:
    """Generate the answers of the manifest's items into ``predictions`` (resumable, see
    :func:`swv.infer.batch.run_manifest`)."""
    from swv.infer import batch
    from swv.infer.pipeline import GenerationSettings

    table = batch.saved_instructions(model_dir)
    items = batch.read_items(
        manifest, lambda record, where: batch.task_prompt(record, where, task, target_language, table), task
    )
    settings = (settings if settings is not None else GenerationSettings()).over(batch.saved_generation(model_dir))
    fingerprint = batch.manifest_fingerprint(model_dir, manifest, items, settings, load.system)
    summary = batch.run_manifest(
        lambda: batch.load_pipeline(model_dir, load.device, load.dtype, load.system, load.trust_remote_code),
        manifest, items, predictions, settings,
        batch_size=load.batch_size, max_duration=load.max_duration,
        fingerprint=fingerprint, overwrite=overwrite, elsewhere="another --output-dir",
    )
    generation = {
        **settings.as_dict(),
        "system_prompt": load.system if load.system is not None else batch.saved_system_prompt(model_dir),
        "batch_size": load.batch_size,
        "device": str(resolve_device(load.device)),
        "dtype": load.dtype,
        "max_duration": load.max_duration,
        "prompts": dict(Counter(item.prompt for item in items)),
    }
    return _Predictions(predictions, items, generation, summary, fingerprint.parts, fingerprint.model)


def _eval_records(items: Sequence[ManifestItem], predictions: Path) -> list[dict[str, Any]]:
    """Manifest references + the prediction (or error) of every manifest item, in manifest order."""
    from swv.infer.batch import COPIED_FIELDS, read_output

    if not predictions.is_file():
        raise InputError(f"{predictions}: predictions file not found")
    by_id = {str(record["id"]): record for _, record in read_output(predictions)}
    missing = [item.id for item in items if item.id not in by_id]
    if missing:
        raise InputError(
            f"{predictions}: {len(missing)} manifest item(s) have no prediction (first: {missing[0]!r}); "
            "run swv eval without --predictions to generate them"
        )
    records = []
    for item in items:
        prediction = by_id[item.id]
        record: dict[str, Any] = {"id": item.id}
        record.update({field: item.record[field] for field in COPIED_FIELDS if field in item.record})
        for field in ("prediction", "error"):
            if field in prediction:
                record[field] = prediction[field]
        records.append(record)
    return records
