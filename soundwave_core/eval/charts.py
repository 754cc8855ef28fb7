"""``swv eval --plot``: the report's score table (all, then each language, task or label) as a
bar chart next to ``report.json``; drawn by :mod:`swv.core.plotting`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swv.core.errors import UsageError
from swv.eval.evaluation import EVAL_TASKS

#: the chart's file name, next to the report
GROUPS_CHART = "groups.png"
#: the tasks whose reports have scores to chart (``open`` only collects judge inputs)
CHARTED_TASKS = tuple(task for task in EVAL_TASKS if task != "open")
ALL = "all"


def check_charted(task: str, what: str = "chart") -> None:
    """A :class:`UsageError` (naming ``what``) for a task whose report has no scores to chart."""
    if task not in CHARTED_TASKS:
        raise UsageError(f"{what}: task {task!r} has no scores to chart (charts: {', '.join(CHARTED_TASKS)})")


def group_scores(result: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, float | None]]]:
    """The y-axis label and ``{group: {metric: value}}`` of an :func:`swv.eval.evaluation.evaluate`
    result: the rows of its score table (:func:`swv.eval.evaluation.format_table`), error rates
    and accuracies in percent, BLEU and chrF on their 0-100 scale."""
    task = result["task"]
    check_charted(task)
    metrics = result.get("metrics") or {}
    if task == "asr":
        per_language = result.get("per_language", {})
        rows = {ALL: metrics, **(per_language if len(per_language) > 1 else {})}
        return "% (lower is better)", {g: {"WER": _pct(m.get("wer")), "CER": _pct(m.get("cer"))} for g, m in rows.items()}
    if task == "st":
        rows = {ALL: metrics, **result.get("per_language", {})}
        return "score (0-100)", {g: {"BLEU": m.get("bleu"), "chrF": m.get("chrf")} for g, m in rows.items()}
    per_task = result.get("per_task") or {}  # classification
    rows = {ALL: metrics, **per_task}
    for name, m in (per_task or {"": metrics}).items():
        rows.update({f"{name}/{label}" if name else label: c for label, c in m.get("per_label", {}).items()})
    return "accuracy %", {g: {"accuracy": _pct(m.get("accuracy"))} for g, m in rows.items()}


def write_group_chart(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The per-group bar chart of ``result`` as a PNG at ``path``."""
    from swv.core.plotting import bar_chart

    ylabel, groups = group_scores(result)
    benchmark = (result.get("benchmark") or {}).get("name")
    title = f"{result['task']}: {benchmark}" if benchmark else f"{result['task']}: {result.get('num_scored', 0)} scored"
    return bar_chart(groups, path, title=title, ylabel=ylabel)


def _pct(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)
