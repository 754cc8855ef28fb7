"""Hugging Face audio datasets as sources and for `swv eval --hf-dataset`: datasets.Audio columns
holding bytes or paths, saved to disk and as parquet, read with swv's soundfile reader (no
torchcodec), with column mapping."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from swv.core.audio import load_audio
from swv.core.errors import InputError
from swv.data.hf_sources import EMBEDDED_AUDIO_PREFIX
from swv.data.sources import load_source
from swv.recipes.schema import DatasetSpec

SR = 16000


def flac_bytes(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    sf.write(buf, (rng.standard_normal(int(SR * seconds)) * 0.1).astype(np.float32), SR, format="FLAC")
    return buf.getvalue()


def audio_dataset(tmp_path: Path, *, embed: bool) -> "datasets.Dataset":  # noqa: F821
    """Four clips in a datasets.Audio column named 'speech', transcripts in 'sentence'."""
    import datasets

    sentences = ["hello world", "good morning", "see you soon", "thank you"]
    if embed:
        audio = [{"bytes": flac_bytes(0.3 + 0.1 * i, i), "path": f"clip{i}.flac"} for i in range(4)]
    else:
        audio = []
        for i in range(4):
            path = tmp_path / "wavs" / f"clip{i}.wav"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"")
            sf.write(path, np.zeros(int(SR * (0.3 + 0.1 * i)), np.float32), SR)
            audio.append(str(path))
    # built as plain values and cast: encoding through the Audio feature would need torchcodec
    ds = datasets.Dataset.from_dict({"speech": audio, "sentence": sentences, "speaker_id": [1, 2, 3, 4]})
    return ds.cast_column("speech", datasets.Audio())


COLUMNS = {"audio": "speech", "text": "sentence"}


def test_torchcodec_is_not_installed() -> None:
    with pytest.raises(ImportError):
        import torchcodec  # noqa: F401


def test_bytes_saved_to_disk(tmp_path: Path) -> None:
    audio_dataset(tmp_path, embed=True).save_to_disk(str(tmp_path / "disk"))
    ds = load_source("asr", DatasetSpec(hf_dataset=str(tmp_path / "disk"), columns=COLUMNS, task="asr"))
    assert len(ds) == 4
    row = ds[1]
    assert row["audio"] == f"{EMBEDDED_AUDIO_PREFIX}{tmp_path / 'disk'}#1" and row["text"] == "good morning"
    assert row["duration"] == pytest.approx(0.4) and row["task"] == "asr" and row["source"] == "asr"
    assert np.allclose(load_audio(row["audio_bytes"], SR), sf.read(io.BytesIO(flac_bytes(0.4, 1)), dtype="float32")[0],
                       atol=1e-4)


def test_paths_in_parquet(tmp_path: Path) -> None:
    audio_dataset(tmp_path, embed=False).to_parquet(str(tmp_path / "test.parquet"))
    ds = load_source("asr", DatasetSpec(hf_dataset=str(tmp_path / "test.parquet"), split="test", columns=COLUMNS))
    assert [r["audio"] for r in ds] == [str((tmp_path / "wavs" / f"clip{i}.wav").resolve()) for i in range(4)]
    assert all(r["audio_bytes"] == b"" for r in ds)
    assert ds[3]["duration"] == pytest.approx(0.6)


def test_class_labels_become_names_and_mapping_errors(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"audio": [{"bytes": flac_bytes(0.2, 0), "path": None}], "label": [1],
                                     "instruction": ["What sound is this?"]})
    ds = ds.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(names=["cough", "sigh"]))
    ds.save_to_disk(str(tmp_path / "cls"))
    row = load_source("s", DatasetSpec(hf_dataset=str(tmp_path / "cls"), columns={"response": "label"}))[0]
    assert (row["response"], row["instruction"]) == ("sigh", "What sound is this?")
    with pytest.raises(InputError, match=r"cls:1: needs a target"):  # a label alone is no training target
        load_source("s", DatasetSpec(hf_dataset=str(tmp_path / "cls")))
    with pytest.raises(InputError, match=r"data.datasets.s.columns.text: the dataset has no column 'sentence'"):
        load_source("s", DatasetSpec(hf_dataset=str(tmp_path / "cls"), columns={"text": "sentence"}))
    with pytest.raises(InputError, match=r"has no split 'dev'"):
        datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
        load_source("s", DatasetSpec(hf_dataset=str(tmp_path / "dd"), split="dev"))


def test_broken_embedded_audio_names_the_row(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"audio": [{"bytes": b"not audio at all", "path": None}], "text": ["x"]})
    ds = ds.cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(InputError, match=r"row 0: hf-audio:.*#0: <bytes>: not a readable audio file"):
        load_source("s", DatasetSpec(hf_dataset=str(tmp_path / "bad")))


def test_train_on_an_embedded_audio_dataset(tmp_path: Path) -> None:
    import datasets

    from swv.assets import asset_path
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import train

    rows = [json.loads(line) for line in asset_path("tiny_speech/train_asr.jsonl").read_text().splitlines()[:8]]
    base = asset_path("tiny_speech")
    ds = datasets.Dataset.from_dict(
        {"speech": [{"bytes": (base / r["audio"]).read_bytes(), "path": None} for r in rows],
         "sentence": [r["text"] for r in rows]}).cast_column("speech", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "hf"))
    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", "data.datasets.asr.manifest=null",
                                  f"data.datasets.asr.hf_dataset={tmp_path / 'hf'}",
                                  "data.datasets.asr.columns={audio: speech, text: sentence}", "stages.0.max_steps=2",
                                  "stages.0.data.eval_datasets=[]", "stages.0.batch_size=4"], default_registry())
    train(loaded, stage="alignment")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "alignment" / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(m.get("ctc_loss", np.nan)) for m in metrics)


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("hf_eval_model")


@pytest.fixture
def cli(eval_cli):
    return eval_cli


def test_eval_hf_dataset_with_embedded_audio(cli, model_dir: Path, tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"test": audio_dataset(tmp_path, embed=True)}).save_to_disk(str(tmp_path / "disk"))
    out_dir = tmp_path / "ev"
    code, out, err = cli([model_dir, "--hf-dataset", tmp_path / "disk", "--split", "test", "--column", "audio=speech",
                          "--column", "text=sentence", "--task", "asr", "--output-dir", out_dir,
                          "--max-new-tokens", "2"])
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["num_records"] == 4 and report["num_failed"] == 0 and report["metrics"]["wer"] is not None
    written = sorted((out_dir / "audio").iterdir())
    assert [p.name for p in written] == [f"{i:08d}.flac" for i in range(4)]
    assert written[2].read_bytes() == flac_bytes(0.5, 2)
    preds = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["test-0", "test-1", "test-2", "test-3"]


def test_eval_hf_parquet_paths_scores_predictions(cli, tmp_path: Path) -> None:
    audio_dataset(tmp_path, embed=False).to_parquet(str(tmp_path / "test.parquet"))
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": f"test-{i}", "prediction": t}) + "\n"
                             for i, t in enumerate(["hello world", "good evening", "see you soon", "thank you"])))
    out_dir = tmp_path / "ev"
    code, _, err = cli([tmp_path / "m", "--hf-dataset", tmp_path / "test.parquet", "--column", "audio=speech",
                        "--column", "text=sentence", "--task", "asr", "--predictions", preds, "--output-dir", out_dir])
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["wer"] == pytest.approx(1 / 9)
    assert not (out_dir / "audio").exists()
    code, _, err = cli([tmp_path / "m", "--hf-dataset", tmp_path / "test.parquet", "--column", "text", "--task", "asr"])
    assert code != 0 and "--column: expected FIELD=COLUMN, got 'text'" in err
