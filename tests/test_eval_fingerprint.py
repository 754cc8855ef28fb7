"""Resuming ``swv eval`` / ``swv infer --manifest`` reuses only predictions of the same run: the
fingerprint (model, generation settings, prompts, manifest) in every line and in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from swv.infer.fingerprint import PARTS, model_identity, run_fingerprint, stale_reason

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def model_a(save_tiny_model) -> Path:
    return save_tiny_model("model_a", seed=0)


@pytest.fixture(scope="module")
def model_b(save_tiny_model) -> Path:
    """The same architecture and config as model A, other weights."""
    return save_tiny_model("model_b", seed=1)


@pytest.fixture(scope="module")
def audio_dir(write_noise_clips, tmp_path_factory) -> Path:
    return write_noise_clips(tmp_path_factory.mktemp("fp_audio"), (0.6, 0.4, 0.8))


def write_manifest(path: Path, audio_dir: Path, texts=("one", "two", "three")) -> Path:
    rows = [{"id": f"u{i}", "audio": str(audio_dir / f"clip{i}.wav"), "text": text} for i, text in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def evaluate(cli, model: Path, manifest: Path, *extra) -> tuple[int, str, str]:
    return cli(["eval", model, "--manifest", manifest, "--task", "asr", "--max-new-tokens", 3, *extra])


# -- the issue: model A, then model B into the same (default) output directory ------------------------
def test_model_b_never_reuses_model_a(cli, monkeypatch, model_a, model_b, audio_dir, tmp_path, generated_prompts) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path / "test.jsonl", audio_dir)
    out_dir = tmp_path / "eval-test-asr"  # the default --output-dir
    code, _, err = evaluate(cli, model_a, manifest)
    assert code == 0, err
    assert len(generated_prompts) == 3
    a_lines = read_jsonl(out_dir / "predictions.jsonl")
    a_report = json.loads((out_dir / "report.json").read_text())
    fingerprint = a_report["fingerprint"]
    assert set(fingerprint) == set(PARTS) and all(line["fingerprint"] == fingerprint for line in a_lines)
    assert a_report["model_identity"] == model_identity(model_a)

    before = (out_dir / "predictions.jsonl").read_bytes()
    code, _, err = evaluate(cli, model_b, manifest)
    assert code != 0 and len(error_lines(err)) == 1, err
    line = error_lines(err)[0]
    assert "made by another run (what differs: the model)" in line and "--overwrite" in line and "--output-dir" in line
    assert (out_dir / "predictions.jsonl").read_bytes() == before and len(generated_prompts) == 3
    assert json.loads((out_dir / "report.json").read_text()) == a_report  # A's report is not overwritten by B's

    code, _, err = evaluate(cli, model_b, manifest, "--overwrite")
    assert code == 0, err
    assert "3 generated, 0 failed, 0 already in predictions.jsonl" in err and len(generated_prompts) == 6
    b_report = json.loads((out_dir / "report.json").read_text())
    b_lines = read_jsonl(out_dir / "predictions.jsonl")
    assert [p["id"] for p in b_lines] == ["u0", "u1", "u2"]
    assert all(p["fingerprint"] == b_report["fingerprint"] for p in b_lines)
    assert b_report["fingerprint"]["model"] != fingerprint["model"]
    assert {k: v for k, v in b_report["fingerprint"].items() if k != "model"} == {
        k: v for k, v in fingerprint.items() if k != "model"}
    assert b_report["model_dir"] == str(model_b.resolve())
    assert b_report["model_identity"]["sha256"] != a_report["model_identity"]["sha256"]


# -- the same run resumes; any change to what is asked is not reused ----------------------------------
def test_same_run_resumes_only_missing_items(cli, model_a, audio_dir, tmp_path, generated_prompts) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", audio_dir)
    out = tmp_path / "ev"
    code, _, err = evaluate(cli, model_a, manifest, "--output-dir", out, "--seed", 3)
    assert code == 0, err
    predictions = out / "predictions.jsonl"
    lines = predictions.read_text().splitlines(keepends=True)
    predictions.write_text(lines[0] + lines[2] + lines[1][:20])  # interrupted: u1 missing, a half line
    generated_prompts.clear()
    # batch size (and device, dtype) are not part of the fingerprint
    code, _, err = evaluate(cli, model_a, manifest, "--output-dir", out, "--seed", 3, "--batch-size", 1)
    assert code == 0, err
    assert "1 generated, 0 failed, 2 already in predictions.jsonl" in err and len(generated_prompts) == 1
    assert sorted(p["id"] for p in read_jsonl(predictions)) == ["u0", "u1", "u2"]
    report = json.loads((out / "report.json").read_text())
    assert all(p["fingerprint"] == report["fingerprint"] for p in read_jsonl(predictions))


@pytest.mark.parametrize("extra", [["--max-new-tokens", 4], ["--no-length-bound"], ["--system", "Answer briefly."]])
def test_changed_settings_are_not_reused(cli, model_a, audio_dir, tmp_path, generated_prompts, extra) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", audio_dir)
    out = tmp_path / "ev"
    assert evaluate(cli, model_a, manifest, "--output-dir", out)[0] == 0
    code, _, err = evaluate(cli, model_a, manifest, "--output-dir", out, *extra)
    assert code != 0 and len(error_lines(err)) == 1
    assert "made by another run (what differs: the generation settings)" in err
    assert len(generated_prompts) == 3


def test_changed_manifest_or_prompt_is_not_reused(cli, model_a, audio_dir, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", audio_dir)
    out = tmp_path / "o.jsonl"
    infer = ["infer", model_a, "--manifest", manifest, "--output", out, "--max-new-tokens", 3]
    code, _, err = cli(infer)
    assert code == 0, err
    # the same prompts, another reference: only the manifest differs
    write_manifest(manifest, audio_dir, texts=("one", "two", "four"))
    code, _, err = cli(infer)
    assert code != 0 and error_lines(err) == [
        f"error: {out}: its predictions were made by another run (what differs: the manifest); not reusing them: rerun "
        "with --overwrite to start over, or write to another --output file"]
    write_manifest(manifest, audio_dir)
    assert cli(infer)[0] == 0  # back to the manifest of the predictions: resumed, nothing to do
    # another instruction for every record
    code, _, err = cli([*infer, "--prompt", "Say what you hear."])
    assert code != 0 and "(what differs: the prompts)" in err and len(error_lines(err)) == 1
    code, _, err = cli([*infer, "--prompt", "Say what you hear.", "--overwrite"])
    assert code == 0 and "3 generated, 0 failed, 0 already" in err, err
    code, _, err = cli(["infer", model_a, "clip.wav", "--overwrite"])
    assert code != 0 and "--overwrite is for batch mode" in err


def test_old_predictions_without_fingerprint(cli, model_a, audio_dir, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", audio_dir)
    out = tmp_path / "ev"
    out.mkdir()
    old = "".join(json.dumps({"id": f"u{i}", "prediction": "OLD"}) + "\n" for i in range(2))
    (out / "predictions.jsonl").write_text(old)
    code, _, err = evaluate(cli, model_a, manifest, "--output-dir", out)
    assert code != 0 and len(error_lines(err)) == 1
    assert "2 of its 2 line(s) carry no fingerprint (written by an older swv)" in err and "--overwrite" in err
    assert (out / "predictions.jsonl").read_text() == old
    code, _, err = evaluate(cli, model_a, manifest, "--output-dir", out, "--overwrite")
    assert code == 0 and "3 generated, 0 failed, 0 already" in err, err
    assert all(p["prediction"] != "OLD" and "fingerprint" in p for p in read_jsonl(out / "predictions.jsonl"))


def test_scoring_existing_predictions_records_their_fingerprint(cli, model_a, audio_dir, tmp_path) -> None:
    manifest = write_manifest(tmp_path / "m.jsonl", audio_dir)
    assert evaluate(cli, model_a, manifest, "--output-dir", tmp_path / "gen")[0] == 0
    generated = json.loads((tmp_path / "gen" / "report.json").read_text())
    code, _, err = evaluate(cli, model_a, manifest, "--output-dir", tmp_path / "scored",
                            "--predictions", tmp_path / "gen" / "predictions.jsonl")
    assert code == 0, err
    assert json.loads((tmp_path / "scored" / "report.json").read_text())["fingerprint"] == generated["fingerprint"]
    code, _, err = evaluate(cli, model_a, manifest, "--predictions", tmp_path / "gen" / "predictions.jsonl",
                            "--output-dir", tmp_path / "again", "--overwrite")
    assert code != 0 and "does not apply to --predictions" in err and len(error_lines(err)) == 1


# -- the parts --------------------------------------------------------------------------------------
def test_model_identity(model_a, tmp_path) -> None:
    identity = model_identity(model_a)
    assert set(identity) == {"sha256", "files"} and identity["files"] > 3
    copy = shutil.copytree(model_a, tmp_path / "elsewhere" / "copy")
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("x")
    assert model_identity(copy) == identity  # where it lies and hidden files do not matter
    weights = next((copy / "adapters").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: same names, sizes and safetensors header
    weights.write_bytes(bytes(data))
    assert model_identity(copy)["sha256"] != identity["sha256"]
    # a Hub snapshot is its repository and commit (nothing read)
    snapshot = tmp_path / "hub" / "models--org--tiny-model" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    assert model_identity(snapshot) == {"repo_id": "org/tiny-model", "revision": COMMIT}


def test_fingerprint_parts_and_stale_reason(model_a, tmp_path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav"}\n')
    base = run_fingerprint(model_a, manifest, [("a", "Transcribe.", "asr")], {"max_new_tokens": 3}, None).parts
    other_task = run_fingerprint(model_a, manifest, [("a", "Transcribe.", "st")], {"max_new_tokens": 3}, None).parts
    other_system = run_fingerprint(model_a, manifest, [("a", "Transcribe.", "asr")], {"max_new_tokens": 3}, "").parts
    assert {k for k in PARTS if base[k] != other_task[k]} == {"prompts"}
    assert {k for k in PARTS if base[k] != other_system[k]} == {"generation"}
    assert stale_reason([{"id": "a", "fingerprint": base}], base) is None
    assert stale_reason([], base) is None
    mixed = [{"id": "a", "fingerprint": base}, {"id": "b", "fingerprint": other_task}]
    assert stale_reason(mixed, base) == "its predictions were made by another run (what differs: the prompts)"
    both = {**other_task, "generation": other_system["generation"]}
    assert stale_reason([{"id": "a", "fingerprint": both}], base) == (
        "its predictions were made by another run (what differs: the generation settings and the prompts)")
