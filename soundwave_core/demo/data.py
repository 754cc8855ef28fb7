"""The demo's synthetic data set: clips and swv manifests for training, dev and held-out evaluation.

Layout under ``<workdir>/data``::

    audio/{train,dev,heldout}/*.flac    16 kHz mono FLAC
    train_asr.jsonl      every training clip (corpus sentences and questions): text, task asr
    train_asr_sft.jsonl  the corpus clips with varied transcription instructions
    train_{pitch,sex,rate}.jsonl  label tasks ("is the voice high or low?" -> high/low, ...)
    train_qa.jsonl       the question clips: "answer the question" -> answer
    dev_asr.jsonl        dev sentences spoken by the dev engine (never in training), clean
    dev_noisy_asr.jsonl  the same clips with reverberation and noise at 10-20 dB SNR
    dev_qa.jsonl         dev questions spoken by the dev engine (for choosing; response, keywords)
    heldout_asr.jsonl    held-out sentences (training engines, unseen voices; the reported result)
    heldout_{pitch,sex,rate}.jsonl  held-out clips as classification items (label, options)
    heldout_qa.jsonl     held-out questions (response, keywords)
    data.json            what was built, from what (a rerun with the same inputs skips the work)

Each corpus sentence is spoken once (``corpus_limit`` of them, or all), each training question
``renditions`` times by different voices, each dev question :data:`DEV_QUESTION_RENDITIONS`
times, dev sentences and held-out items once (:func:`plan_voice`). Half
of the training clips (chosen by a hash of their id) go through :data:`TRAIN_AUGMENTATION`
(:mod:`swv.dataprep.augment`: speed, synthetic reverberation, coloured or babble noise, gain),
deterministically from the seed and the clip id. A label task only takes the clips whose engine
gives that label (:class:`Voice`), and each label manifest is cut to an equal number of clips per
label (:func:`balanced`). Audio paths in the manifests are relative to the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swv.core.io import atomic_write_json
from swv.dataprep.augment import Augmentation, augment, clip_generator
from swv.demo.synth import ORDERED_ENGINES, SAMPLE_RATE, Synthesizer, Voice, plan_voice
from swv.demo.text import DemoText
from swv.model.defaults import ASR_INSTRUCTION

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


@dataclass(frozen=True)
class LabelTask:
    """A classification task whose label synthesis gives for free: ``label(voice)`` (None where
    the voice's engine does not give it), the options and the instructions (the first one is the
    evaluation prompt)."""

    label: Callable[[Voice], str | None]
    options: list[str]
    instructions: tuple[str, ...]


LABEL_TASKS = {
    "pitch": LabelTask(lambda v: v.pitch_label, ["high", "low"], (
        "Is the speaker's voice high or low?",
        "Listen to the voice. Is it high or low?",
        "Does the speaker have a high voice or a low voice?")),
    "sex": LabelTask(lambda v: v.sex, ["female", "male"], (
        "Is the speaker male or female?",
        "Is this a man's voice or a woman's voice? Answer male or female.",
        "Listen to the voice. Male or female?")),
    "rate": LabelTask(lambda v: v.rate_label, ["fast", "slow"], (
        "Is the speaker talking fast or slow?",
        "Does the speaker speak slowly or quickly? Answer fast or slow.",
        "Listen. Is the speech fast or slow?")),
}
PITCH_OPTIONS = LABEL_TASKS["pitch"].options
PITCH_INSTRUCTIONS = LABEL_TASKS["pitch"].instructions
#: The prompts used for evaluation (one per task, also seen in training).
EVAL_PROMPTS = {"asr": ASR_INSTRUCTIONS[0], "qa": QA_INSTRUCTIONS[0], **{k: t.instructions[0] for k, t in LABEL_TASKS.items()}}
#: Augmentation of half of the training clips, and of the noisy dev split (every clip reverberated
#: and noisy at 10-20 dB SNR; no speed change, so its words and labels stay the clean clip's).
TRAIN_AUGMENTATION = Augmentation()
NOISY_AUGMENTATION = Augmentation(noise_prob=1.0, snr_db=(10.0, 20.0), reverb_prob=1.0, rt60_s=(0.3, 0.7),
                                  speed_prob=0.0, gain_db=(0.0, 0.0))
AUGMENTATIONS = {"train": TRAIN_AUGMENTATION, "noisy": NOISY_AUGMENTATION}
#: Clean clips of the same split whose voices make babble noise for an augmentation.
BABBLE_POOL = 16
#: Renditions of each dev question (the dev engine has two voices).
DEV_QUESTION_RENDITIONS = 2


@dataclass(frozen=True)
class Clip:
    """One utterance to synthesize: where it goes, what it says, and how it is augmented
    (``augment``: a key of :data:`AUGMENTATIONS`, or "" for a clean clip)."""

    id: str
    split: str  # train | dev | heldout
    kind: str  # sentence | question
    text: str
    voice: Voice
    item: int  # index of the sentence/question in its list
    augment: str = ""

    @property
    def relpath(self) -> str:
        return f"audio/{self.split}/{self.id}.flac"


def corpus_subset(sentences: tuple[str, ...], limit: int | None) -> tuple[tuple[int, str], ...]:
    """``limit`` sentences spread evenly over the corpus (so every topic file is represented), with
    their corpus indices; all of them with ``None``."""
    count = len(sentences) if limit is None else min(limit, len(sentences))
    indices = sorted({(i * len(sentences)) // count for i in range(count)})
    return tuple((i, sentences[i]) for i in indices)


def _train_augment(clip_id: str, seed: int) -> str:
    """Half of the training clips, by a hash of the id (independent of the alternating labels)."""
    return "train" if hashlib.sha256(f"{seed}/{clip_id}".encode()).digest()[0] % 2 else ""


def plan_clips(text: DemoText, renditions: int, seed: int = 0, corpus_limit: int | None = None) -> list[Clip]:
    """Every clip of the data set, in a fixed order: ``corpus_limit`` corpus sentences spread
    over the corpus (all with ``None``) once each, the training questions ``renditions`` times,
    the dev sentences and held-out items once, the dev questions :data:`DEV_QUESTION_RENDITIONS`
    times, then a noisy copy of every dev sentence clip."""
    clips: list[Clip] = []
    corpus = corpus_subset(text.train_sentences, corpus_limit)
    for n, (i, sentence) in enumerate(corpus):
        clip_id = f"train-s{i:04d}-0"
        clips.append(Clip(clip_id, "train", "sentence", sentence, plan_voice("train-sentence", n, 0, seed), i,
                          _train_augment(clip_id, seed)))
    groups = [
        ("train", "question", tuple(q.text for q in text.train_questions), renditions),
        ("dev", "sentence", text.dev_sentences, 1),
        ("heldout", "sentence", text.heldout_sentences, 1),
        ("heldout", "question", tuple(q.text for q in text.heldout_questions), 1),
        ("dev", "question", tuple(q.text for q in text.dev_questions), DEV_QUESTION_RENDITIONS),
    ]
    for split, kind, items, count in groups:
        for i, item in enumerate(items):
            for r in range(count):
                clip_id = f"{split}-{kind[0]}{i:04d}-{r}"
                augmentation = _train_augment(clip_id, seed) if split == "train" else ""
                clips.append(Clip(clip_id, split, kind, item, plan_voice(f"{split}-{kind}", i, r, seed), i, augmentation))
    clips += [Clip(f"{c.id}-noisy", c.split, c.kind, c.text, c.voice, c.item, "noisy") for c in clips
              if c.split == "dev" and c.kind == "sentence"]
    return clips


def babble_pools(clips: Sequence[Clip], synthesize: Synthesizer) -> dict[str, list[tuple[str, np.ndarray]]]:
    """For each augmentation in use, ``(text, waveform)`` of the first :data:`BABBLE_POOL` clean
    clips of the splits it is applied to."""
    pools: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name in sorted({c.augment for c in clips if c.augment}):
        splits = {c.split for c in clips if c.augment == name}
        sources = [c for c in clips if c.split in splits and not c.augment][:BABBLE_POOL]
        pools[name] = [(c.text, synthesize(c.text, c.voice)) for c in sources]
    return pools


def write_clip(root: Path, clip: Clip, synthesize: Synthesizer, pools: dict[str, list[tuple[str, np.ndarray]]] | None = None,
               seed: int = 0) -> float:
    """Synthesize one clip (augmented as ``clip.augment`` says, babble from ``pools`` without the
    clip's own text) to ``root / clip.relpath`` (atomically); returns its duration."""
    from swv.core.audio import write_audio

    wav = synthesize(clip.text, clip.voice)
    if clip.augment:
        pool = [w for t, w in (pools or {}).get(clip.augment, []) if t != clip.text]
        wav = augment(wav, SAMPLE_RATE, AUGMENTATIONS[clip.augment], clip_generator(seed, clip.id), pool)
    path = root / clip.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, wav, SAMPLE_RATE)
    return round(len(wav) / SAMPLE_RATE, 3)


def _base(clip: Clip, duration: float) -> dict[str, Any]:
    v = clip.voice
    return {"id": clip.id, "audio": clip.relpath, "duration": duration, "language": "en", "speaker": v.speaker,
            "engine": v.engine, "augment": clip.augment or "clean", "pitch": v.pitch_label, "sex": v.sex,
            "rate_label": v.rate_label, "rate": v.rate}


def balanced(rows: list[dict[str, Any]], key: str = "label") -> list[dict[str, Any]]:
    """``rows`` cut to the same number per value of ``key`` (the first ones of each, in order)."""
    counts: dict[Any, int] = {}
    for row in rows:
        counts[row[key]] = counts.get(row[key], 0) + 1
    keep = min(counts.values(), default=0) if len(counts) > 1 else 0
    seen: dict[Any, int] = {}
    out = []
    for row in rows:
        seen[row[key]] = seen.get(row[key], 0) + 1
        if seen[row[key]] <= keep:
            out.append(row)
    return out


def _label_rows(clip: Clip, base: dict[str, Any], n: int) -> dict[str, dict[str, Any]]:
    """The classification items of one clip, per label task its voice gives a label for."""
    out = {}
    for name, task in LABEL_TASKS.items():
        label = task.label(clip.voice)
        if label is None:
            continue
        instruction = task.instructions[n % len(task.instructions)] if clip.split == "train" else EVAL_PROMPTS[name]
        out[name] = {**base, "id": f"{clip.id}-{name}", "task": name, "label": label, "options": task.options,
                     "response": label, "instruction": instruction}
    return out


def manifests(clips: list[Clip], durations: dict[str, float], text: DemoText) -> dict[str, list[dict[str, Any]]]:
    """The manifest records of every file, from the clips and their durations."""
    names = ["train_asr", "train_asr_sft", "train_qa", "dev_asr", "dev_noisy_asr", "dev_qa", "heldout_asr", "heldout_qa",
             *(f"{split}_{task}" for split in ("train", "heldout") for task in LABEL_TASKS)]
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    questions = {"train": text.train_questions, "dev": text.dev_questions, "heldout": text.heldout_questions}
    for n, clip in enumerate(clips):
        base = _base(clip, durations[clip.id])
        if clip.split == "dev" and clip.kind == "sentence":
            name = "dev_noisy_asr" if clip.augment else "dev_asr"
            out[name].append({**base, "text": clip.text, "task": "asr", "instruction": EVAL_PROMPTS["asr"]})
            continue
        labels = _label_rows(clip, base, n) if clip.split != "dev" else {}  # dev: transcripts and questions only
        for task, row in labels.items():
            out[f"{clip.split}_{task}"].append(row)
        if clip.kind == "question":
            question = questions[clip.split][clip.item]
            if clip.split == "train":
                out["train_asr"].append({**base, "text": clip.text, "task": "asr"})
            out[f"{clip.split}_qa"].append({
                **base, "id": f"{clip.id}-qa", "task": "qa", "text": clip.text,
                "instruction": QA_INSTRUCTIONS[n % len(QA_INSTRUCTIONS)] if clip.split == "train" else EVAL_PROMPTS["qa"],
                "response": question.answer, "keywords": list(question.keywords)})
        elif clip.split == "train":
            out["train_asr"].append({**base, "text": clip.text, "task": "asr"})
            out["train_asr_sft"].append({**base, "id": f"{clip.id}-asr", "task": "asr", "text": clip.text,
                                         "instruction": ASR_INSTRUCTIONS[n % len(ASR_INSTRUCTIONS)], "response": clip.text})
        else:
            out["heldout_asr"].append({**base, "text": clip.text, "task": "asr", "instruction": EVAL_PROMPTS["asr"]})
    for split in ("train", "heldout"):
        for task in LABEL_TASKS:
            out[f"{split}_{task}"] = balanced(out[f"{split}_{task}"])
    return out


def clip_counts(clips: Sequence[Clip]) -> dict[str, dict[str, int]]:
    """``{split: {"engine/augmentation": clips}}``."""
    out: dict[str, dict[str, int]] = {}
    for c in clips:
        key = f"{c.voice.engine}/{c.augment or 'clean'}"
        out.setdefault(c.split, {})[key] = out.get(c.split, {}).get(key, 0) + 1
    return out


def _fingerprint(clips: list[Clip]) -> str:
    raw = json.dumps([[c.id, c.text, repr(c.voice), c.augment] for c in clips])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def synthesize_clips(root: Path, clips: list[Clip], synthesize: Synthesizer, seed: int = 0, workers: int = 2) -> dict[str, float]:
    """Write every clip under ``root`` (:func:`write_clip`; the babble pools first); returns
    ``{clip id: duration}``. The clips of :data:`~swv.demo.synth.ORDERED_ENGINES` are synthesized
    one at a time in plan order by one thread, beside ``workers`` threads for the others, so
    that an engine whose output depends on the order of its calls gives the same audio on every
    build."""
    pools = babble_pools(clips, synthesize)

    def write(clip: Clip) -> tuple[str, float]:
        return clip.id, write_clip(root, clip, synthesize, pools, seed)

    ordered = [c for c in clips if c.voice.engine in ORDERED_ENGINES]
    others = [c for c in clips if c.voice.engine not in ORDERED_ENGINES]
    with ThreadPoolExecutor(max_workers=1) as serial, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        in_order = serial.submit(lambda: [write(c) for c in ordered])
        durations = dict(pool.map(write, others))
        durations.update(in_order.result())
    return durations


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
    durations = synthesize_clips(root, clips, synthesize, seed, workers)
    lengths = [durations[c.id] for c in clips]
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
        "clips": clip_counts(clips),
        "hours": {split: round(sum(d for c, d in zip(clips, lengths) if c.split == split) / 3600, 3)
                  for split in ("train", "dev", "heldout")},
        "oov_rate": {"dev": round(text.oov_rate(text.dev_sentences), 4), "heldout": round(text.oov_rate(text.heldout_sentences), 4)},
    }
    atomic_write_json(stamp, summary)
    log(f"data: synthesized {len(clips)} clips ({summary['hours']['train']:.2f} h train, {summary['hours']['dev']:.2f} h dev, "
        f"{summary['hours']['heldout']:.2f} h held-out) in {root}")
    return summary
