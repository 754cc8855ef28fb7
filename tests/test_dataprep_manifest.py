"""Tests for the shared manifest reader and `swv data manifest`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from swv.cli.data import app
from swv.core.errors import InputError
from swv.data.manifest import (
    audio_ref,
    read_manifest,
    rebase_record,
    resolve_audio,
    write_manifest,
)
from swv.dataprep.manifest import build_manifest, read_transcript_table

SR = 16000


def tone(path: Path, seconds: float, sr: int = SR, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format=fmt)
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- reader


def test_read_manifest_yields_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "text": "x"}\n\n{"audio": "b.wav"}\n')
    assert [(n, r["audio"]) for n, r in read_manifest(m)] == [(1, "a.wav"), (3, "b.wav")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"audio": "a.wav"}\n{"audio": \n', "m.jsonl:2: invalid JSON"),
        ('{"audio": "a.wav"}\n[1, 2]\n', "m.jsonl:2: expected a JSON object, got list"),
        ('{"audio": "a.wav"}\n{"audio": "b.wav"}\n{"text": "hi"}\n', "m.jsonl:3: missing field 'audio'"),
        ('{"audio": ""}\n', "m.jsonl:1: field 'audio' must be a non-empty path string"),
    ],
)
def test_read_manifest_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(content)
    with pytest.raises(InputError) as err:
        list(read_manifest(m))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_read_manifest_non_utf8_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"audio": "a.wav"}\n{"audio": "\xff.wav"}\n')
    with pytest.raises(InputError, match="m.jsonl:2: not UTF-8 text"):
        list(read_manifest(m))


def test_read_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="manifest not found"):
        list(read_manifest(tmp_path / "nope.jsonl"))


def test_read_manifest_required_fields_are_configurable(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"text": "only text"}\n')
    assert [r for _, r in read_manifest(m, required=())] == [{"text": "only text"}]
    n = tmp_path / "n.jsonl"
    n.write_text('{"audio": "a.wav"}\n')
    with pytest.raises(InputError, match="n.jsonl:1: missing field 'text'"):
        list(read_manifest(n, required=("audio", "text")))


def test_resolve_audio_relative_to_manifest_dir_or_absolute(tmp_path: Path) -> None:
    m = tmp_path / "sub" / "m.jsonl"
    assert resolve_audio(m, {"audio": "x/a.wav"}) == tmp_path / "sub" / "x" / "a.wav"
    assert resolve_audio(m, {"audio": "/abs/a.wav"}) == Path("/abs/a.wav")
    with pytest.raises(InputError):
        resolve_audio(m, {"text": "no audio"})


def test_audio_ref_and_rebase(tmp_path: Path) -> None:
    assert audio_ref(tmp_path / "audio" / "a.wav", tmp_path / "out" / "m.jsonl") == "../audio/a.wav"
    rec = rebase_record({"audio": "audio/a.wav", "text": "t"}, tmp_path / "m.jsonl", tmp_path / "o" / "k.jsonl")
    assert rec == {"audio": "../audio/a.wav", "text": "t"}
    assert rebase_record({"audio": "/abs/a.wav"}, tmp_path / "m.jsonl", tmp_path / "o" / "k.jsonl") == {"audio": "/abs/a.wav"}


def test_write_manifest_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    out.write_text('{"audio": "old.wav"}\n')

    def gen():
        yield {"audio": "a.wav"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_manifest(out, gen())
    assert out.read_text() == '{"audio": "old.wav"}\n'  # previous version untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary left behind

    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(RuntimeError):
        write_manifest(fresh, gen())
    assert not fresh.exists()


# --------------------------------------------------------------------------- build


def test_build_manifest_from_sidecars(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    tone(d / "spk1" / "a.wav", 3.5)
    (d / "spk1" / "a.txt").write_text("  Hello\n world  \n")
    tone(d / "spk2" / "b.flac", 2.0)
    (d / "spk2" / "b.lab").write_text("from a lab file")
    tone(d / "spk2" / "c.wav", 1.0)  # no transcript
    tone(d / "spk2" / "d.wav", 1.0)
    (d / "spk2" / "d.txt").write_text("   ")  # empty transcript
    (d / "notes.txt").write_text("not audio, no audio twin")
    out = tmp_path / "out" / "m.jsonl"

    report = build_manifest(d, out, task="asr", language="en", show_progress=False)

    recs = rows(out)
    assert report.written == 2
    assert [r["id"] for r in recs] == ["spk1/a", "spk2/b"]
    assert recs[0] == {"id": "spk1/a", "audio": "../corpus/spk1/a.wav", "text": "Hello world", "task": "asr",
                       "duration": 3.5, "language": "en"}
    assert recs[1]["text"] == "from a lab file" and recs[1]["duration"] == 2.0
    assert resolve_audio(out, recs[1]).resolve() == (d / "spk2" / "b.flac").resolve()
    assert report.dropped == {"no transcript": 1, "empty transcript": 1}
    assert report.examples["no transcript"] == ["spk2/c.wav"]
    assert "no transcript: 1" in report.format()


def test_build_manifest_txt_preferred_over_lab_and_unreadable_reported(tmp_path: Path) -> None:
    d = tmp_path / "c"
    tone(d / "a.wav", 1.0)
    (d / "a.txt").write_text("txt wins")
    (d / "a.lab").write_text("lab loses")
    (d / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00not a wave")
    (d / "broken.txt").write_text("text of a broken file")
    tone(d / "latin1.wav", 1.0)
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = build_manifest(d, tmp_path / "m.jsonl", show_progress=False)
    assert [r["text"] for r in rows(tmp_path / "m.jsonl")] == ["txt wins"]
    assert report.dropped == {"unreadable audio": 1, "unreadable transcript": 1}
    assert "latin1.txt: transcript is not UTF-8 text" in report.examples["unreadable transcript"][0]
    assert "broken.wav" in report.examples["unreadable audio"][0]


def test_build_manifest_ids_disambiguated_when_stems_collide(tmp_path: Path) -> None:
    d = tmp_path / "c"
    for name in ("a.wav", "a.flac"):
        tone(d / name, 1.0)
    (d / "a.txt").write_text("same stem")
    build_manifest(d, tmp_path / "m.jsonl", show_progress=False)
    assert sorted(r["id"] for r in rows(tmp_path / "m.jsonl")) == ["a.flac", "a.wav"]


def test_build_manifest_from_tsv_table(tmp_path: Path) -> None:
    d = tmp_path / "c"
    tone(d / "x" / "one.wav", 1.25)
    tone(d / "two.wav", 2.0)
    tone(d / "three.wav", 2.0)  # not in the table
    table = tmp_path / "t.tsv"
    table.write_text('x/one.wav\tsaid "one", quoted\ntwo\tsecond text\nmissing.wav\tno such file\n')
    with pytest.raises(InputError, match=r"1 of 3 table row\(s\) name an audio file that does not exist "
                                         r"\(first: t.tsv:3: missing.wav\)"):
        build_manifest(d, tmp_path / "m.jsonl", transcripts=table, task="asr", show_progress=False)
    report = build_manifest(d, tmp_path / "m.jsonl", transcripts=table, task="asr", show_progress=False,
                            on_missing="skip")
    recs = rows(tmp_path / "m.jsonl")
    assert [(r["id"], r["text"], r["duration"]) for r in recs] == [
        ("two", "second text", 2.0),
        ("x/one", 'said "one", quoted', 1.25),
    ]
    assert report.dropped == {"no transcript": 1, "table row without audio file": 1}
    assert report.examples["table row without audio file"] == ["t.tsv:3: missing.wav"]


def test_build_manifest_from_csv_with_header(tmp_path: Path) -> None:
    d = tmp_path / "c"
    tone(d / "a.wav", 1.0)
    table = tmp_path / "t.csv"
    tone(d / "b.wav", 2.0)
    table.write_text(f'speaker,path,text\nbob,a.wav,"hello, world"\nann,{(d / "b.wav").absolute()},absolute\n')
    build_manifest(d, tmp_path / "m.jsonl", transcripts=table, task="emotion", show_progress=False)
    assert rows(tmp_path / "m.jsonl") == [
        {"id": "a", "audio": "c/a.wav", "text": "hello, world", "task": "emotion", "duration": 1.0},
        {"id": "b", "audio": "c/b.wav", "text": "absolute", "task": "emotion", "duration": 2.0},
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.csv", "a.wav,one,two\n", "t.csv:1: expected 2 columns (path,text), got 3 (quote texts that contain commas)"),
        ("t.tsv", "a.wav\tx\na.wav\ty\n", "t.tsv:2: duplicate path 'a.wav' (first on line 1)"),
        ("t.tsv", "a.wav\n", "t.tsv:1: expected 2 columns (path<TAB>text), got 1"),
    ],
)
def test_transcript_table_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError) as err:
        read_transcript_table(tmp_path / name)
    assert message in str(err.value)


def test_build_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="audio folder not found"):
        build_manifest(tmp_path / "nope", tmp_path / "m.jsonl", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no audio files found"):
        build_manifest(tmp_path / "empty", tmp_path / "m.jsonl", show_progress=False)
    tone(tmp_path / "c" / "a.wav", 1.0)
    with pytest.raises(InputError, match="none of the 1 audio file"):
        build_manifest(tmp_path / "c", tmp_path / "m.jsonl", show_progress=False)
    assert not (tmp_path / "m.jsonl").exists()


def test_cli_manifest(tmp_path: Path) -> None:
    d = tmp_path / "c"
    tone(d / "a.wav", 3.0)
    (d / "a.txt").write_text("hello there")
    tone(d / "b.ogg", 2.0, fmt="OGG")
    table = tmp_path / "t.tsv"
    table.write_text("a.wav\tfrom table\nb.ogg\tvorbis file\n")
    out = tmp_path / "m.jsonl"
    result = CliRunner().invoke(app, ["manifest", str(d), "--out", str(out), "--task", "asr",
                                      "--transcripts", str(table), "--language", "en"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 record(s)" in result.stdout
    recs = rows(out)
    assert [r["text"] for r in recs] == ["from table", "vorbis file"]
    assert all(r["language"] == "en" and r["task"] == "asr" for r in recs)
    assert recs[1]["duration"] == pytest.approx(2.0, abs=1e-3)

    bad = CliRunner().invoke(app, ["manifest", str(tmp_path / "missing"), "--out", str(out)])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
