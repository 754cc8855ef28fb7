"""`swv eval --preset`: the paper's benchmarks in their own layouts (generated audio), with the
preset's prompt, normaliser and metric, and a report naming the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from swv.core.errors import UsageError
from swv.eval.presets import get_preset, preset_names

SR = 16000


def tone(path: Path, seconds: float, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(path, (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR, format=fmt)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("preset_model")


@pytest.fixture
def cli(eval_cli):
    return eval_cli


@pytest.fixture
def librispeech(librispeech_writer):
    """``build(root) -> root/LibriSpeech``: test-clean with two utterances (0.6 and 0.4 seconds)."""
    return lambda root: librispeech_writer(root, (0.6, 0.4))


def test_librispeech_preset_runs_the_model_with_the_preset_prompt(cli, model_dir: Path, tmp_path: Path,
                                                                  generated_prompts: list[str], librispeech) -> None:
    out_dir = tmp_path / "ls"
    code, out, err = cli([model_dir, "--preset", "librispeech-test-clean", "--data", librispeech(tmp_path),
                          "--output-dir", out_dir, "--max-new-tokens", "3"])
    assert code == 0, err
    preset = get_preset("librispeech-test-clean")
    assert generated_prompts == [preset.prompt()] * 2
    report = json.loads((out_dir / "report.json").read_text())
    assert report["benchmark"]["name"] == "LibriSpeech test-clean" and report["benchmark"]["metric"] == "WER"
    assert report["benchmark"]["paper"] == {"table": "Table 5", "soundwave": 0.021}
    assert report["task"] == "asr" and report["metrics"]["normalize"] == "english"
    assert report["manifest"]["path"] == str((out_dir / "benchmark.jsonl").resolve())
    assert out.startswith("benchmark: LibriSpeech test-clean   WER: ")
    assert "(paper Table 5, Soundwave: 2.10%)" in out


def test_librispeech_preset_scores_known_predictions(cli, tmp_path: Path, librispeech) -> None:
    root = librispeech(tmp_path)
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "1089-134686-0000", "prediction": "He hoped there would be stew for supper."},
        {"id": "1089-134686-0001", "prediction": "Stuff it into you!"},
    ])
    out_dir = tmp_path / "out"
    code, out, err = cli([tmp_path / "nomodel", "--preset", "librispeech-test-clean", "--data", root,
                          "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["wer"] == pytest.approx(1 / 12)  # one substitution in 12 normalised words
    assert "WER: 8.33%" in out


def test_covost2_en_zh_preset_bleu_with_chinese_tokenizer(cli, tmp_path: Path) -> None:
    clips = tmp_path / "cv" / "clips"
    tone(clips / "common_voice_en_19677384.mp3", 0.5, fmt="MP3")
    tone(clips / "common_voice_en_20043921.mp3", 0.5, fmt="MP3")
    table = tmp_path / "covost_v2.en_zh-CN.tsv"
    table.write_text(
        "path\tsentence\ttranslation\tclient_id\tsplit\n"
        "common_voice_en_19677384.mp3\tThe cat sat on the mat.\t猫坐在垫子上。\tc1\ttest\n"
        "common_voice_en_20043921.mp3\tIt is raining today.\t今天下雨了。\tc2\ttest\n")
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "common_voice_en_19677384", "prediction": "猫坐在垫子上。"},
        {"id": "common_voice_en_20043921", "prediction": "今天下雨了。"},
    ])
    out_dir = tmp_path / "st"
    code, out, err = cli([tmp_path / "m", "--preset", "covost2-en-zh", "--data", table, "--clips", clips,
                          "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["bleu"] == pytest.approx(100.0)
    assert report["per_language"]["zh"]["tokenizer"] == "zh"
    rows = [json.loads(line) for line in (out_dir / "benchmark.jsonl").read_text().splitlines()]
    assert {r["instruction"] for r in rows} == {"Translate the speech into Chinese."}
    assert {r["target_language"] for r in rows} == {"zh"}
    assert "benchmark: CoVoST 2 En->Zh (test)   BLEU: 100.00" in out


def test_vocalsound_preset_multiple_choice_accuracy(cli, tmp_path: Path) -> None:
    root = tmp_path / "vocalsound_16k"
    names = ["f0003_0_cough.wav", "f0003_0_throatclearing.wav", "m0124_1_laughter.wav", "m0124_1_sniff.wav"]
    for name in names:
        tone(root / "audio_16k" / name, 0.3)
    (root / "datafiles").mkdir()
    (root / "datafiles" / "te.json").write_text(json.dumps({"data": [{"wav": f"/x/audio_16k/{n}", "labels": "/m/x"}
                                                                     for n in names]}))
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "f0003_0_cough", "prediction": "C"},
        {"id": "f0003_0_throatclearing", "prediction": "The one answer you should pick is D. throat clearing."},
        {"id": "m0124_1_laughter", "prediction": "sigh"},
        {"id": "m0124_1_sniff", "prediction": "cough or sniff"},
    ])
    out_dir = tmp_path / "vs"
    code, out, err = cli([tmp_path / "m", "--preset", "vocalsound", "--data", root, "--predictions", preds,
                          "--output-dir", out_dir])
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(0.5)
    assert report["metrics"]["ambiguous"] == 1
    assert report["benchmark"]["options"] == ["laughter", "sigh", "cough", "throat clearing", "sneeze", "sniff"]
    assert report["benchmark"]["prompt"].endswith(
        "Pick one answer from: A. laughter B. sigh C. cough D. throat clearing E. sneeze F. sniff.")
    assert "accuracy: 50.00%   (paper Table 5, Soundwave: 90.50%)" in out


def test_preset_from_a_manifest_overrides_its_prompts(cli, tmp_path: Path) -> None:
    audio = tone(tmp_path / "a.wav", 0.3)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "x", "audio": "a.wav", "text": "hello", "instruction": "Hi?"}])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "prediction": "hello"}])
    out_dir = tmp_path / "deep" / "out"
    code, _, err = cli([tmp_path / "m", "--preset", "librispeech-test-other", "--manifest", manifest,
                        "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    (row,) = [json.loads(line) for line in (out_dir / "benchmark.jsonl").read_text().splitlines()]
    assert row["instruction"] == get_preset("librispeech-test-other").prompt()
    assert (out_dir / row["audio"]).resolve() == audio.resolve()


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "timit"], "--preset: unknown benchmark 'timit'"),
    (["--preset", "vocalsound"], "give either --manifest or --data"),
    (["--preset", "vocalsound", "--task", "asr", "--data", "."], "--task asr contradicts --preset vocalsound"),
    (["--data", "x"], "--data, --clips and --split need --preset"),
    (["--task", "asr"], "--manifest and --task are required"),
])
def test_preset_usage_errors(cli, tmp_path: Path, args: list, message: str) -> None:
    code, _, err = cli([tmp_path / "m", *args])
    assert code != 0 and message in err and "Traceback" not in err


def test_every_preset_describes_itself() -> None:
    assert {"librispeech-test-clean", "librispeech-test-other", "covost2-en-de", "covost2-en-zh",
            "vocalsound"} <= set(preset_names())
    for name in preset_names():
        described = get_preset(name).describe()
        assert described["preset"] == name and described["prompt"]
    with pytest.raises(UsageError):
        get_preset("nope")
