"""Tests for `swv data stats`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from swv.cli.data import app
from swv.core.errors import InputError
from swv.dataprep.stats import (
    DURATION_BINS,
    TEXT_BINS,
    compute_stats,
    format_stats,
    histogram,
    plot_stats,
)


def make_manifest(tmp_path: Path) -> Path:
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "h.wav", np.zeros(8000 * 5, dtype=np.float32), 8000)  # 5 s, no duration field
    recs = [
        {"audio": "a/1.wav", "text": "one two three", "task": "asr", "language": "en", "duration": 2.0},
        {"audio": "a/2.wav", "text": "one two three four five six", "task": "asr", "language": "en", "duration": 4.0},
        {"audio": "a/3.wav", "text": "un deux", "task": "asr", "language": "fr", "duration": 12.0},
        {"audio": "a/4.wav", "instruction": "q?", "response": "a.", "task": "emotion", "duration": 30.0},
        {"audio": "a/h.wav", "text": " ".join(["w"] * 250), "task": "asr", "language": "en"},
        {"audio": "a/missing.wav", "text": "x", "task": "asr", "language": "en"},
    ]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return m


def test_histogram_bins() -> None:
    assert histogram([0, 0.99, 1, 2.99, 3, 30, 31, -1], DURATION_BINS) == [3, 2, 1, 0, 0, 0, 0, 0, 2]
    assert histogram([0, 1, 4, 5, 200, 201], TEXT_BINS) == [1, 2, 1, 0, 0, 0, 0, 2]


def test_compute_stats_numbers(tmp_path: Path) -> None:
    s = compute_stats(make_manifest(tmp_path), show_progress=False)
    assert s.total.rows == 6 and s.total.timed_rows == 5 and s.unreadable == 1
    assert s.total.seconds == pytest.approx(2 + 4 + 12 + 30 + 5)
    assert s.total.hours == pytest.approx(53 / 3600)
    assert s.total.text_rows == 5 and s.total.words == 3 + 6 + 2 + 250 + 1
    assert set(s.by_task) == {"asr", "emotion"}
    assert s.by_task["asr"].rows == 5 and s.by_task["asr"].seconds == pytest.approx(23)
    assert s.by_task["emotion"].rows == 1 and s.by_task["emotion"].text_rows == 0
    assert s.by_language["en"].rows == 4 and s.by_language["fr"].mean_words == 2
    assert s.by_language["(none)"].rows == 1
    assert s.by_language["en"].mean_duration == pytest.approx((2 + 4 + 5) / 3)
    assert s.duration_hist == [0, 1, 1, 1, 1, 0, 0, 0, 1]
    assert s.text_hist == [0, 3, 1, 0, 0, 0, 0, 1]  # 3, 2, 1 words | 6 | 250


def test_format_stats_text_table(tmp_path: Path) -> None:
    text = format_stats(compute_stats(make_manifest(tmp_path), show_progress=False))
    assert "6 rows, 0.015 hours" in text
    assert "rows without a duration (unreadable audio): 1" in text
    assert "rows without 'text': 1" in text
    lines = text.splitlines()
    asr = next(line for line in lines if line.startswith("asr "))
    assert asr.split() == ["asr", "5", "0.006", "5.75", "52.4"]
    assert any(line.split()[:2] == ["fr", "1"] for line in lines)
    assert "duration (seconds)" in text and "text length (words)" in text
    assert any(line.split() == [">=", "30", "1", "#" * 40] for line in lines)


def test_plot_stats_writes_png(tmp_path: Path) -> None:
    s = compute_stats(make_manifest(tmp_path), show_progress=False)
    png = plot_stats(s, tmp_path / "plots" / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["h.png"]


def test_stats_errors(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no rows"):
        compute_stats(tmp_path / "e.jsonl", show_progress=False)
    (tmp_path / "b.jsonl").write_text('{"audio": "a.wav"}\n{oops}\n')
    with pytest.raises(InputError, match="b.jsonl:2: invalid JSON"):
        compute_stats(tmp_path / "b.jsonl", show_progress=False)


def test_cli_stats(tmp_path: Path) -> None:
    m = make_manifest(tmp_path)
    result = CliRunner().invoke(app, ["stats", str(m), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "6 rows" in result.stdout and "language" in result.stdout
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    result = CliRunner().invoke(app, ["stats", str(tmp_path / "nope.jsonl")])
    assert isinstance(result.exception, InputError)
