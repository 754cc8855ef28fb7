"""Resuming a stage whose data changed since its checkpoint: each checkpoint records a
fingerprint of every manifest and shard list of the stage (swv.data.fingerprint); a changed one
stops the resume with one line naming the source, the file and the change, unless
``--accept-data-change``. The kill is simulated exactly: a finished run with its last
checkpoint, export and stage file removed is what a kill after the step-4 checkpoint leaves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swv.data.fingerprint import data_changes, manifest_fingerprint, shards_fingerprint
from swv.train.checkpoint import STATE_FILE



def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SWV_")} | {"SWV_DISABLE_PLUGIN_AUTOLOAD": "1"}


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def _args(manifest: str = "asr.jsonl") -> list[str]:
    """The alignment stage on the manifest ``manifest`` (relative to the work directory: the
    recipe, and so its hash, is the same in every copy of the run)."""
    return ["train", "--recipe", "tiny", "output_dir=run", "--stage", "alignment", "stages.0.max_steps=6",
            "stages.0.save_every=2", "stages.0.keep_last=5", "stages.0.batch_size=4", "data.num_workers=0",
            f"data.datasets.asr.manifest={manifest}"]


def swv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, cwd=cwd, env=env())


def asr_lines() -> list[str]:
    """The tiny recipe's ASR manifest with absolute audio paths (so that a copy reads the same clips)."""
    from swv.assets import asset_path

    manifest = asset_path("tiny_speech/train_asr.jsonl")
    lines = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        record["audio"] = str(manifest.parent / record["audio"])
        lines.append(json.dumps(record))
    return lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("resume-data")
    (work / "asr.jsonl").write_text("\n".join(asr_lines()) + "\n", encoding="utf-8")
    res = swv(*_args(), cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    return work


def killed_after_step_4(trained: Path, tmp_path: Path) -> Path:
    """A copy of the run as a kill after the step-4 checkpoint leaves it; returns the manifest."""
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copy(trained / "asr.jsonl", tmp_path / "asr.jsonl")
    stage = tmp_path / "run" / "alignment"
    shutil.rmtree(stage / "checkpoints" / "step-0000006")
    shutil.rmtree(stage / "export")
    (stage / "stage.json").unlink()
    return tmp_path / "asr.jsonl"


def test_checkpoints_record_the_data_fingerprints(trained: Path) -> None:
    state = json.loads((trained / "run" / "alignment" / "checkpoints" / "step-0000004" / STATE_FILE).read_text())
    assert set(state["data"]) == {"asr", "dev_asr"}
    assert state["data"]["asr"] == manifest_fingerprint(trained / "asr.jsonl") | {"path": "asr.jsonl"}
    assert state["data"]["asr"]["lines"] == 96


def test_unchanged_data_resumes(trained: Path, tmp_path: Path) -> None:
    killed_after_step_4(trained, tmp_path)
    res = swv(*_args(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming stage alignment from run/alignment/checkpoints/step-0000004 (step 4)" in res.stdout


def test_rewritten_manifest_refuses_then_the_flag_resumes(trained: Path, tmp_path: Path) -> None:
    manifest = killed_after_step_4(trained, tmp_path)
    manifest.write_text("\n".join(asr_lines()[:3]) + "\n", encoding="utf-8")
    line = one_error_line(swv(*_args(), cwd=tmp_path))
    assert line.startswith("error: data.datasets.asr.manifest: asr.jsonl (96 lines -> 3 lines) changed since the "
                           "checkpoint run/alignment/checkpoints/step-0000004 was written"), line
    assert "--accept-data-change" in line
    assert not (tmp_path / "run" / "alignment" / "export").exists()

    res = swv(*_args(), "--accept-data-change", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming stage alignment from run/alignment/checkpoints/step-0000004 (step 4)" in res.stdout
    assert "(96 lines -> 3 lines) changed since" in res.stdout
    state = json.loads((tmp_path / "run" / "alignment" / "checkpoints" / "step-0000006" / STATE_FILE).read_text())
    assert state["data"]["asr"]["lines"] == 3  # the new data, recorded from then on


def test_same_size_edit_is_a_change(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"text": "a"}\n{"text": "b"}')
    old = manifest_fingerprint(manifest)
    assert old["lines"] == 2 and old["bytes"] == 27
    manifest.write_bytes(b'{"text": "a"}\n{"text": "c"}')
    (change,) = data_changes({"m": old}, {"m": manifest_fingerprint(manifest)})
    assert change == f"data.datasets.m.manifest: {manifest} (same size, different content)"
    assert data_changes({}, {"m": old}) == []  # a checkpoint of an older swv records nothing


def test_shard_list_fingerprint(tmp_path: Path) -> None:
    for name in ("shard-000000.tar", "shard-000001.tar"):
        (tmp_path / name).write_bytes(b"x" * 10)
    old = shards_fingerprint(tmp_path)
    (tmp_path / "shard-000001.tar").unlink()
    (change,) = data_changes({"s": old}, {"s": shards_fingerprint(tmp_path)})
    assert change == f"data.datasets.s.shards: {tmp_path} (2 shards -> 1 shards)"


def test_the_flag_is_documented() -> None:
    res = subprocess.run([sys.executable, "-m", "swv.cli", "train", "-h"], capture_output=True, text=True, env=env())
    assert res.returncode == 0 and "--accept-data-change" in res.stdout


def test_manifest_fingerprint_reads_in_bounded_chunks(tmp_path: Path) -> None:
    """One pass in CHUNK_BYTES reads: memory does not grow with the file, nor with a line."""
    import tracemalloc

    from swv.data.fingerprint import CHUNK_BYTES

    manifest = tmp_path / "big.jsonl"
    with open(manifest, "wb") as fh:
        fh.write(b'{"text": "' + b"x" * (12 * CHUNK_BYTES) + b'"}\n' + b'{"text": "y"}\n' * 1000)
    tracemalloc.start()
    try:
        found = manifest_fingerprint(manifest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found["lines"] == 1001 and found["bytes"] == manifest.stat().st_size
    assert peak < 3 * CHUNK_BYTES
