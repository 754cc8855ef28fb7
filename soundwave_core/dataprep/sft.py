"""`swv data sft`: instruction data for Stage III from labelled manifests (paper section 3.2).

Three question-answer formats, one per record, picked at random (seeded) from ``formats``:

* ``direct``: an open question; the response is just the label (``"Happiness."``).
* ``choice``: the question lists lettered options (``A. neutral, B. fear, ...``); the
  response is ``"The answer is D. happiness."``. Options are shuffled per record unless
  ``shuffle_options`` is false.
* ``sentence``: the response is a natural sentence containing the label.

Each task has several question wordings per format; unknown tasks get generic wordings
built from the task name. With ``cot`` (chain of thought) the instruction also asks for
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
from pathlib import Path
from typing import Any

from swv.core.errors import InputError, UsageError
from swv.core.progress import Report, count_lines, progress
from swv.data.manifest import read_manifest, rebase_record, record_label, write_manifest

FORMATS = ("direct", "choice", "sentence")
COT_REQUEST = "First write down what is said in the audio, then answer."


@dataclass(frozen=True)
class TaskTemplates:
    """Question wordings of one task. ``sentence`` pairs a question with an answer pattern
    containing ``{label}``."""

    direct: tuple[str, ...]
    choice: tuple[str, ...]
    sentence: tuple[tuple[str, str], ...]


#: Question wordings of some of the tasks of :data:`swv.model.defaults.TASKS`.
TEMPLATES: dict[str, TaskTemplates] = {
    "emotion": TaskTemplates(
        direct=("Which emotion comes through in this speech?",
                "How does the speaker feel, judging from their voice?",
                "Name the emotion expressed by the speaker."),
        choice=("Which emotion best describes the speaker?",
                "What is the speaker's emotional state?",
                "Listen to the voice. Which emotion is it?"),
        sentence=(("How would you describe the speaker's mood?", "The speaker sounds {label}."),
                  ("What emotion can you hear in this recording?", "I can hear {label} in the speaker's voice."),
                  ("Tell me the emotion conveyed in this clip.", "The emotion conveyed here is {label}.")),
    ),
    "gender": TaskTemplates(
        direct=("What is the speaker's gender?", "Is the voice male or female?"),
        choice=("Which gender does the voice belong to?", "Identify the speaker's gender."),
        sentence=(("Who is talking, a man or a woman?", "The speaker's voice is {label}."),
                  ("What gender is the person speaking?", "The person speaking is {label}.")),
    ),
    "age": TaskTemplates(
        direct=("How old does the speaker sound?", "Estimate the speaker's age group."),
        choice=("Which age group does the speaker belong to?", "What is the likely age of the speaker?"),
        sentence=(("Guess the age of the person talking.", "The speaker sounds like they are in their {label}."),
                  ("What age range fits this voice?", "This voice fits the {label} age range.")),
    ),
    "language_id": TaskTemplates(
        direct=("Which language is spoken in this audio?", "Identify the spoken language."),
        choice=("What language is the speaker using?", "Which language do you hear?"),
        sentence=(("What language is this recording in?", "The recording is in {label}."),
                  ("Tell me which language the person speaks.", "The person speaks {label}.")),
    ),
    "intent": TaskTemplates(
        direct=("What does the speaker want to do?", "What is the intent of this request?"),
        choice=("Which intent matches the spoken request?", "Classify the intent of the utterance."),
        sentence=(("What is the user asking for?", "The user's intent is {label}."),
                  ("Describe the purpose of this utterance.", "The purpose of this utterance is {label}.")),
    ),
    "sound": TaskTemplates(
        direct=("What sound can be heard in this clip?", "Identify the sound event in the audio."),
        choice=("Which sound is present in the recording?", "What kind of sound is this?"),
        sentence=(("Describe the sound you hear.", "The clip contains {label}."),
                  ("What is making noise in this audio?", "The sound in this audio is {label}.")),
    ),
    "scene": TaskTemplates(
        direct=("Where was this audio recorded?", "What acoustic scene is this?"),
        choice=("Which place does this recording come from?", "Classify the acoustic environment."),
        sentence=(("Describe the environment of the recording.", "This was recorded in a {label} environment."),
                  ("What setting do the background sounds suggest?", "The background suggests {label}.")),
    ),
}


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
        listed = ", ".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options))
        instruction = f"{rng.choice(tpl.choice)} Choose one option: {listed}."
        letter = string.ascii_uppercase[options.index(label)]
        answer = f"The answer is {letter}. {label}."
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
    formats = [f.strip() for f in formats if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--formats: unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}"
                         if bad else "--formats must name at least one format")
    manifest, out = Path(manifest), Path(out)
    if labels is not None:
        labels = [lab.strip() for lab in labels if lab.strip()]
        lowered = [lab.lower() for lab in labels]
        dup = next((lab for i, lab in enumerate(lowered) if lab in lowered[:i]), None)
        if dup is not None or not labels:
            raise UsageError(f"--labels: duplicate label {dup!r}" if dup else "--labels must not be empty")
    else:
        found = {str(rec[label_field]).strip() for _, rec in read_manifest(manifest)
                 if rec.get(label_field) not in (None, "")}
        labels = sorted(found, key=str.lower)
        if not labels:
            raise InputError(f"{manifest}: no row has a {label_field!r} field")
    if "choice" in formats and len(labels) > 26:
        raise UsageError(f"the choice format supports up to 26 labels, got {len(labels)}")
    canonical = {lab.lower(): lab for lab in labels}
    rng = random.Random(seed)
    report = SftReport(command="sft", output=out)
    total = count_lines(manifest) if manifest.is_file() else None

    def records() -> Iterator[dict[str, Any]]:
        for line_no, rec in progress(read_manifest(manifest), total=total, desc="sft", enabled=show_progress):
            name = record_label(manifest, line_no, rec)
            raw = rec.get(label_field)
            if raw in (None, ""):
                report.drop(f"no {label_field!r} field", name)
                continue
            label = canonical.get(str(raw).strip().lower())
            if label is None:
                report.drop("label not in --labels", f"{name}: {raw!r}")
                continue
            transcript = None
            if cot:
                text = rec.get("text")
                if not isinstance(text, str) or not text.strip():
                    report.drop("no 'text' transcript for --cot", name)
                    continue
                transcript = " ".join(text.split())
            fmt = rng.choice(formats)
            example = make_example(label, labels, fmt, rng, task=task, transcript=transcript,
                                   shuffle_options=shuffle_options)
            out_rec = rebase_record(rec, manifest, out)
            out_rec.update(example, task=task, label=label, format=fmt, cot=cot)
            report.formats[fmt] += 1
            report.labels[label] += 1
            yield out_rec

    report.written = write_manifest(out, records())
    report.notes.append("formats: " + ", ".join(f"{f} {report.formats[f]}" for f in formats))
    report.notes.append("labels: " + ", ".join(f"{lab} {report.labels[lab]}" for lab in labels)
                        + (" (chain of thought: transcription first)" if cot else ""))
    return report
