"""Tests for `swv data sound-insert`."""

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
from swv.dataprep.sound_insert import (
    find_pause,
    label_to_tag,
    sound_insert,
    split_text,
    standardize_sound,
    tagged_text,
)

SR = 16000


def write(path: Path, wav: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.astype(np.float32), sr, subtype="FLOAT")
    return path


def tone_wav(seconds: float, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- building blocks


def test_label_to_tag() -> None:
    assert label_to_tag("throat_clearing") == "<throat_clearing>"
    assert label_to_tag(" Throat clearing ") == "<throat_clearing>"
    assert label_to_tag("dog-bark") == "<dog_bark>"
    for bad in ("", "a<b>", "cough!"):
        with pytest.raises(ValueError):
            label_to_tag(bad)


def test_standardize_long_clip_keeps_the_loudest_window() -> None:
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(10 * SR) * 0.001).astype(np.float32)
    wav[6 * SR:7 * SR] += tone_wav(1.0, amp=0.5)  # a loud event between 6 s and 7 s
    out = standardize_sound(wav, SR, seconds=3.0, target_dbfs=-20.0)
    assert len(out) == 3 * SR
    assert rms(out) == pytest.approx(10 ** (-20 / 20), rel=1e-3)
    # the whole 1 s event is inside the chosen window
    loud = np.flatnonzero(np.abs(out) > 0.5 * np.abs(out).max())
    assert loud[-1] - loud[0] > 0.9 * SR


def test_standardize_short_clip_is_padded_symmetrically_and_normalised() -> None:
    out = standardize_sound(tone_wav(1.0, amp=0.01), SR, seconds=3.0, target_dbfs=-25.0)
    assert len(out) == 3 * SR
    assert not out[:SR].any() and not out[2 * SR:].any()  # 1 s of silence on each side
    assert rms(out[SR:2 * SR]) == pytest.approx(10 ** (-25 / 20), rel=1e-3)
    odd = standardize_sound(tone_wav(0.5), SR, seconds=1.0)
    assert len(odd) == SR and not odd[:SR // 4 - 1].any() and not odd[-(SR // 4 - 1):].any()


def test_standardize_limits_peak_and_rejects_silence() -> None:
    spiky = np.zeros(3 * SR, dtype=np.float32)
    spiky[::SR] = 1.0
    out = standardize_sound(spiky, SR, target_dbfs=-3.0)
    assert np.abs(out).max() <= 0.999 + 1e-6
    with pytest.raises(ValueError, match="silent"):
        standardize_sound(np.zeros(SR, dtype=np.float32), SR)


def test_find_pause_uses_lowest_energy_frame_in_middle_third() -> None:
    wav = tone_wav(3.0)
    wav[int(1.3 * SR):int(1.4 * SR)] = 0.0  # pause inside the middle third
    wav[int(0.2 * SR):int(0.5 * SR)] = 0.0  # longer pause outside it: ignored
    cut = find_pause(wav, SR)
    assert 1.3 * SR <= cut <= 1.4 * SR
    assert find_pause(np.ones(10, dtype=np.float32), SR) == 5  # too short for frames: the middle


def test_split_text_and_tagged_text() -> None:
    assert split_text("aaaa bbbb cccc dddd", 0.5) == ("aaaa bbbb", "cccc dddd")
    assert split_text("aaaa bbbb cccc dddd", 0.2) == ("aaaa", "bbbb cccc dddd")
    assert split_text("word", 0.3) == ("", "word")
    assert tagged_text("a b", "<cough>", "c") == "a b <cough> c"
    assert tagged_text("", "<cough>", "c") == "<cough> c"


# --------------------------------------------------------------------------- command


def make_inputs(tmp_path: Path, sr: int = SR) -> tuple[Path, Path, dict[str, float]]:
    speech = [("s1", 1.0, "hello there"), ("s2", 1.5, "general kenobi"), ("s3", 2.0, "you are a bold one")]
    lines = []
    for rid, sec, text in speech:
        write(tmp_path / "speech" / f"{rid}.wav", tone_wav(sec, sr), sr)
        lines.append(json.dumps({"id": rid, "audio": f"speech/{rid}.wav", "text": text, "task": "asr"}))
    (tmp_path / "speech.jsonl").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(1)
    write(tmp_path / "snd" / "cough.wav", rng.standard_normal(int(0.8 * sr)) * 0.2, sr)
    write(tmp_path / "snd" / "clear.wav", rng.standard_normal(5 * sr) * 0.05, sr)
    (tmp_path / "sounds.jsonl").write_text(
        json.dumps({"id": "k1", "audio": "snd/cough.wav", "label": "cough"}) + "\n"
        + json.dumps({"id": "k2", "audio": "snd/clear.wav", "label": "Throat clearing"}) + "\n"
    )
    return tmp_path / "speech.jsonl", tmp_path / "sounds.jsonl", {rid: sec for rid, sec, _ in speech}


def test_concat_mode_lengths_and_transcripts(tmp_path: Path) -> None:
    speech, sounds, secs = make_inputs(tmp_path)
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in speech.read_text().splitlines()}
    out = tmp_path / "out" / "mixed.jsonl"
    report = sound_insert(speech, sounds, out, tmp_path / "mix", tags_out=tmp_path / "tags.txt", show_progress=False)
    recs = rows(out)
    assert len(recs) == 1 and report.written == 1
    assert report.dropped == {"odd speech row left without a partner": 1}
    rec = recs[0]
    a, b, snd = rec["sources"]
    assert a != b and snd in {"k1", "k2"}
    tag = {"k1": "<cough>", "k2": "<throat_clearing>"}[snd]
    assert rec["text"] == f"{texts[a]} {tag} {texts[b]}"
    assert rec["label"] == tag[1:-1] and rec["tags"] == [tag]
    wav, sr = sf.read(resolve_audio(out, rec))
    assert sr == SR and len(wav) == round((secs[a] + 3.0 + secs[b]) * SR)
    assert rec["duration"] == pytest.approx(secs[a] + 3.0 + secs[b])
    # The sound segment is the standardised sound: RMS at -25 dBFS (content part).
    seg = wav[round(secs[a] * SR):round((secs[a] + 3.0) * SR)]
    assert rms(seg[np.abs(seg) > 0]) == pytest.approx(10 ** (-25 / 20), rel=0.05)
    assert report.tags == {tag}
    assert (tmp_path / "tags.txt").read_text() == f"{tag}\n"
    assert "tags (add as special tokens)" in report.format()


def test_split_mode_inserts_sound_at_the_pause(tmp_path: Path) -> None:
    speech, sounds, _ = make_inputs(tmp_path)
    pause = tone_wav(2.0)
    pause[int(0.95 * SR):int(1.05 * SR)] = 0.0
    write(tmp_path / "speech" / "s3.wav", pause)
    out = tmp_path / "mixed.jsonl"
    report = sound_insert(speech, sounds, out, tmp_path / "mix", mode="split", seed=2, show_progress=False)
    recs = {r["sources"][0]: r for r in rows(out)}
    assert report.written == 3 and set(recs) == {"s1", "s2", "s3"}
    assert report.tags == {"<cough>", "<throat_clearing>"}  # round-robin uses both sounds
    r3 = recs["s3"]
    tag = f"<{r3['label']}>"
    left, right = (part.strip() for part in r3["text"].split(tag))
    assert r3["text"] == f"{left} {tag} {right}" and left and right
    assert f"{left} {right}" == "you are a bold one"
    wav, _ = sf.read(resolve_audio(out, r3), dtype="float32")
    assert len(wav) == 5 * SR  # 2 s of speech + 3 s of sound
    cut = find_pause(pause, SR)
    assert 0.95 * SR <= cut <= 1.05 * SR  # inside the pause
    np.testing.assert_allclose(wav[:cut], pause[:cut], atol=1e-4)  # written as 16-bit PCM
    np.testing.assert_allclose(wav[cut + 3 * SR:], pause[cut:], atol=1e-4)


def test_bad_sounds_and_speech_are_reported(tmp_path: Path) -> None:
    speech, sounds, _ = make_inputs(tmp_path)
    with open(sounds, "a") as fh:
        fh.write(json.dumps({"id": "k3", "audio": "snd/missing.wav", "label": "bark"}) + "\n")
        fh.write(json.dumps({"id": "k4", "audio": "snd/cough.wav"}) + "\n")
        fh.write(json.dumps({"id": "k5", "audio": "snd/cough.wav", "label": "bad!label"}) + "\n")
    write(tmp_path / "snd" / "silent.wav", np.zeros(SR))
    with open(sounds, "a") as fh:
        fh.write(json.dumps({"id": "k6", "audio": "snd/silent.wav", "label": "nothing"}) + "\n")
    with open(speech, "a") as fh:
        fh.write(json.dumps({"id": "s4", "audio": "speech/s1.wav"}) + "\n")
    report = sound_insert(speech, sounds, tmp_path / "o.jsonl", tmp_path / "mix", mode="split", seed=0,
                          show_progress=False)
    assert report.written == 3
    assert report.dropped["sound without label"] == 1
    assert report.dropped["invalid sound label"] == 1
    assert report.dropped["speech without transcript"] == 1
    assert report.tags <= {"<cough>", "<throat_clearing>"}

    only_bad = tmp_path / "bad_sounds.jsonl"
    only_bad.write_text(json.dumps({"audio": "snd/missing.wav", "label": "bark"}) + "\n")
    with pytest.raises(InputError, match="no usable sound left"):
        sound_insert(speech, only_bad, tmp_path / "o2.jsonl", tmp_path / "mix2", show_progress=False)
    assert not (tmp_path / "o2.jsonl").exists()  # the failed run left no manifest
    with pytest.raises(UsageError, match="--mode"):
        sound_insert(speech, sounds, tmp_path / "o3.jsonl", tmp_path / "mix", mode="middle", show_progress=False)


def test_missing_and_silent_sounds_leave_the_rotation(tmp_path: Path) -> None:
    speech, _, _ = make_inputs(tmp_path)
    write(tmp_path / "snd" / "silent.wav", np.zeros(SR))
    write(tmp_path / "snd" / "ok.wav", tone_wav(1.0))
    sounds = tmp_path / "s.jsonl"
    sounds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "gone", "audio": "snd/missing.wav", "label": "bark"},
        {"id": "mute", "audio": "snd/silent.wav", "label": "nothing"},
        {"id": "ok", "audio": "snd/ok.wav", "label": "beep"},
    ]))
    report = sound_insert(speech, sounds, tmp_path / "o.jsonl", tmp_path / "mix", mode="split", show_progress=False)
    assert report.written == 3 and report.tags == {"<beep>"}
    assert report.dropped == {"unreadable sound": 1, "unusable sound": 1}  # each reported once


def test_cli_sound_insert(tmp_path: Path) -> None:
    speech, sounds, secs = make_inputs(tmp_path)
    out = tmp_path / "mixed.jsonl"
    args = ["sound-insert", "--speech", str(speech), "--sounds", str(sounds), "--out", str(out),
            "--audio-dir", str(tmp_path / "mix"), "--mode", "split", "--sound-seconds", "2",
            "--sound-dbfs", "-30", "--sample-rate", "8000", "--task", "asr_sound", "--seed", "5",
            "--tags-out", str(tmp_path / "tags.txt")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    recs = rows(out)
    assert len(recs) == 3 and all(r["task"] == "asr_sound" for r in recs)
    for rec in recs:
        wav, sr = sf.read(resolve_audio(out, rec))
        assert sr == 8000 and len(wav) == round((secs[rec["sources"][0]] + 2.0) * 8000)
        assert f"<{rec['label']}>" in rec["text"]
    tags = (tmp_path / "tags.txt").read_text().split()
    assert tags == sorted({f"<{r['label']}>" for r in recs})
    assert "tags (add as special tokens)" in result.stdout
    first = [r["sources"] for r in recs]
    again = CliRunner().invoke(app, [*args[:-2]])
    assert again.exit_code == 0 and [r["sources"] for r in rows(out)] == first  # same seed, same output
