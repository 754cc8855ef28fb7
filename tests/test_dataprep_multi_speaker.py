"""Tests for `swv data splice`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from swv.cli.data import app
from swv.core.errors import InputError, UsageError
from swv.data.manifest import resolve_audio
from swv.dataprep.multi_speaker import speaker_prefixes, splice_manifest

SR = 16000


def tone(path: Path, seconds: float, sr: int = SR, freq: float = 220.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_manifest(tmp_path: Path, specs: list[tuple[str, str | None, float, str]], sr: int = SR) -> Path:
    """specs: (id, speaker or None, seconds, text)."""
    lines = []
    for rid, spk, seconds, text in specs:
        tone(tmp_path / "audio" / f"{rid}.wav", seconds, sr)
        rec = {"id": rid, "audio": f"audio/{rid}.wav", "text": text, "task": "asr"}
        if spk is not None:
            rec["speaker"] = spk
        lines.append(json.dumps(rec))
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(lines) + "\n")
    return m


SPECS = [
    ("a1", "A", 1.0, "alpha one"), ("a2", "A", 1.5, "alpha two"), ("a3", "A", 2.0, "alpha three"),
    ("b1", "B", 1.25, "bravo one"), ("b2", "B", 0.75, "bravo two"),
    ("c1", "C", 0.5, "charlie one"),
]


def test_speaker_prefixes() -> None:
    assert speaker_prefixes(2) == ["The first speaker says", "The second speaker says"]
    assert speaker_prefixes(3, template="Speaker {n}:") == ["Speaker 1:", "Speaker 2:", "Speaker 3:"]
    assert speaker_prefixes(2, phrases=["A said", "B said"]) == ["A said", "B said"]
    with pytest.raises(UsageError, match="one phrase per speaker"):
        speaker_prefixes(3, phrases=["x", "y"])
    with pytest.raises(UsageError, match="--template"):
        speaker_prefixes(2, template="The {nope} speaker")


def test_splice_lengths_transcripts_and_distinct_speakers(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, SPECS)
    out = tmp_path / "out" / "multi.jsonl"
    report = splice_manifest(m, out, tmp_path / "spliced", gap=0.25, show_progress=False)
    recs = rows(out)
    by_id = {rid: (spk, sec, text) for rid, spk, sec, text in SPECS}
    # 6 utterances from speakers of sizes 3/2/1: every one can be paired.
    assert report.written == len(recs) == 3 and report.utterances_used == 6
    assert sorted(s for r in recs for s in r["sources"]) == sorted(by_id)
    for rec in recs:
        src = rec["sources"]
        assert len(src) == 2 and by_id[src[0]][0] != by_id[src[1]][0]
        assert rec["text"] == (f"The first speaker says {by_id[src[0]][2]} "
                               f"The second speaker says {by_id[src[1]][2]}")
        wav, sr = sf.read(resolve_audio(out, rec))
        expected = sum(int(round(by_id[s][1] * SR)) for s in src) + int(0.25 * SR)
        assert sr == SR and len(wav) == expected
        assert rec["duration"] == pytest.approx(expected / SR)
        assert rec["num_speakers"] == 2 and rec["task"] == "asr"
        # the gap is silent and sits right after the first part
        first = int(round(by_id[src[0]][1] * SR))
        assert np.abs(wav[first:first + int(0.25 * SR)]).max() == 0.0
    assert "3 speaker(s) found" in report.format()


def test_splice_three_speakers_resample_and_custom_phrases(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, SPECS, sr=8000)  # sources at 8 kHz, output at 16 kHz
    out = tmp_path / "multi.jsonl"
    report = splice_manifest(m, out, tmp_path / "wav", speakers=3, phrases=["One:", "Two:", "Three:"],
                             sample_rate=16000, task="multi_asr", show_progress=False)
    recs = rows(out)
    assert len(recs) == 1 and report.utterances_used == 3
    rec = recs[0]
    assert rec["text"].startswith("One: ") and " Two: " in rec["text"] and " Three: " in rec["text"]
    assert rec["task"] == "multi_asr"
    secs = {rid: sec for rid, _, sec, _ in SPECS}
    wav, sr = sf.read(resolve_audio(out, rec))
    assert sr == 16000 and len(wav) == sum(int(round(secs[s] * 16000)) for s in rec["sources"])
    # After the one A+B+C sample only speakers A and B are left: the rest cannot form 3-speaker samples.
    assert report.dropped == {"no other speaker left to pair with": 3}


def test_without_speaker_field_files_count_as_speakers(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [(f"u{i}", None, 0.5, f"text {i}") for i in range(4)])
    report = splice_manifest(m, tmp_path / "o.jsonl", tmp_path / "wav", show_progress=False)
    assert report.speakers_found == 4 and report.written == 2


def test_max_duration_num_samples_and_seed(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, SPECS)
    # With a 2 s cap, a3 (2 s) has no partner and the 1.5 s a2 only fits with the 0.5 s c1.
    report = splice_manifest(m, tmp_path / "o.jsonl", tmp_path / "wav", max_duration=2.0, show_progress=False)
    assert all(r["duration"] <= 2.0 for r in rows(tmp_path / "o.jsonl"))
    assert report.dropped["no partner fits --max-duration"] >= 1

    report = splice_manifest(m, tmp_path / "o2.jsonl", tmp_path / "wav2", num_samples=1, show_progress=False)
    assert report.written == 1 and "left unused" in report.format()

    a = splice_manifest(m, tmp_path / "s1.jsonl", tmp_path / "w1", seed=1, show_progress=False)
    b = splice_manifest(m, tmp_path / "s1b.jsonl", tmp_path / "w1b", seed=1, show_progress=False)
    assert a.written == b.written
    assert [r["sources"] for r in rows(tmp_path / "s1.jsonl")] == [r["sources"] for r in rows(tmp_path / "s1b.jsonl")]
    seeds = {json.dumps([r["sources"] for r in rows(_splice(m, tmp_path, s))]) for s in range(6)}
    assert len(seeds) > 1


def _splice(m: Path, tmp_path: Path, seed: int) -> Path:
    out = tmp_path / f"seed{seed}.jsonl"
    splice_manifest(m, out, tmp_path / f"wseed{seed}", seed=seed, show_progress=False)
    return out


def test_bad_rows_reported_and_errors(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, SPECS[:2] + SPECS[3:4])
    with open(m, "a") as fh:
        fh.write(json.dumps({"id": "notext", "audio": "audio/a1.wav", "speaker": "Z"}) + "\n")
        fh.write(json.dumps({"id": "broken", "audio": "audio/missing.wav", "text": "x", "speaker": "Y"}) + "\n")
    report = splice_manifest(m, tmp_path / "o.jsonl", tmp_path / "wav", show_progress=False)
    assert report.dropped["no transcript"] == 1 and report.dropped["unreadable audio"] == 1
    one = make_manifest(tmp_path / "one", [("x", "A", 1.0, "x"), ("y", "A", 1.0, "y")])
    with pytest.raises(InputError, match="at least 2 different speakers, found 1"):
        splice_manifest(one, tmp_path / "o.jsonl", tmp_path / "wav", show_progress=False)
    with pytest.raises(UsageError, match="--speakers"):
        splice_manifest(m, tmp_path / "o.jsonl", tmp_path / "wav", speakers=1, show_progress=False)
    with pytest.raises(UsageError, match="--gap"):
        splice_manifest(m, tmp_path / "o.jsonl", tmp_path / "wav", gap=-1, show_progress=False)


def test_cli_splice(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, SPECS)
    out = tmp_path / "multi.jsonl"
    result = CliRunner().invoke(app, [
        "splice", str(m), "--out", str(out), "--audio-dir", str(tmp_path / "wav"), "--speakers", "2",
        "--template", "Person {n} says", "--gap", "0.5", "--max-duration", "0", "--num-samples", "2",
        "--sample-rate", "8000", "--task", "asr", "--seed", "3",
    ])
    assert result.exit_code == 0, result.output
    recs = rows(out)
    assert len(recs) == 2 and "wrote 2 record(s)" in result.stdout
    secs = {rid: sec for rid, _, sec, _ in SPECS}
    for rec in recs:
        assert rec["text"].startswith("Person 1 says ") and " Person 2 says " in rec["text"]
        wav, sr = sf.read(resolve_audio(out, rec))
        assert sr == 8000 and len(wav) == sum(int(round(secs[s] * 8000)) for s in rec["sources"]) + 4000

    result = CliRunner().invoke(app, [
        "splice", str(m), "--out", str(tmp_path / "p.jsonl"), "--audio-dir", str(tmp_path / "wav2"),
        "--phrase", "First:", "--phrase", "Second:",
    ])
    assert result.exit_code == 0, result.output
    assert all(r["text"].startswith("First: ") and " Second: " in r["text"] for r in rows(tmp_path / "p.jsonl"))
