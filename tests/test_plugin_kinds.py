"""A third-party distribution registers its own corpus layout and benchmark preset through the
same hook as adapters; both work through ``swv data manifest --format``, ``swv eval --preset``
and ``swv plugins list``, and are unknown without the plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

PLUGIN = Path(__file__).parent / "data" / "plugins" / "toy_benchmark"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory, plugin_installer) -> Path:
    return plugin_installer(tmp_path_factory.mktemp("site"), str(PLUGIN))


def swv(site: Path, *args: object, disable: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    env["PYTHONPATH"] = str(site)
    if disable:
        env["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "swv.cli", *map(str, args)], env=env, capture_output=True, text=True)


@pytest.fixture
def toy_corpus(tmp_path: Path) -> Path:
    split = tmp_path / "toy" / "test"
    split.mkdir(parents=True)
    for i, seconds in enumerate((0.5, 0.25)):
        sf.write(split / f"d{i}.wav", np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    (split / "prompts.txt").write_text("d0|one two three four\nd1|five six\n")
    return tmp_path / "toy"


def test_plugin_kinds_are_listed(plugin_site: Path) -> None:
    res = swv(plugin_site, "plugins", "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    corpora = lines[lines.index("corpora:") + 1 : lines.index("eval_presets:")]
    presets = lines[lines.index("eval_presets:") + 1 :]
    toy = next(line for line in corpora if line.split()[0] == "toy-folder")
    assert "[toy-benchmark]" in toy and "prompts.txt" in toy
    assert "librispeech" in [line.split()[0] for line in corpora]
    assert any(line.split()[0] == "toy-digits" and "[toy-benchmark]" in line for line in presets)
    assert "swv-toy-benchmark 0.2.0" in res.stdout


def test_plugin_corpus_layout_builds_a_manifest(plugin_site: Path, toy_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    res = swv(plugin_site, "data", "manifest", toy_corpus, "--format", "toy-folder", "--split", "test",
              "--language", "fr", "-o", out)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["text"], r["language"], r["task"]) for r in rows] == [
        ("d0", "one two three four", "fr", "asr"), ("d1", "five six", "fr", "asr")]
    assert rows[0]["duration"] == pytest.approx(0.5)
    # the layout's own error, and the choices listed from the registry
    res = swv(plugin_site, "data", "manifest", toy_corpus, "--format", "toy-folder", "--split", "dev", "-o", out)
    assert res.returncode != 0 and "dev: split folder not found" in res.stderr and "Traceback" not in res.stderr
    res = swv(plugin_site, "data", "manifest", toy_corpus, "--format", "timit", "-o", out)
    assert "unknown corpus layout 'timit'" in res.stderr and "toy-folder" in res.stderr


def test_plugin_preset_scores_its_benchmark(plugin_site: Path, toy_corpus: Path, tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "d0", "prediction": "One, two, three, five."}) + "\n"
                     + json.dumps({"id": "d1", "prediction": "five six"}) + "\n")
    out_dir = tmp_path / "out"
    res = swv(plugin_site, "eval", tmp_path / "nomodel", "--preset", "toy-digits", "--data", toy_corpus,
              "--predictions", preds, "--output-dir", out_dir)
    assert res.returncode == 0, res.stderr
    report = json.loads((out_dir / "report.json").read_text())
    assert report["benchmark"]["preset"] == "toy-digits" and report["benchmark"]["paper"] is None
    assert report["metrics"]["wer"] == pytest.approx(1 / 6) and report["metrics"]["normalize"] == "basic"
    assert res.stdout.startswith("benchmark: Toy digits (test)   WER: 16.67%")
    rows = [json.loads(line) for line in (out_dir / "benchmark.jsonl").read_text().splitlines()]
    assert {r["instruction"] for r in rows} == {"Transcribe the speech."}


def test_without_the_plugin_its_kinds_are_unknown(plugin_site: Path, toy_corpus: Path, tmp_path: Path) -> None:
    res = swv(plugin_site, "data", "manifest", toy_corpus, "--format", "toy-folder", "-o", tmp_path / "m.jsonl",
              disable=True)
    assert res.returncode != 0 and "unknown corpus layout 'toy-folder'" in res.stderr
    res = swv(plugin_site, "eval", tmp_path / "m", "--preset", "toy-digits", "--data", toy_corpus, disable=True)
    assert res.returncode != 0 and "--preset: unknown benchmark 'toy-digits'" in res.stderr
    assert "Traceback" not in res.stderr


def test_preset_config_checks_its_facts_even_when_a_subclass_loosens_the_types() -> None:
    from pydantic import ValidationError

    from swv.eval.presets.base import PresetConfig

    class Loose(PresetConfig):
        benchmark: str = "x"
        task: str = "asr"
        metric: str = "WER"
        corpus_format: str = "csv"

    assert Loose().task == "asr"
    for bad, message in (({"task": "summarise"}, "task: 'summarise' is not one of asr, st"),
                         ({"normalize": "loud"}, "Input should be 'english', 'basic' or 'none'"),
                         ({"task": "classification", "question": "Which?"}, "'options' are needed"),
                         ({"task": "open"}, "the open task needs a 'question'")):
        with pytest.raises(ValidationError, match=message):
            Loose(**bad)
