"""`swv eval`: batch inference + scoring + JSON report on tiny manifests; --predictions mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swv.eval.evaluation import evaluate, format_table, sha256_file
from swv.infer.batch import read_items, saved_instructions, task_prompt
from swv.model.defaults import DEFAULT_INSTRUCTIONS


@pytest.fixture(scope="module")
def model_dir(save_tiny_model) -> Path:
    return save_tiny_model("eval_model")


@pytest.fixture(scope="module")
def audio_dir(write_noise_clips, tmp_path_factory) -> Path:
    return write_noise_clips(tmp_path_factory.mktemp("eval_audio"), (0.8, 0.5, 1.1))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def asr_manifest(audio_dir: Path, tmp_path: Path) -> Path:
    rows = [
        {"id": "a", "audio": str(audio_dir / "clip0.wav"), "text": "hello world", "language": "en"},
        {"audio": str(audio_dir / "clip1.wav"), "text": "good morning", "language": "en"},
        {"id": "c", "audio": str(audio_dir / "clip2.wav"), "text": "see you", "instruction": "Repeat after me."},
        {"id": "bad", "audio": str(audio_dir / "missing.wav"), "text": "lost"},
    ]
    return write_jsonl(tmp_path / "test_asr.jsonl", rows)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_eval_asr_end_to_end(cli, model_dir: Path, audio_dir: Path, tmp_path: Path, generated_prompts: list[str]) -> None:
    manifest = asr_manifest(audio_dir, tmp_path)
    out_dir = tmp_path / "asr"
    code, out, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "asr", "--output-dir", out_dir,
                          "--max-new-tokens", 4, "--batch-size", 2, "--seed", 1, "--on-missing", "skip"])
    assert code == 0, err
    assert generated_prompts == ["Transcribe the speech.", "Transcribe the speech.", "Repeat after me."]
    predictions = read_jsonl(out_dir / "predictions.jsonl")
    assert [p["id"] for p in predictions] == ["a", "test_asr.jsonl:2", "c", "bad"]
    assert "not found" in predictions[3]["error"]
    report = json.loads((out_dir / "report.json").read_text())
    expected = evaluate(predictions, "asr")
    assert out == format_table(expected)
    for key in ("task", "num_records", "num_scored", "num_failed", "failed_ids", "metrics", "per_language"):
        assert report[key] == expected[key], key
    assert report["num_failed"] == 1 and report["failed_ids"] == ["bad"]
    assert report["metrics"]["wer"] is not None and report["metrics"]["cer"] is not None
    assert report["model_dir"] == str(model_dir.resolve())
    assert report["manifest"] == {"path": str(manifest.resolve()), "sha256": sha256_file(manifest)}
    settings = report["generation_settings"]
    assert settings["max_new_tokens"] == 4 and settings["do_sample"] is False and settings["seed"] == 1
    assert settings["batch_size"] == 2 and settings["system_prompt"].startswith("You are a helpful language")
    assert settings["prompts"] == {"Transcribe the speech.": 3, "Repeat after me.": 1}
    assert report["predictions_file"] == str((out_dir / "predictions.jsonl").resolve())

    # resuming (the same model, settings and prompts): the predicted items are not generated again;
    # the failed one is retried (and fails again: its audio is still missing), same numbers
    generated_prompts.clear()
    code, out2, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "asr", "--output-dir", out_dir,
                           "--max-new-tokens", 4, "--seed", 1,
                           "--on-missing", "skip"])
    assert code == 0, err
    assert generated_prompts == [] and out2 == out
    assert "0 generated, 1 failed, 3 already in predictions.jsonl" in err
    assert [p["id"] for p in read_jsonl(out_dir / "predictions.jsonl")] == ["a", "test_asr.jsonl:2", "c", "bad"]


def test_eval_classification_end_to_end(cli, model_dir: Path, audio_dir: Path, tmp_path: Path) -> None:
    options = ["happy", "sad", "angry"]
    rows = [
        {"id": f"e{i}", "audio": str(audio_dir / f"clip{i}.wav"), "instruction": "What is the emotion? "
         "Options: (A) happy (B) sad (C) angry", "label": label, "options": options, "task": "emotion"}
        for i, label in enumerate(["happy", "B", "angry"])
    ]
    manifest = write_jsonl(tmp_path / "emotion.jsonl", rows)
    code, out, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "classification",
                          "--output-dir", tmp_path / "cls", "--max-new-tokens", 3])
    assert code == 0, err
    predictions = read_jsonl(tmp_path / "cls" / "predictions.jsonl")
    assert all("prediction" in p and p["options"] == options for p in predictions)
    expected = evaluate(predictions, "classification")
    report = json.loads((tmp_path / "cls" / "report.json").read_text())
    assert report["metrics"] == expected["metrics"]
    assert set(report["metrics"]) >= {"accuracy", "correct", "total", "ambiguous", "unmatched"}
    assert report["metrics"]["total"] == 3 and out == format_table(expected)

    # a record without an instruction gets its task's default from the model's table (the one
    # training used); a task without a default stops the run before generating
    rows[1].pop("instruction")
    items = read_items(write_jsonl(tmp_path / "default_prompt.jsonl", rows),
                       lambda record, where: task_prompt(record, where, "classification", instructions=saved_instructions(model_dir)))
    assert items[1].prompt == DEFAULT_INSTRUCTIONS["emotion"] and items[0].prompt == rows[0]["instruction"]
    rows[1]["task"] = "pitch_contour"
    manifest = write_jsonl(tmp_path / "no_prompt.jsonl", rows)
    code, _, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "classification",
                        "--output-dir", tmp_path / "cls2"])
    assert code != 0 and len(error_lines(err)) == 1
    assert f"{manifest}:2" in err and "instruction" in err and "pitch_contour" in err
    assert not (tmp_path / "cls2" / "predictions.jsonl").exists()


def test_eval_existing_predictions(cli, model_dir: Path, audio_dir: Path, tmp_path: Path) -> None:
    manifest = asr_manifest(audio_dir, tmp_path)
    predictions = write_jsonl(tmp_path / "preds.jsonl", [
        {"id": "a", "prediction": "Hello, world!"},
        {"id": "test_asr.jsonl:2", "prediction": "good evening"},
        {"id": "c", "prediction": "see you"},
        {"id": "bad", "error": "missing.wav: audio file not found"},
        {"id": "extra", "prediction": "not in the manifest"},
    ])
    out_dir = tmp_path / "from_preds"
    code, out, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "asr", "--predictions", predictions,
                          "--output-dir", out_dir, "--normalize", "none"])
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    refs = {"a": "hello world", "test_asr.jsonl:2": "good morning", "c": "see you"}
    # normalize none: "Hello," and "world!" are 2 substitutions; "evening" 1; total 6 reference words
    assert report["metrics"]["wer"] == pytest.approx(3 / 6)
    assert report["settings"] == {"normalize": "none"}
    assert report["num_failed"] == 1 and report["num_scored"] == 3 and report["num_records"] == 4
    assert report["generation_settings"] is None
    assert report["predictions_file"] == str(predictions.resolve())
    records = [{"id": k, "text": v, "prediction": p} for (k, v), p in
               zip(refs.items(), ["Hello, world!", "good evening", "see you"])] + [{"id": "bad", "error": "x"}]
    assert report["metrics"] == evaluate(records, "asr", normalize="none")["metrics"]
    assert not (out_dir / "predictions.jsonl").exists()

    # predictions that do not cover the manifest are refused
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"id": "a", "prediction": "hello world"}])
    code, _, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "asr", "--predictions", partial,
                        "--output-dir", out_dir])
    assert code != 0 and len(error_lines(err)) == 1 and "3 manifest item(s) have no prediction" in err


def test_eval_st_and_open_from_predictions(cli, model_dir: Path, audio_dir: Path, tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "st.jsonl", [
        {"id": "s1", "audio": str(audio_dir / "clip0.wav"), "target_text": "Guten Morgen", "instruction": "Q1?",
         "response": "Guten Morgen"},
        {"id": "s2", "audio": str(audio_dir / "clip1.wav"), "target_text": "Danke schön", "instruction": "Q2?",
         "response": "Danke schön"},
    ])
    predictions = write_jsonl(tmp_path / "st_preds.jsonl", [
        {"id": "s1", "prediction": "Guten Morgen"}, {"id": "s2", "prediction": "Danke"}])
    code, out, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "st", "--predictions", predictions,
                          "--output-dir", tmp_path / "st", "--target-language", "de"])
    assert code == 0, err
    report = json.loads((tmp_path / "st" / "report.json").read_text())
    assert list(report["per_language"]) == ["de"] and report["settings"] == {"target_language": "de"}
    assert 0 < report["metrics"]["chrf"] < 100 and "BLEU" in out

    code, out, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "open", "--predictions",
                          predictions, "--output-dir", tmp_path / "open"])
    assert code == 0, err
    judge = read_jsonl(tmp_path / "open" / "judge_inputs.jsonl")
    assert [j["instruction"] for j in judge] == ["Q1?", "Q2?"] and judge[1]["prediction"] == "Danke"
    assert json.loads((tmp_path / "open" / "report.json").read_text())["scored"] is False


def test_eval_st_prompts_and_usage_errors(cli, model_dir: Path, audio_dir: Path, tmp_path: Path,
                                          generated_prompts: list[str]) -> None:
    manifest = write_jsonl(tmp_path / "st.jsonl", [
        {"id": "s1", "audio": str(audio_dir / "clip0.wav"), "target_text": "Hallo", "target_language": "de"},
        {"id": "s2", "audio": str(audio_dir / "clip1.wav"), "target_text": "Bonjour", "language": "fr-FR"},
    ])
    code, _, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "st", "--output-dir", tmp_path / "o",
                        "--max-new-tokens", 2])
    assert code == 0, err
    assert generated_prompts == ["Translate the speech into German.", "Translate the speech into French."]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert sorted(report["per_language"]) == ["de", "fr"]

    # every generation option reaches the run and the report; --max-duration fails the 0.8 s clip
    generated_prompts.clear()
    code, _, err = cli(["eval", model_dir, "--manifest", manifest, "--task", "st", "--output-dir", tmp_path / "o2",
                        "--max-new-tokens", 3, "--do-sample", "--temperature", 1.2, "--top-p", 0.9, "--seed", 5,
                        "--system", "Be brief.", "--device", "cpu", "--dtype", "float32", "--batch-size", 1,
                        "--max-duration", 0.6])
    assert code == 0, err
    assert generated_prompts == ["Translate the speech into French."]
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["failed_ids"] == ["s1"] and list(report["per_language"]) == ["fr"]
    errors = [p.get("error") for p in read_jsonl(tmp_path / "o2" / "predictions.jsonl")]
    assert "exceeds the maximum duration of 0.6 s" in errors[0] and errors[1] is None
    settings = report["generation_settings"]
    assert {k: settings[k] for k in ("max_new_tokens", "do_sample", "temperature", "top_p", "seed", "system_prompt",
                                     "device", "dtype", "batch_size", "max_duration")} == {
        "max_new_tokens": 3, "do_sample": True, "temperature": 1.2, "top_p": 0.9, "seed": 5,
        "system_prompt": "Be brief.", "device": "cpu", "dtype": "float32", "batch_size": 1, "max_duration": 0.6}

    # an st record without instruction or target language, and bad options, fail before generating
    no_language = write_jsonl(tmp_path / "st_bad.jsonl", [{"audio": str(audio_dir / "clip0.wav"), "target_text": "x"}])
    for manifest_path, args, match in [
        (no_language, ["--task", "st"], "target language"),
        (manifest, ["--task", "summarise"], "unknown task"),
        (manifest, ["--task", "st", "--normalize", "basic"], "--normalize"),
        (manifest, ["--task", "asr", "--normalize", "loud"], "unknown mode 'loud'"),
        (manifest, ["--task", "asr", "--target-language", "de"], "--target-language"),
    ]:
        generated_prompts.clear()
        code, _, err = cli(["eval", model_dir, "--manifest", manifest_path, "--output-dir", tmp_path / "u", *args])
        assert code != 0 and len(error_lines(err)) == 1 and match in err, err
        assert generated_prompts == []
    code, _, err = cli(["eval", tmp_path / "nope", "--manifest", manifest, "--task", "st"])
    assert code != 0 and error_lines(err) == [f"error: {tmp_path / 'nope'}: model directory not found"]
