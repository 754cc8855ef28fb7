"""`swv data manifest --format NAME`: each corpus's own layout, built with generated audio and the
corpus's real file names and column headers."""

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
from swv.dataprep.corpora import CorpusOptions, build_corpus_manifest

SR = 16000


def tone(path: Path, seconds: float, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * SR))) / SR
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR, format=fmt)
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["manifest", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def librispeech(librispeech_writer):
    """``build(root) -> root/LibriSpeech``: test-clean with two utterances (sine tones of 1 and 0.5
    seconds), test-other with one."""

    def build(root: Path) -> Path:
        corpus = librispeech_writer(root, (1.0, 0.5), tone)
        other = corpus / "test-other" / "1688" / "142285"
        tone(other / "1688-142285-0000.flac", 0.25)
        (other / "1688-142285.trans.txt").write_text("1688-142285-0000 THERE'S IRON THEY SAY IN ALL OUR BLOOD\n")
        return corpus

    return build


def test_librispeech_split_folder(tmp_path: Path, librispeech) -> None:
    root = librispeech(tmp_path)
    out = tmp_path / "ls.jsonl"
    text = run([str(root), "--format", "librispeech", "--split", "test-clean", "-o", str(out)])
    got = rows(out)
    assert "wrote 2 record(s)" in text
    assert [r["id"] for r in got] == ["1089-134686-0000", "1089-134686-0001"]
    first = got[0]
    assert first["text"] == "HE HOPED THERE WOULD BE STEW FOR DINNER"
    assert (first["task"], first["language"], first["speaker"]) == ("asr", "en", "1089")
    assert first["duration"] == pytest.approx(1.0)
    assert resolve_audio(out, first).name == "1089-134686-0000.flac" and resolve_audio(out, first).is_file()
    # without --split every subset is read
    run([str(root), "--format", "librispeech", "-o", str(out)])
    assert len(rows(out)) == 3


def test_librispeech_missing_flac_is_reported(tmp_path: Path, librispeech) -> None:
    root = librispeech(tmp_path)
    (root / "test-clean" / "1089" / "134686" / "1089-134686-0001.flac").unlink()
    with pytest.raises(InputError, match=r"1 of 2 librispeech entries name an audio file that does not exist "
                                         r"\(first: .*trans.txt:2: .*1089-134686-0001.flac\)"):
        build_corpus_manifest(root, tmp_path / "o.jsonl", "librispeech", CorpusOptions(split="test-clean"),
                              show_progress=False)
    assert not (tmp_path / "o.jsonl").exists()
    report = build_corpus_manifest(root, tmp_path / "o.jsonl", "librispeech", CorpusOptions(split="test-clean"),
                                   show_progress=False, on_missing="skip")
    assert report.written == 1 and report.dropped["audio file not found"] == 1


CV_HEADER = ("client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\t"
             "accents\tvariant\tlocale\tsegment\n")


def commonvoice(root: Path) -> Path:
    cv = root / "cv-corpus-15.0-2023-09-08" / "en"
    tone(cv / "clips" / "common_voice_en_27710027.mp3", 0.8, fmt="MP3")
    tone(cv / "clips" / "common_voice_en_699711.mp3", 0.6, fmt="MP3")
    (cv / "test.tsv").write_text(
        CV_HEADER
        + "4c5e9b\tcommon_voice_en_27710027.mp3\tab12\tJoe Keaton disapproved of films.\t\t2\t0\tthirties\t"
          "male_masculine\t\t\ten\t\n"
        + "9d1f0a\tcommon_voice_en_699711.mp3\tcd34\t\"Did you \"say\" that?\"\t\t2\t1\t\t\t\t\ten\t\n")
    (cv / "train.tsv").write_text(CV_HEADER)
    return cv


def test_commonvoice_tsv_and_clips(tmp_path: Path) -> None:
    cv = commonvoice(tmp_path)
    out = tmp_path / "cv.jsonl"
    run([str(cv), "--format", "commonvoice", "--split", "test", "-o", str(out)])
    got = rows(out)
    assert [r["id"] for r in got] == ["common_voice_en_27710027", "common_voice_en_699711"]
    assert got[0]["text"] == "Joe Keaton disapproved of films."
    assert got[1]["text"] == '"Did you "say" that?"'  # CommonVoice tables are not quoted
    assert (got[0]["language"], got[0]["speaker"], got[0]["age"], got[0]["gender"]) == (
        "en", "4c5e9b", "thirties", "male_masculine")
    assert "age" not in got[1]
    assert got[0]["duration"] == pytest.approx(0.8, abs=0.06)  # MP3 frames pad the end a little


def test_covost2_translation_table(tmp_path: Path) -> None:
    cv = commonvoice(tmp_path)
    table = tmp_path / "covost_v2.en_zh-CN.tsv"
    table.write_text(
        "path\tsentence\ttranslation\tclient_id\tsplit\n"
        "common_voice_en_27710027.mp3\tJoe Keaton disapproved of films.\t乔·基顿不赞成电影。\t4c5e9b\ttest\n"
        "common_voice_en_699711.mp3\tDid you say that?\t你这么说了吗？\t9d1f0a\ttrain\n")
    out = tmp_path / "st.jsonl"
    run([str(table), "--format", "covost2", "--clips", str(cv / "clips"), "-o", str(out)])
    (row,) = rows(out)
    assert row["target_text"] == "乔·基顿不赞成电影。" and row["text"] == "Joe Keaton disapproved of films."
    assert (row["task"], row["language"], row["target_language"]) == ("st", "en", "zh-CN")
    run([str(table), "--format", "covost2", "--clips", str(cv / "clips"), "--split", "train", "-o", str(out)])
    assert [r["id"] for r in rows(out)] == ["common_voice_en_699711"]
    with pytest.raises(UsageError, match="--clips"):
        build_corpus_manifest(table, out, "covost2", CorpusOptions(), show_progress=False)


def test_fleurs_language_folder(tmp_path: Path) -> None:
    lang = tmp_path / "fleurs" / "data" / "en_us"
    tone(lang / "audio" / "test" / "10004088536354799741.wav", 0.4)
    tone(lang / "audio" / "test" / "1001233333999.wav", 0.3)
    (lang / "test.tsv").write_text(
        "1906\t10004088536354799741.wav\tThe Amazon River is the second longest.\tthe amazon river is the second "
        "longest\tt h e | a m a z o n |\t6400\tFEMALE\n"
        "1906\t1001233333999.wav\tThe Amazon River is the second longest.\tthe amazon river is the second "
        "longest\tt h e |\t4800\tMALE\n")
    out = tmp_path / "fl.jsonl"
    run([str(lang), "--format", "fleurs", "--split", "test", "-o", str(out)])
    got = rows(out)
    assert [r["id"] for r in got] == ["10004088536354799741", "1001233333999"]
    assert got[0]["text"] == "The Amazon River is the second longest."
    assert (got[0]["language"], got[0]["gender"], got[1]["gender"]) == ("en", "female", "male")


def test_vocalsound_labels_and_split(tmp_path: Path) -> None:
    root = tmp_path / "vocalsound_16k"
    for name in ("f0003_0_cough.wav", "f0003_0_throatclearing.wav", "m0124_1_laughter.wav"):
        tone(root / "audio_16k" / name, 0.3)
    (root / "datafiles").mkdir()
    (root / "datafiles" / "te.json").write_text(json.dumps({"data": [
        {"wav": "/data/sls/scratch/vocalsound/audio_16k/f0003_0_throatclearing.wav", "labels": "/m/0dl9sf8"},
        {"wav": "/data/sls/scratch/vocalsound/audio_16k/m0124_1_laughter.wav", "labels": "/m/01j3sz"}]}))
    out = tmp_path / "vs.jsonl"
    run([str(root), "--format", "vocalsound", "-o", str(out)])
    assert [(r["id"], r["label"]) for r in rows(out)] == [
        ("f0003_0_cough", "cough"), ("f0003_0_throatclearing", "throat clearing"), ("m0124_1_laughter", "laughter")]
    run([str(root), "--format", "vocalsound", "--split", "te", "-o", str(out)])
    got = rows(out)
    assert [r["label"] for r in got] == ["throat clearing", "laughter"]
    assert (got[0]["task"], got[0]["speaker"]) == ("vocal_sound", "f0003")


def test_vocalsound_bad_file_name(tmp_path: Path) -> None:
    tone(tmp_path / "audio_16k" / "f0003_0_yawn.wav", 0.2)
    with pytest.raises(InputError, match="f0003_0_yawn.wav: expected <speaker>_<n>_<label>.wav"):
        build_corpus_manifest(tmp_path, tmp_path / "o.jsonl", "vocalsound", show_progress=False)


def test_generic_csv_and_tsv(tmp_path: Path) -> None:
    tone(tmp_path / "wav" / "a.wav", 0.5)
    tone(tmp_path / "wav" / "b.wav", 0.25)
    table = tmp_path / "data.csv"
    table.write_text('audio,text,language,speaker\nwav/a.wav,"hello, world",en,s1\nwav/b.wav,good night,,s2\n')
    out = tmp_path / "out" / "m.jsonl"
    run([str(table), "--format", "csv", "--language", "de", "-o", str(out)])
    got = rows(out)
    assert [(r["text"], r["language"], r["task"]) for r in got] == [("hello, world", "en", "asr"), ("good night", "de", "asr")]
    assert got[0]["audio"] == "../wav/a.wav" and got[1]["duration"] == pytest.approx(0.25)
    tsv = tmp_path / "st.tsv"
    tsv.write_text("path\ttext\ttarget_text\ttarget_language\nwav/a.wav\thello\thallo\tde\n")
    run([str(tsv), "--format", "tsv", "-o", str(out)])
    (row,) = rows(out)
    assert (row["target_text"], row["target_language"]) == ("hallo", "de") and "task" not in row


def test_generic_table_needs_audio_and_target_columns(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("file,sentence\na.wav,hi\n")
    result = CliRunner().invoke(app, ["manifest", str(table), "--format", "csv", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0
    assert "must name an 'audio' (or 'path') column" in str(result.exception)


def test_unknown_format_and_wrong_option_mix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown corpus layout 'timit'"):
        build_corpus_manifest(tmp_path, tmp_path / "o.jsonl", "timit", show_progress=False)
    result = CliRunner().invoke(app, ["manifest", str(tmp_path), "--split", "test", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code != 0 and "--split and --clips need --format" in str(result.exception)


def test_utterance_ids_that_cannot_name_a_file(tmp_path: Path, librispeech) -> None:
    """Found by tests/test_fuzz_formats.py: a NUL in an utterance id was a ValueError, an id longer
    than a file name may be an OSError (ENAMETOOLONG) from the audio check; now a one-line error
    and a dropped entry."""
    root = librispeech(tmp_path)
    table = root / "test-clean" / "1089" / "134686" / "1089-134686.trans.txt"
    table.write_text("1089-134686-0000 HELLO\nab\x00c HELLO\n")
    with pytest.raises(InputError, match=r"trans.txt:2: 'ab\\x00c.flac' holds a NUL character"):
        build_corpus_manifest(root, tmp_path / "o.jsonl", "librispeech", CorpusOptions(split="test-clean"),
                              show_progress=False)
    table.write_text("1089-134686-0000 HELLO\n" + "x" * 300 + " HELLO\n")
    report = build_corpus_manifest(root, tmp_path / "o.jsonl", "librispeech", CorpusOptions(split="test-clean"),
                                   show_progress=False, on_missing="skip")
    assert report.written == 1 and report.dropped["audio file not found"] == 1
    table.write_text("1089-134686-0000 HELLO\nloop HELLO\n")
    (table.parent / "loop.flac").symlink_to(table.parent / "loop.flac")
    with pytest.raises(InputError, match=r"trans.txt:2: 'loop.flac' cannot name a file"):
        build_corpus_manifest(root, tmp_path / "o.jsonl", "librispeech", CorpusOptions(split="test-clean"),
                              show_progress=False)


def test_table_audio_path_too_long_is_dropped(tmp_path: Path) -> None:
    tone(tmp_path / "a.wav", 0.25)
    table = tmp_path / "t.tsv"
    table.write_text("audio\ttext\na.wav\thi\n" + "y" * 5000 + ".wav\tho\n")
    report = build_corpus_manifest(table, tmp_path / "o.jsonl", "tsv", show_progress=False, on_missing="skip")
    assert report.written == 1 and report.dropped["audio file not found"] == 1
