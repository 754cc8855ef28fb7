"""The demo's synthetic data set: clips and swv manifests for training and held-out evaluation.

Layout under ``<workdir>/data``::

    audio/{train,dev,heldout}/*.flac    16 kHz mono FLAC
    train_asr.jsonl      every training clip (corpus sentences and questions): text, task asr
    train_asr_sft.jsonl  the corpus clips with varied transcription instructions
    train_pitch.jsonl    the corpus clips of male voices: "is the voice high or low?" -> high/low
    train_qa.jsonl       the question clips: "answer the question" -> answer
    dev_asr.jsonl        dev sentences: for choosing recipes and variants, never trained on
    heldout_asr.jsonl    held-out sentences (never trained on; the reported result)
    heldout_pitch.jsonl  the held-out clips of male voices, as classification items (label, options)
    heldout_qa.jsonl     held-out questions (response, keywords)
    data.json            what was built, from what (a rerun with the same inputs skips the work)

Each corpus sentence is spoken once (``corpus_limit`` of them, or all), each training question
``renditions`` times by different voices, dev and held-out items once (:func:`plan_voice`:
evaluation voices use variants no training clip uses). The pitch task uses male voices only:
espeak's female variants raise the whole pitch range, so their ``-p`` label would not be what
a listener hears. Audio paths in the manifests are relative to the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.io import atomic_write_json
from swv.demo.synth import SAMPLE_RATE, Synthesizer, Voice, plan_voice
from swv.demo.text import DemoText
from swv.model.defaults import ASR_INSTRUCTION

PITCH_OPTIONS = ["high", "low"]
PITCH_INSTRUCTIONS = (
    "Is the speaker's voice high or low?",
    "Listen to the voice. Is it high or low?",
    "Does the speaker have a high voice or a low voice?",
)
ASR_INSTRUCTIONS = (
    ASR_INSTRUCTION,
    "What did the speaker say?",
    "Write down exactly what you hear.",
)
QA_INSTRUCTIONS = (
    "Answer the question.",
    "Answer the spoken question briefly.",
    "Listen and answer the question.",
)
#: The prompts used for evaluation (one per task, also seen in training).
EVAL_PROMPTS = {"asr": ASR_INSTRUCTIONS[0], "pitch": PITCH_INSTRUCTIONS[0], "qa": QA_INSTRUCTIONS[0]}


@dataclass(frozen=True)
class Clip:
    """One utterance to synthesize: where it goes and what it says."""

    id: str
    split: str  # train | dev | heldout
    kind: str  # sentence | question
    text: str
    voice: Voice
    item: int  # index of the sentence/question in its list

    @property
    def relpath(self) -> str:
        return f"audio/{self.split}/{self.id}.flac"


def corpus_subset(sentences: tuple[str, ...], limit: int | None) -> tuple[tuple[int, str], ...]:
    """``limit`` sentences spread evenly over the corpus (so every topic file is represented), with
    their corpus indices; all of them with ``None``."""
    count = len(sentences) if limit is None else min(limit, len(sentences))
    indices = sorted({(i * len(sentences)) // count for i in range(count)})
    return tuple((i, sentences[i]) for i in indices)


def plan_clips(text: DemoText, renditions: int, seed: int = 0, corpus_limit: int | None = None) -> list[Clip]:
    """Every clip of the data set, in a fixed order: ``corpus_limit`` corpus sentences spread
    over the corpus (all with ``None``) once each, the training questions ``renditions`` times,
    the dev and held-out items once."""
    clips: list[Clip] = []
    corpus = corpus_subset(text.train_sentences, corpus_limit)
    for i, sentence in corpus:
        voice = plan_voice("train-sentence", i, 0, seed)
        clips.append(Clip(f"train-s{i:04d}-0", "train", "sentence", sentence, voice, i))
    groups = [
        ("train", "question", tuple(q.text for q in text.train_questions), renditions),
        ("dev", "sentence", text.dev_sentences, 1),
        ("heldout", "sentence", text.heldout_sentences, 1),
        ("heldout", "question", tuple(q.text for q in text.heldout_questions), 1),
    ]
    for split, kind, items, count in groups:
        for i, item in enumerate(items):
            for r in range(count):
                voice = plan_voice(f"{split}-{kind}", i, r, seed)
                clips.append(Clip(f"{split}-{kind[0]}{i:04d}-{r}", split, kind, item, voice, i))
    return clips


def write_clip(root: Path, clip: Clip, synthesize: Synthesizer) -> float:
    """Synthesize one clip to ``root / clip.relpath`` (atomically); returns its duration."""
    from swv.core.audio import write_audio

    wav = synthesize(clip.text, clip.voice)
    path = root / clip.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, wav, SAMPLE_RATE)
    return round(len(wav) / SAMPLE_RATE, 3)


def _base(clip: Clip, duration: float) -> dict[str, Any]:
    return {"id": clip.id, "audio": clip.relpath, "duration": duration, "language": "en",
            "speaker": clip.voice.speaker, "pitch": clip.voice.pitch_label, "rate": clip.voice.rate}


def manifests(clips: list[Clip], durations: dict[str, float], text: DemoText) -> dict[str, list[dict[str, Any]]]:
    """The manifest records of every file, from the clips and their durations."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "train_asr", "train_asr_sft", "train_pitch", "train_qa", "dev_asr", "heldout_asr", "heldout_pitch", "heldout_qa")}
    questions = {"train": text.train_questions, "heldout": text.heldout_questions}
    for n, clip in enumerate(clips):
        base = _base(clip, durations[clip.id])
        if clip.kind == "question":
            question = questions[clip.split][clip.item]
            if clip.split == "train":
                out["train_asr"].append({**base, "text": clip.text, "task": "asr"})
            out[f"{clip.split}_qa"].append({
                **base, "id": f"{clip.id}-qa", "task": "qa", "text": clip.text,
                "instruction": QA_INSTRUCTIONS[n % len(QA_INSTRUCTIONS)] if clip.split == "train" else EVAL_PROMPTS["qa"],
                "response": question.answer, "keywords": list(question.keywords)})
            continue
        label = clip.voice.pitch_label
        pitch = {**base, "id": f"{clip.id}-pitch", "task": "pitch", "label": label, "options": PITCH_OPTIONS,
                 "response": label}
        with_pitch = not clip.voice.female
        if clip.split == "train":
            out["train_asr"].append({**base, "text": clip.text, "task": "asr"})
            out["train_asr_sft"].append({**base, "id": f"{clip.id}-asr", "task": "asr", "text": clip.text,
                                         "instruction": ASR_INSTRUCTIONS[n % len(ASR_INSTRUCTIONS)], "response": clip.text})
            if with_pitch:
                out["train_pitch"].append({**pitch, "instruction": PITCH_INSTRUCTIONS[n % len(PITCH_INSTRUCTIONS)]})
        else:
            out[f"{clip.split}_asr"].append({**base, "text": clip.text, "task": "asr", "instruction": EVAL_PROMPTS["asr"]})
            if clip.split == "heldout" and with_pitch:
                out["heldout_pitch"].append({**pitch, "instruction": EVAL_PROMPTS["pitch"]})
    return out


def _fingerprint(clips: list[Clip]) -> str:
    raw = json.dumps([[c.id, c.text, c.voice.espeak_name, c.voice.pitch, c.voice.rate] for c in clips])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def build_dataset(
    root: Path,
    text: DemoText,
    synthesize: Synthesizer,
    *,
    renditions: int,
    seed: int = 0,
    corpus_limit: int | None = None,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Synthesize the clips and write the manifests under ``root``; returns the ``data.json``
    summary. Skips everything when ``root/data.json`` describes the same clips."""
    from swv.data.manifest import write_manifest

    clips = plan_clips(text, renditions, seed, corpus_limit)
    digest = _fingerprint(clips)
    stamp = root / "data.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("fingerprint") == digest and all((root / f"{n}.jsonl").is_file() for n in old.get("counts", {})):
            log(f"data: {len(clips)} clips already synthesized in {root}")
            return old
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        lengths = list(pool.map(lambda c: write_clip(root, c, synthesize), clips))
    durations = {c.id: d for c, d in zip(clips, lengths)}
    records = manifests(clips, durations, text)
    for name, rows in records.items():
        write_manifest(root / f"{name}.jsonl", rows)
    summary = {
        "fingerprint": digest,
        "renditions": renditions,
        "corpus_limit": corpus_limit,
        "seed": seed,
        "distinct_train_transcripts": len({c.text for c in clips if c.split == "train"}),
        "train_vocabulary": len({w for c in clips if c.split == "train" for w in c.text.split()}),
        "counts": {name: len(rows) for name, rows in records.items()},
        "hours": {split: round(sum(d for c, d in zip(clips, lengths) if c.split == split) / 3600, 3)
                  for split in ("train", "dev", "heldout")},
        "oov_rate": {"dev": round(text.oov_rate(text.dev_sentences), 4), "heldout": round(text.oov_rate(text.heldout_sentences), 4)},
    }
    atomic_write_json(stamp, summary)
    log(f"data: synthesized {len(clips)} clips ({summary['hours']['train']:.2f} h train, {summary['hours']['dev']:.2f} h dev, "
        f"{summary['hours']['heldout']:.2f} h held-out) in {root}")
    return summary
