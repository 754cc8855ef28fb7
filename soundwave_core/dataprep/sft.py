"""`swv data sft`: instruction data for Stage III from labelled manifests (paper section 3.2).

Three question-answer formats, one per record, picked at random (seeded) from ``formats``:

* ``direct``: an open question; the response is just the label (``"Happiness."``).
* ``choice``: the question lists lettered options in the paper's wording (Table 4: ``"...
  Pick one answer from: A. neutral B. fear C. surprise D. happiness."``, as the benchmark presets
  ask); the response is ``"The one answer you should pick is D. happiness."``. Options are
  shuffled per record unless ``shuffle_options`` is false.
* ``sentence``: the response is a natural sentence containing the label.

Each task has several question wordings per format (the packaged table ``sft_templates.yaml``);
unknown tasks get generic wordings built from the task name. With ``cot`` (chain of thought) the instruction also asks for
a transcription first and the response is ``"Transcription: <text>\\nAnswer: <answer>"``.
Records keep their fields and get ``instruction``, ``response``, ``task``, ``label``
(the canonical spelling from ``labels``), ``options`` (in the order shown, or the label
set for non-choice formats), ``format`` and ``cot``.
"""

from __future__ import annotations

import os
import random
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from swv.core.errors import InputError, UsageError
from swv.core.progress import Report, count_lines, progress
from swv.data.manifest import read_manifest, rebase_record, record_label, write_manifest
from swv.model.defaults import choice_answer, choice_question

FORMATS = ("direct", "choice", "sentence")
COT_REQUEST = "First write down what is said in the audio, then answer."


@dataclass(frozen=True)
class TaskTemplates:
    """Question wordings of one task. ``sentence`` pairs a question with an answer pattern
    containing ``{label}``."""

    direct: tuple[str, ...]
    choice: tuple[str, ...]
    sentence: tuple[tuple[str, str], ...]


#: The packaged wordings table (package data of :mod:`swv.dataprep`).
TEMPLATES_FILE = "sft_templates.yaml"
_SENTENCE_KEYS = ("question", "answer")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings, as a tuple."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: expected a non-empty list of non-empty strings")
    return tuple(value)


def _fills_label(pattern: str) -> bool:
    """Whether ``pattern.format(label=...)`` works and puts the label in."""
    try:
        return "\0" in pattern.format(label="\0")
    except (KeyError, IndexError, ValueError):
        return False


def _sentence_pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    """``[{question, answer}, ...]`` as ``((question, answer), ...)``; each answer fills in ``{label}``."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of {{question, answer}} entries")
    pairs = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or sorted(entry) != sorted(_SENTENCE_KEYS):
            raise ValueError(f"{where}[{i}]: expected exactly the keys {', '.join(_SENTENCE_KEYS)}")
        question, answer = _strings([entry["question"], entry["answer"]], f"{where}[{i}]")
        if not _fills_label(answer):
            raise ValueError(f"{where}[{i}].answer: must contain {{label}} and no other {{...}} field")
        pairs.append((question, answer))
    return tuple(pairs)


def parse_templates(data: Any, where: str) -> dict[str, TaskTemplates]:
    """Validate the wordings table (``{task: {direct, choice, sentence}}``)."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: expected a mapping of task name to wordings")
    table = {}
    for task, entry in data.items():
        if not isinstance(entry, dict) or sorted(entry) != sorted(FORMATS):
            raise ValueError(f"{where}: task {task!r}: expected exactly the keys {', '.join(FORMATS)}")
        table[str(task)] = TaskTemplates(
            direct=_strings(entry["direct"], f"{where}: {task}.direct"),
            choice=_strings(entry["choice"], f"{where}: {task}.choice"),
            sentence=_sentence_pairs(entry["sentence"], f"{where}: {task}.sentence"),
        )
    return table


def load_templates() -> dict[str, TaskTemplates]:
    """The per-task wordings shipped in :data:`TEMPLATES_FILE`, validated; a :class:`ValueError`
    naming the file and entry if the packaged table is malformed."""
    resource = resources.files(__package__) / TEMPLATES_FILE
    return parse_templates(yaml.safe_load(resource.read_text(encoding="utf-8")), TEMPLATES_FILE)


#: The built-in task wordings, loaded once at import.
#: Question wordings of some of the tasks of :data:`swv.model.defaults.TASKS`.
TEMPLATES: dict[str, TaskTemplates] = load_templates()


def templates_for(task: str) -> TaskTemplates:
    """The wordings for ``task``, or generic ones naming the task (``speaker_count`` -> "speaker count")."""
    if task in TEMPLATES:
        return TEMPLATES[task]
    noun = task.replace("_", " ").replace("-", " ").strip()
    return TaskTemplates(
        direct=(f"What is the {noun} of this audio?", f"Determine the {noun} for this recording."),
        choice=(f"Which {noun} fits this audio?", f"Select the correct {noun} for the recording."),
        sentence=((f"Tell me the {noun} of this clip.", f"The {noun} of this clip is {{label}}."),
                  (f"What {noun} do you hear?", f"I would say the {noun} is {{label}}.")),
    )


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_example(label: str, labels: list[str], fmt: str, rng: random.Random, *, task: str,
                 transcript: str | None = None, shuffle_options: bool = True) -> dict[str, Any]:
    """One instruction/response pair for ``label`` in format ``fmt`` (with CoT if ``transcript``)."""
    tpl = templates_for(task)
    options = list(labels)
    if fmt == "direct":
        instruction = rng.choice(tpl.direct)
        answer = f"{_capitalize(label)}."
    elif fmt == "choice":
        if len(labels) > len(string.ascii_uppercase):
            raise UsageError(f"the choice format supports up to 26 labels, got {len(labels)}")
        if shuffle_options:
            rng.shuffle(options)
        instruction = choice_question(rng.choice(tpl.choice), options)
        answer = choice_answer(options, label)
    elif fmt == "sentence":
        instruction, pattern = rng.choice(tpl.sentence)
        answer = pattern.format(label=label)
    else:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if transcript is not None:
        instruction = f"{instruction} {COT_REQUEST}"
        response = f"Transcription: {transcript}\nAnswer: {answer}"
    else:
        response = answer
    return {"instruction": instruction, "response": response, "options": options}


@dataclass
class SftReport(Report):
    """Result of :func:`build_sft`."""

    formats: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)


def _check_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """The requested formats, stripped; a :class:`UsageError` for none or an unknown one."""
    formats = [f.strip() for f in formats if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--formats: unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}"
                         if bad else "--formats must name at least one format")
    return formats


def _label_set(labels: list[str] | None, manifest: Path, label_field: str) -> list[str]:
    """``labels`` stripped and checked for case-insensitive duplicates, or every distinct value
    of ``label_field`` in ``manifest`` (sorted case-insensitively)."""
    if labels is not None:
        labels = [lab.strip() for lab in labels if lab.strip()]
        lowered = [lab.lower() for lab in labels]
        dup = next((lab for i, lab in enumerate(lowered) if lab in lowered[:i]), None)
        if dup is not None or not labels:
            raise UsageError(f"--labels: duplicate label {dup!r}" if dup else "--labels must not be empty")
        return labels
    found = {str(rec[label_field]).strip() for _, rec in read_manifest(manifest)
             if rec.get(label_field) not in (None, "")}
    labels = sorted(found, key=str.lower)
    if not labels:
        raise InputError(f"{manifest}: no row has a {label_field!r} field")
    return labels


@dataclass
class _SftWriter:
    """Turns one labelled manifest row into an instruction record, or reports why it cannot."""

    manifest: Path
    out: Path
    task: str
    label_field: str
    labels: list[str]
    formats: list[str]
    cot: bool
    shuffle_options: bool
    rng: random.Random
    report: SftReport

    canonical: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.canonical = {lab.lower(): lab for lab in self.labels}

    def record(self, line_no: int, rec: dict[str, Any]) -> dict[str, Any] | None:
        name = record_label(self.manifest, line_no, rec)
        raw = rec.get(self.label_field)
        if raw in (None, ""):
            self.report.drop(f"no {self.label_field!r} field", name)
            return None
        label = self.canonical.get(str(raw).strip().lower())
        if label is None:
            self.report.drop("label not in --labels", f"{name}: {raw!r}")
            return None
        transcript = None
        if self.cot:
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                self.report.drop("no 'text' transcript for --cot", name)
                return None
            transcript = " ".join(text.split())
        fmt = self.rng.choice(self.formats)
        example = make_example(label, self.labels, fmt, self.rng, task=self.task, transcript=transcript,
                               shuffle_options=self.shuffle_options)
        out_rec = rebase_record(rec, self.manifest, self.out)
        out_rec.update(example, task=self.task, label=label, format=fmt, cot=self.cot)
        self.report.formats[fmt] += 1
        self.report.labels[label] += 1
        return out_rec

    def records(self, total: int | None, show_progress: bool) -> Iterator[dict[str, Any]]:
        for line_no, rec in progress(read_manifest(self.manifest), total=total, desc="sft", enabled=show_progress):
            out_rec = self.record(line_no, rec)
            if out_rec is not None:
                yield out_rec


def build_sft(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    task: str,
    label_field: str = "label",
    labels: list[str] | None = None,
    formats: list[str] | tuple[str, ...] = FORMATS,
    cot: bool = False,
    shuffle_options: bool = True,
    seed: int = 0,
    show_progress: bool = True,
) -> SftReport:
    """Turn the labelled rows of ``manifest`` into instruction records in ``out``.

    Labels are matched case-insensitively against ``labels`` (default: every distinct
    value found, sorted). Rows without the label field, with a label outside ``labels``,
    or (with ``cot``) without a ``text`` transcript are dropped and reported.
    """
    if not task.strip():
        raise UsageError("--task must not be empty")
    formats = _check_formats(formats)
    manifest, out = Path(manifest), Path(out)
    labels = _label_set(labels, manifest, label_field)
    if "choice" in formats and len(labels) > 26:
        raise UsageError(f"the choice format supports up to 26 labels, got {len(labels)}")
    rng = random.Random(seed)
    report = SftReport(command="sft", output=out)
    total = count_lines(manifest) if manifest.is_file() else None
    writer = _SftWriter(manifest, out, task, label_field, labels, formats, cot, shuffle_options, rng, report)
    report.written = write_manifest(out, writer.records(total, show_progress))
    report.notes.append("formats: " + ", ".join(f"{f} {report.formats[f]}" for f in formats))
    report.notes.append("labels: " + ", ".join(f"{lab} {report.labels[lab]}" for lab in labels)
                        + (" (chain of thought: transcription first)" if cot else ""))
    return report
