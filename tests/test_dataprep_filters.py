"""Tests for `swv data filter` (the library function with injected transcribers, and the CLI)."""

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
from swv.dataprep.filters import (
    FilterConfig,
    filter_manifest,
    load_token_counter,
    normalize_for_wer,
    word_error_rate,
)

SR = 16000


def tone(path: Path, seconds: float, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    return path


def make_manifest(tmp_path: Path, specs: list[tuple[str, float | None, str | None]]) -> Path:
    """specs: (id, seconds or None for no file, text or None)."""
    lines = []
    for rid, seconds, text in specs:
        if seconds is not None:
            tone(tmp_path / "audio" / f"{rid}.wav", seconds)
        rec = {"id": rid, "audio": f"audio/{rid}.wav", "task": "asr"}
        if text is not None:
            rec["text"] = text
        lines.append(json.dumps(rec))
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(lines) + "\n")
    return m


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ids(path: Path) -> list[str]:
    return [r["id"] for r in rows(path)]


WORDS4 = "one two three four"


def run(tmp_path: Path, m: Path, **kw) -> tuple:
    out, rej = tmp_path / "out" / "kept.jsonl", tmp_path / "out" / "rejected.jsonl"
    report = filter_manifest(m, out, rejected=rej, show_progress=False, **kw)
    return report, out, rej


# --------------------------------------------------------------------------- boundaries


def test_duration_boundaries(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [
        ("short", 2.99, WORDS4), ("min", 3.0, WORDS4), ("max", 30.0, "w " * 60), ("long", 30.01, "w " * 60),
    ])
    report, out, rej = run(tmp_path, m)
    assert ids(out) == ["min", "max"]
    assert {r["id"]: r["reject_reason"] for r in rows(rej)} == {"short": "too_short", "long": "too_long"}
    assert report.dropped == {"too_short": 1, "too_long": 1}
    assert "2.990 s < 3 s" in rows(rej)[0]["reject_detail"]


def test_duration_thresholds_and_switch(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("a", 2.0, WORDS4), ("b", 4.0, WORDS4 + " five six")])
    _, out, _ = run(tmp_path, m, config=FilterConfig(min_duration=1.5, max_duration=3.5))
    assert ids(out) == ["a"]
    _, out, _ = run(tmp_path, m, config=FilterConfig(min_duration=None, max_duration=None))
    assert ids(out) == ["a", "b"]


def test_text_token_boundary_whitespace(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("ok", 5.0, " ".join(["w"] * 200)), ("over", 5.0, " ".join(["w"] * 201))])
    report, out, rej = run(tmp_path, m)
    assert ids(out) == ["ok"]
    assert rows(rej)[0]["reject_reason"] == "text_too_long"
    assert "201 tokens > 200" in rows(rej)[0]["reject_detail"]
    assert "text length counted in whitespace words" in report.format()
    _, out, _ = run(tmp_path, m, config=FilterConfig(max_text_tokens=None))
    assert ids(out) == ["ok", "over"]


def _byte_tokenizer(path: Path) -> Path:
    """A tiny byte-level BPE tokenizer (one token per UTF-8 byte) saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))
    return path


def test_text_token_boundary_with_tokenizer(tmp_path: Path) -> None:
    counter = load_token_counter(_byte_tokenizer(tmp_path / "tok"))
    assert counter("abc de") == 6
    m = make_manifest(tmp_path, [("six", 3.0, "abc de"), ("seven", 3.0, "abc def")])
    report, out, rej = run(tmp_path, m, config=FilterConfig(max_text_tokens=6, max_frames_per_token=None),
                           count_tokens=counter, token_unit="byte tokens")
    assert ids(out) == ["six"]
    assert rows(rej)[0]["reject_detail"] == "7 tokens > 6"
    assert "text length counted in byte tokens" in report.format()


def test_load_token_counter_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="tokenizer folder not found"):
        load_token_counter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="cannot load a tokenizer"):
        load_token_counter(tmp_path / "empty")


def test_frames_per_token_boundary(tmp_path: Path) -> None:
    # 3 words: 300 frames allowed at 100 frames/s -> 3.0 s kept, 3.01 s (301 frames) rejected.
    m = make_manifest(tmp_path, [("edge", 3.0, "a b c"), ("over", 3.01, "a b c")])
    _, out, rej = run(tmp_path, m)
    assert ids(out) == ["edge"]
    assert rows(rej)[0]["reject_reason"] == "too_many_frames_per_token"
    # The frame rate scales the frame count: at 50 frames/s 3.01 s is 150.5 frames.
    _, out, _ = run(tmp_path, m, config=FilterConfig(frame_rate=50))
    assert ids(out) == ["edge", "over"]
    _, out, _ = run(tmp_path, m, config=FilterConfig(max_frames_per_token=None))
    assert ids(out) == ["edge", "over"]
    _, out, _ = run(tmp_path, m, config=FilterConfig(max_frames_per_token=101))
    assert ids(out) == ["edge", "over"]


def test_missing_text_rejected_only_when_text_filters_on(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("notext", 4.0, None), ("blank", 4.0, "  ")])
    report, out, rej = run(tmp_path, m)
    assert ids(out) == [] and report.dropped == {"missing_text": 2}
    _, out, _ = run(tmp_path, m, config=FilterConfig(max_text_tokens=None, max_frames_per_token=None))
    assert ids(out) == ["notext", "blank"]


# --------------------------------------------------------------------------- audio problems


def test_corrupt_and_missing_audio_rejected_with_reason(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("good", 4.0, WORDS4), ("gone", None, WORDS4), ("bad", None, WORDS4)])
    (tmp_path / "audio" / "bad.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    report, out, rej = run(tmp_path, m)
    assert ids(out) == ["good"]
    bad = {r["id"]: r for r in rows(rej)}
    assert bad["gone"]["reject_reason"] == bad["bad"]["reject_reason"] == "unreadable_audio"
    assert "audio file not found" in bad["gone"]["reject_detail"]
    assert "not a readable audio file" in bad["bad"]["reject_detail"]
    assert report.dropped == {"unreadable_audio": 2}


def test_verify_audio_decodes_whole_file(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("nan", None, WORDS4)])
    wav = np.zeros(4 * SR, dtype=np.float32)
    wav[100] = np.nan
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "nan.wav", wav, SR, subtype="FLOAT")
    _, out, _ = run(tmp_path, m)
    assert ids(out) == ["nan"]  # the header is fine
    _, out, rej = run(tmp_path, m, config=FilterConfig(verify_audio=True))
    assert ids(out) == [] and "NaN" in rows(rej)[0]["reject_detail"]


def test_duration_field_corrected_from_header_and_paths_rebased(tmp_path: Path) -> None:
    tone(tmp_path / "audio" / "a.wav", 4.0)
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "audio": "audio/a.wav", "text": WORDS4, "duration": 99}) + "\n")
    report, out, _ = run(tmp_path, m)
    rec = rows(out)[0]
    assert rec["duration"] == 4.0
    assert resolve_audio(out, rec).resolve() == (tmp_path / "audio" / "a.wav").resolve()
    assert report.changed == {"duration corrected from audio header": 1}


# --------------------------------------------------------------------------- WER


def test_wer_normalisation() -> None:
    assert normalize_for_wer("Hello, World! It's 'quoted'.") == "hello world it's quoted"
    assert word_error_rate("HELLO WORLD", "Hello, world.") == 0.0
    assert word_error_rate("a b", "") == 1.0
    assert word_error_rate("...", "") == 0.0


class FakeASR:
    """Returns a scripted hypothesis per waveform length and records the batch sizes."""

    def __init__(self, by_seconds: dict[float, str]) -> None:
        self.by_len = {int(round(s * SR)): h for s, h in by_seconds.items()}
        self.batches: list[int] = []

    def __call__(self, wavs: list[np.ndarray]) -> list[str]:
        self.batches.append(len(wavs))
        assert all(w.dtype == np.float32 and w.ndim == 1 for w in wavs)
        return [self.by_len[len(w)] for w in wavs]


def test_wer_boundary_and_batching(tmp_path: Path) -> None:
    ten = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"
    eleven = ten + " w11"
    m = make_manifest(tmp_path, [
        ("exact", 4.0, ten), ("tenpct", 4.5, ten), ("below", 5.0, eleven),
        ("short", 1.0, ten), ("punct", 3.5, "HELLO WORLD AGAIN THERE"), ("bad", 6.0, ten),
    ])
    asr = FakeASR({4.0: ten, 4.5: ten.replace("w3", "x"), 5.0: eleven.replace("w3", "x"),
                   3.5: "Hello, world again there.", 6.0: "something else entirely"})
    report, out, rej = run(tmp_path, m, config=FilterConfig(wer_batch_size=2), transcribe=asr)
    assert ids(out) == ["exact", "below", "punct"]  # input order kept
    reasons = {r["id"]: r["reject_reason"] for r in rows(rej)}
    assert reasons == {"tenpct": "high_wer", "short": "too_short", "bad": "high_wer"}
    assert asr.batches == [2, 2, 1]  # 5 rows reach the WER check; "short" never does
    assert report.dropped == {"high_wer": 2, "too_short": 1}
    assert "WER 0.100 >= 0.1" in {r["id"]: r for r in rows(rej)}["tenpct"]["reject_detail"]
    # A looser threshold keeps the 10% row.
    _, out, _ = run(tmp_path, m, config=FilterConfig(max_wer=0.2), transcribe=FakeASR(
        {4.0: ten, 4.5: ten.replace("w3", "x"), 5.0: eleven, 3.5: "x", 6.0: "x"}))
    assert ids(out) == ["exact", "tenpct", "below"]


def test_transcriber_failure_leaves_no_output(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("a", 4.0, WORDS4), ("b", 4.0, WORDS4), ("c", 4.0, WORDS4)])

    def broken(wavs: list[np.ndarray]) -> list[str]:
        raise RuntimeError("GPU on fire")

    out, rej = tmp_path / "out" / "kept.jsonl", tmp_path / "out" / "rejected.jsonl"
    with pytest.raises(RuntimeError, match="GPU on fire"):
        filter_manifest(m, out, rejected=rej, config=FilterConfig(wer_batch_size=2), transcribe=broken,
                        show_progress=False)
    assert not out.exists() and not rej.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporaries left either


def test_config_validation(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, [("a", 4.0, WORDS4)])
    for cfg, msg in [
        (FilterConfig(min_duration=5, max_duration=3), "--min-duration"),
        (FilterConfig(max_wer=0), "--max-wer"),
        (FilterConfig(wer_batch_size=0), "--wer-batch-size"),
        (FilterConfig(frame_rate=0), "--frame-rate"),
        (FilterConfig(max_text_tokens=0), "--max-text-tokens"),
    ]:
        with pytest.raises(UsageError, match=msg):
            filter_manifest(m, tmp_path / "o.jsonl", config=cfg, show_progress=False)
    assert not (tmp_path / "o.jsonl").exists()


# --------------------------------------------------------------------------- CLI


@pytest.fixture()
def cli_manifest(tmp_path: Path) -> Path:
    return make_manifest(tmp_path, [
        ("short", 2.5, WORDS4),                    # too_short by default
        ("ok", 4.0, WORDS4 + " five"),             # kept by default (400 frames <= 500)
        ("sparse", 6.0, "only three words"),      # too_many_frames_per_token (600 > 300)
        ("wordy", 4.0, " ".join(["w"] * 12)),     # kept unless --max-text-tokens < 12
    ])


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ([], ["ok", "wordy"]),
        (["--no-duration-filter"], ["short", "ok", "wordy"]),
        (["--min-duration", "2", "--max-duration", "5"], ["short", "ok", "wordy"]),
        (["--max-duration", "3.5"], []),
        (["--max-text-tokens", "11"], ["ok"]),
        (["--no-text-filter", "--max-text-tokens", "1"], ["ok", "wordy"]),
        (["--no-frames-filter"], ["ok", "sparse", "wordy"]),
        (["--max-frames-per-token", "200"], ["ok", "sparse", "wordy"]),
        (["--frame-rate", "50"], ["ok", "sparse", "wordy"]),
        (["--verify-audio"], ["ok", "wordy"]),
    ],
)
def test_cli_filter_options(tmp_path: Path, cli_manifest: Path, extra: list[str], kept: list[str]) -> None:
    out = tmp_path / "kept.jsonl"
    result = CliRunner().invoke(app, ["filter", str(cli_manifest), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert ids(out) == kept
    assert f"filter: kept {len(kept)} record(s)" in result.stdout
    if len(kept) < 4:
        assert f"rejected {4 - len(kept)} record(s):" in result.stdout


def test_cli_filter_rejected_and_tokenizer(tmp_path: Path, cli_manifest: Path) -> None:
    tok = _byte_tokenizer(tmp_path / "tok")
    out, rej = tmp_path / "kept.jsonl", tmp_path / "rej.jsonl"
    result = CliRunner().invoke(app, ["filter", str(cli_manifest), "--out", str(out), "--rejected", str(rej),
                                      "--tokenizer", str(tok), "--max-text-tokens", "20"])
    assert result.exit_code == 0, result.output
    # In bytes: "one two three four five" = 23 > 20, twelve "w" = 23 > 20, "only three words" = 16
    # (and its 600 frames are now within 100 x 16).
    assert ids(out) == ["sparse"]
    assert {r["id"]: r["reject_reason"] for r in rows(rej)} == {
        "short": "too_short", "ok": "text_too_long", "wordy": "text_too_long"}
    assert f"tokens of the tokenizer in {tok}" in result.stdout
    assert "text_too_long: 2" in result.stdout and "too_short: 1" in result.stdout


def test_cli_filter_usage_errors(tmp_path: Path, cli_manifest: Path) -> None:
    res = CliRunner().invoke(app, ["filter", str(cli_manifest), "--out", str(tmp_path / "o.jsonl"),
                                   "--min-duration", "10", "--max-duration", "5"])
    assert isinstance(res.exception, UsageError)
    res = CliRunner().invoke(app, ["filter", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert isinstance(res.exception, InputError) and "manifest not found" in str(res.exception)
    res = CliRunner().invoke(app, ["filter", str(cli_manifest), "--out", str(tmp_path / "o.jsonl"),
                                   "--wer-model", str(tmp_path / "no-model")])
    assert isinstance(res.exception, InputError) and "Whisper model folder not found" in str(res.exception)
    assert not (tmp_path / "o.jsonl").exists()


def test_filter_splice_and_sound_insert_follow_on_missing(cli, tmp_path: Path) -> None:
    """A clip the manifest names that does not exist: each command that reads the audio stops
    before writing (one line, --on-missing fail, the default); skip drops and reports it."""
    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav", "text": "hi", "speaker": "s1"}) + "\n"
                        + json.dumps({"id": "b", "audio": "gone.wav", "text": "ho", "speaker": "s2"}) + "\n")
    sounds = tmp_path / "sounds.jsonl"
    sounds.write_text(json.dumps({"id": "c", "audio": "a.wav", "label": "cough"}) + "\n")
    commands = {
        "filter": ["data", "filter", manifest, "-o", tmp_path / "f.jsonl"],
        "splice": ["data", "splice", manifest, "-o", tmp_path / "s.jsonl", "--audio-dir", tmp_path / "s"],
        "sound-insert": ["data", "sound-insert", "--speech", manifest, "--sounds", sounds, "-o", tmp_path / "i.jsonl",
                         "--audio-dir", tmp_path / "i"],
    }
    for name, args in commands.items():
        code, _, err = cli(args)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code != 0 and len(lines) == 1 and "Traceback" not in err, (name, err)
        assert lines[0].startswith("error: 1 of 2 record(s) name an audio file that does not exist (first: m.jsonl:2: ")
        assert not Path(args[args.index("-o") + 1]).exists(), name
    code, out, err = cli([*commands["filter"], "--on-missing", "skip", "--no-duration-filter"])
    assert code == 0, err
    assert "audio file not found" in out and json.loads((tmp_path / "f.jsonl").read_text())["id"] == "a"
