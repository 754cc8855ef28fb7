"""Tests for `swv data sft`."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swv.cli.data import app
from swv.core.errors import InputError, UsageError
from swv.data.manifest import resolve_audio
from swv.dataprep.sft import (
    COT_REQUEST,
    TEMPLATES,
    build_sft,
    make_example,
    parse_templates,
    templates_for,
)

LABELS = ["neutral", "fear", "surprise", "happiness"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_manifest(tmp_path: Path, n: int = 40, field: str = "label") -> Path:
    labels = ["Neutral", "fear", "SURPRISE", "happiness"]
    lines = [json.dumps({"id": f"u{i}", "audio": f"wav/u{i}.wav", "text": f"sentence number {i}", "task": "asr",
                         "duration": 2.0, field: labels[i % 4]}) for i in range(n)]
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(lines) + "\n")
    return m


# --------------------------------------------------------------------------- single examples


def test_direct_format() -> None:
    ex = make_example("happiness", LABELS, "direct", random.Random(0), task="emotion")
    assert ex["response"] == "Happiness."
    assert ex["instruction"] in TEMPLATES["emotion"].direct
    assert ex["options"] == LABELS


def test_choice_format_fixed_and_shuffled_options() -> None:
    ex = make_example("happiness", LABELS, "choice", random.Random(0), task="emotion", shuffle_options=False)
    # the paper's Table 4 wording, format 2
    assert ex["response"] == "The one answer you should pick is D. happiness."
    assert ex["instruction"].endswith(" Pick one answer from: A. neutral B. fear C. surprise D. happiness.")
    assert ex["options"] == LABELS
    for seed in range(10):
        ex = make_example("fear", LABELS, "choice", random.Random(seed), task="emotion")
        letter = "ABCD"[ex["options"].index("fear")]
        assert ex["response"] == f"The one answer you should pick is {letter}. fear."
        assert f"{letter}. fear" in ex["instruction"] and sorted(ex["options"]) == sorted(LABELS)


def test_sentence_format() -> None:
    for seed in range(10):
        ex = make_example("surprise", LABELS, "sentence", random.Random(seed), task="emotion")
        pairs = dict(TEMPLATES["emotion"].sentence)
        assert ex["response"] == pairs[ex["instruction"]].format(label="surprise")
        assert "surprise" in ex["response"]


def test_cot_puts_transcription_first() -> None:
    ex = make_example("fear", LABELS, "direct", random.Random(0), task="emotion", transcript="watch out")
    assert ex["response"] == "Transcription: watch out\nAnswer: Fear."
    assert ex["instruction"].endswith(COT_REQUEST)


def test_generic_templates_for_unknown_task() -> None:
    tpl = templates_for("speaker_count")
    assert all("speaker count" in q for q in tpl.direct)
    ex = make_example("3", ["1", "2", "3"], "sentence", random.Random(0), task="speaker_count")
    assert "3" in ex["response"]


def test_every_builtin_task_has_several_wordings() -> None:
    for task, tpl in TEMPLATES.items():
        assert len(tpl.direct) >= 2 and len(tpl.choice) >= 2 and len(tpl.sentence) >= 2, task
        assert all("{label}" in answer for _, answer in tpl.sentence), task


def test_packaged_wordings_table_is_loaded_and_validated() -> None:
    assert {"emotion", "gender", "age", "language_id", "intent", "sound", "scene"} <= set(TEMPLATES)
    assert TEMPLATES["emotion"].sentence[0] == ("How would you describe the speaker's mood?",
                                                "The speaker sounds {label}.")
    assert templates_for("gender") is TEMPLATES["gender"]
    good = {"direct": ["q?"], "choice": ["c?"], "sentence": [{"question": "s?", "answer": "It is {label}."}]}
    assert parse_templates({"t": good}, "x.yaml")["t"].sentence == (("s?", "It is {label}."),)
    bad_tables = [
        ([], "expected a mapping"),
        ({"t": {k: v for k, v in good.items() if k != "choice"}}, "task 't': expected exactly the keys"),
        ({"t": {**good, "direct": []}}, "t.direct: expected a non-empty list"),
        ({"t": {**good, "choice": ["ok", 3]}}, "t.choice: expected a non-empty list"),
        ({"t": {**good, "sentence": [{"question": "s?"}]}}, "t.sentence[0]: expected exactly the keys"),
        ({"t": {**good, "sentence": [{"question": "s?", "answer": "no label"}]}}, "t.sentence[0].answer"),
        ({"t": {**good, "sentence": [{"question": "s?", "answer": "{label} {other}"}]}}, "t.sentence[0].answer"),
        ({"t": {**good, "sentence": [{"question": "s?", "answer": "{{label}}"}]}}, "t.sentence[0].answer"),
    ]
    for data, message in bad_tables:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_templates(data, "x.yaml")


# --------------------------------------------------------------------------- command


def test_build_sft_all_formats(tmp_path: Path) -> None:
    m = make_manifest(tmp_path)
    out = tmp_path / "out" / "sft.jsonl"
    report = build_sft(m, out, task="emotion", labels=LABELS, seed=0, show_progress=False)
    recs = rows(out)
    assert report.written == len(recs) == 40
    assert {r["format"] for r in recs} == {"direct", "choice", "sentence"}
    assert sum(report.formats.values()) == 40
    for r in recs:
        assert r["task"] == "emotion" and r["label"] in LABELS and r["cot"] is False
        assert r["text"].startswith("sentence number")  # original fields are kept
        if r["format"] == "direct":
            assert r["response"] == r["label"].capitalize() + "."
        elif r["format"] == "choice":
            letter = "ABCD"[r["options"].index(r["label"])]
            assert r["response"] == f"The one answer you should pick is {letter}. {r['label']}."
        else:
            assert r["label"] in r["response"]
    # canonical spelling from --labels even though the data says "Neutral" / "SURPRISE"
    assert {r["label"] for r in recs} == set(LABELS)
    assert len({r["instruction"] for r in recs if r["format"] == "direct"}) >= 2  # several wordings used
    assert resolve_audio(out, recs[0]) == tmp_path / "out" / ".." / "wav" / "u0.wav"


def test_build_sft_drops_unknown_and_missing_labels(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, n=8)
    with open(m, "a") as fh:
        fh.write(json.dumps({"id": "x", "audio": "wav/x.wav"}) + "\n")
        fh.write(json.dumps({"id": "y", "audio": "wav/y.wav", "label": "anger"}) + "\n")
    report = build_sft(m, tmp_path / "s.jsonl", task="emotion", labels=["neutral", "fear"], formats=["direct"],
                       show_progress=False)
    assert report.written == 4
    assert report.dropped == {"label not in --labels": 5, "no 'label' field": 1}
    assert {r["format"] for r in rows(tmp_path / "s.jsonl")} == {"direct"}


def test_build_sft_labels_detected_and_cot(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, n=4)
    with open(m, "a") as fh:
        fh.write(json.dumps({"id": "nt", "audio": "wav/nt.wav", "label": "fear"}) + "\n")
    report = build_sft(m, tmp_path / "s.jsonl", task="emotion", formats=["choice"], cot=True, shuffle_options=False,
                       show_progress=False)
    recs = rows(tmp_path / "s.jsonl")
    assert recs[0]["options"] == ["fear", "happiness", "Neutral", "SURPRISE"]  # found in data, sorted
    assert report.dropped == {"no 'text' transcript for --cot": 1}
    for r in recs:
        assert re.fullmatch(r"Transcription: sentence number \d+\nAnswer: The one answer you should pick is [A-D]\. \w+\.", r["response"])
        assert r["cot"] is True and COT_REQUEST in r["instruction"]


def test_build_sft_seed_is_deterministic(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, n=12)
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    build_sft(m, a, task="emotion", labels=LABELS, seed=7, show_progress=False)
    build_sft(m, b, task="emotion", labels=LABELS, seed=7, show_progress=False)
    build_sft(m, c, task="emotion", labels=LABELS, seed=8, show_progress=False)
    assert a.read_text() == b.read_text() != c.read_text()


def test_build_sft_errors(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, n=2)
    with pytest.raises(UsageError, match="unknown format 'essay'"):
        build_sft(m, tmp_path / "s.jsonl", task="emotion", formats=["direct", "essay"], show_progress=False)
    with pytest.raises(UsageError, match="duplicate label"):
        build_sft(m, tmp_path / "s.jsonl", task="emotion", labels=["fear", "Fear"], show_progress=False)
    with pytest.raises(InputError, match="no row has a 'emo' field"):
        build_sft(m, tmp_path / "s.jsonl", task="emotion", label_field="emo", show_progress=False)
    with pytest.raises(UsageError, match="up to 26 labels"):
        build_sft(m, tmp_path / "s.jsonl", task="emotion", labels=[f"l{i}" for i in range(27)], show_progress=False)
    assert not (tmp_path / "s.jsonl").exists()


def test_cli_sft(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, n=10, field="emo")
    out = tmp_path / "sft.jsonl"
    result = CliRunner().invoke(app, [
        "sft", str(m), "--task", "emotion", "--label-field", "emo", "--labels", "neutral,fear,surprise,happiness",
        "--out", str(out), "--formats", "choice,sentence", "--cot", "--no-shuffle-options", "--seed", "3",
    ])
    assert result.exit_code == 0, result.output
    recs = rows(out)
    assert len(recs) == 10 and {r["format"] for r in recs} <= {"choice", "sentence"}
    for r in recs:
        assert r["response"].startswith(f"Transcription: {r['text']}\nAnswer: ")
        assert r["options"] == LABELS
    choice = [r for r in recs if r["format"] == "choice"]
    assert choice and all(r["response"].endswith(f"{'ABCD'[LABELS.index(r['label'])]}. {r['label']}.") for r in choice)
    assert "wrote 10 record(s)" in result.stdout and "formats: choice" in result.stdout

    bad = CliRunner().invoke(app, ["sft", str(m), "--task", "emotion", "--out", str(out), "--labels", " , "])
    assert isinstance(bad.exception, UsageError)


def test_choice_wording_is_the_benchmark_presets_and_the_scorer_reads_it() -> None:
    """Training asks and answers multiple choice exactly as the presets ask (the paper's Table 4),
    and the scorer maps the trained answer to its option."""
    from swv.eval.metrics import match_answer
    from swv.eval.presets import get_preset

    preset = get_preset("vocalsound")
    options = list(preset.config.options)
    ex = make_example(options[3], options, "choice", random.Random(0), task="vocal_sound", shuffle_options=False)
    # the same option listing after the question, in the same words
    assert ex["instruction"].split(" Pick one answer from:")[1] == preset.prompt().split(" Pick one answer from:")[1]
    assert match_answer(ex["response"], options, letters=True) == (options[3], "matched")
