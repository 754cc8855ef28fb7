"""Faults around checkpoints and exports of `swv train` on the tiny recipe: a damaged latest
checkpoint (verified against its manifest, the newest intact one is used), temporary
directories left by a kill (removed on the next run), and a full disk / file-size limit while
writing (one error line, nothing half-written kept, the same command continues afterwards;
tested for real with RLIMIT_FSIZE, not a mocked writer)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from swv.train.checkpoint import (
    MANIFEST_FILE,
    latest_intact_checkpoint,
    verify_checkpoint,
)

ARGS = ["train", "--recipe", "tiny", "output_dir=run", "--stage", "alignment", "stages.0.max_steps=6",
        "stages.0.save_every=2", "stages.0.keep_last=5", "stages.0.batch_size=4", "data.num_workers=0"]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    out["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return out


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def swv(*args: str, cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, cwd=cwd, env=env(),
                          preexec_fn=file_size_limit(limit) if limit is not None else None)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def alignment_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "alignment" / "export" / "adapters" / "alignment.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished alignment stage with checkpoints at steps 2, 4 and 6 (the work directory)."""
    work = tmp_path_factory.mktemp("ckpt")
    res = swv(*ARGS, cwd=work)
    assert res.returncode == 0, res.stderr[-2000:]
    return work


def copy_run(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run" / "alignment" / "checkpoints"


@pytest.mark.parametrize(("name", "damage"), [
    ("trainable.safetensors", "empty"),
    ("optimizer.bin", "truncate"),
    ("trainer_state.json", "empty"),
    ("scheduler.pt", "flip"),
    (MANIFEST_FILE, "truncate"),
    (MANIFEST_FILE, "remove"),
])
def test_verify_checkpoint_names_the_damage(trained: Path, tmp_path: Path, name: str, damage: str) -> None:
    ckpts = copy_run(trained, tmp_path)
    latest = ckpts / "step-0000006"
    assert verify_checkpoint(latest) is None
    path = latest / name
    data = path.read_bytes()
    if damage == "remove":
        path.unlink()
    else:
        path.write_bytes({"empty": b"", "truncate": data[: len(data) // 2],
                          "flip": data[:-1] + bytes([data[-1] ^ 1])}[damage])
    reason = verify_checkpoint(latest)
    assert reason is not None and name in reason
    assert latest_intact_checkpoint(ckpts) == (ckpts / "step-0000004", [(latest, reason)])


def test_damaged_latest_checkpoints_fall_back_to_the_newest_intact_one(trained: Path, tmp_path: Path) -> None:
    ckpts = copy_run(trained, tmp_path)
    (ckpts / "step-0000006" / "trainable.safetensors").write_bytes(b"")
    optimizer = ckpts / "step-0000004" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])
    (tmp_path / "run" / "alignment" / "stage.json").unlink()  # the stage is not finished: resume it
    res = swv(*ARGS, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    shown = Path("run/alignment/checkpoints")  # as the recipe's relative output_dir gives it
    assert f"warning: skipping checkpoint {shown / 'step-0000006'}: trainable.safetensors has 0 bytes" in res.stdout
    assert f"warning: skipping checkpoint {shown / 'step-0000004'}: optimizer.bin has 1000 bytes" in res.stdout
    assert "resuming stage alignment from run/alignment/checkpoints/step-0000002 (step 2)" in res.stdout
    assert "delete" not in res.stdout + res.stderr
    assert_same_weights(alignment_weights(tmp_path / "run"), alignment_weights(trained / "run"))
    assert all(verify_checkpoint(ckpts / f"step-000000{s}") is None for s in (2, 4, 6))  # rewritten whole


def test_no_intact_checkpoint_is_one_line(trained: Path, tmp_path: Path) -> None:
    ckpts = copy_run(trained, tmp_path)
    for step in (2, 4, 6):
        (ckpts / f"step-000000{step}" / "trainer_state.json").write_text("")
    (tmp_path / "run" / "alignment" / "stage.json").unlink()
    line = one_error_line(swv(*ARGS, cwd=tmp_path))
    assert line.startswith("error: run/alignment/checkpoints: no intact checkpoint"), line


def test_leftover_temporary_directories_are_removed(trained: Path, tmp_path: Path) -> None:
    ckpts = copy_run(trained, tmp_path)
    stage = ckpts.parent
    ours = [ckpts / ".step-0000008.tmp", ckpts / ".step-0000004.old", stage / ".export.k2_x9abz.tmp",
            stage / ".export.a1b2c3d4.old"]
    theirs = [ckpts / "notes.tmp", stage / ".export.mine", stage / ".exports.a1b2c3d4.tmp", tmp_path / ".step-0000001.tmp"]
    for path in ours + theirs:
        path.mkdir()
        (path / "optimizer.bin").write_bytes(b"x" * 10)
    res = swv(*ARGS, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for path in ours:
        assert not path.exists(), path
        assert f"removed {path.relative_to(tmp_path)}, left behind by an interrupted run" in res.stdout
    assert all(path.is_dir() for path in theirs)
    assert "already done" in res.stdout


def test_file_size_limit_while_writing_checkpoint_and_export(trained: Path, tmp_path: Path) -> None:
    """A file-size limit makes the first checkpoint fail, then (a larger one) the export: each
    time one error line naming the path and no half-written directory; the same command
    without the limit then continues from the last checkpoint to the same weights."""
    done = trained / "run" / "alignment"
    ckpt_sizes = sorted(p.stat().st_size for p in (done / "checkpoints" / "step-0000002").iterdir())
    export_largest = max(p.stat().st_size for p in (done / "export").rglob("*") if p.is_file())
    assert ckpt_sizes[-2] < ckpt_sizes[-1] < export_largest
    ckpts = tmp_path / "run" / "alignment" / "checkpoints"
    shown = Path("run/alignment")  # as the recipe's relative output_dir gives it

    line = one_error_line(swv(*ARGS, cwd=tmp_path, limit=(ckpt_sizes[-2] + ckpt_sizes[-1]) // 2))
    assert line.startswith(f"error: {shown / 'checkpoints' / 'step-0000002'}: could not write the checkpoint"), line
    assert list(ckpts.iterdir()) == []

    line = one_error_line(swv(*ARGS, cwd=tmp_path, limit=(ckpt_sizes[-1] + export_largest) // 2))
    assert line.startswith(f"error: {shown / 'export'}: could not write the export ("), line
    assert "File too large" in line
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004", "step-0000006"]
    assert [p.name for p in ckpts.parent.iterdir() if "export" in p.name] == []
    assert not json.loads((ckpts.parent / "stage.json").read_text())["done"]

    res = swv(*ARGS, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming stage alignment from run/alignment/checkpoints/step-0000006 (step 6)" in res.stdout
    assert_same_weights(alignment_weights(tmp_path / "run"), alignment_weights(trained / "run"))


APPEND_UNDER_LIMIT = """
import resource, signal, sys
from pathlib import Path
from swv.core.errors import SwvError
from swv.infer.batch import _append
from swv.train.runner import MetricsLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the limit after the imports (torch writes a module file)
resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))
metrics, predictions = Path(sys.argv[1]), Path(sys.argv[2])
for write in (lambda: MetricsLog(metrics, True, resume_step=0).write({"step": 1, "pad": "x" * 600}),
              lambda: _append(open(predictions, "a", encoding="utf-8"), [{"id": "b", "pad": "y" * 600}])):
    try:
        write()
    except SwvError as exc:
        print(exc)
"""


def test_file_size_limit_while_appending_metrics_and_predictions(tmp_path: Path) -> None:
    """A metrics record or a batch of predictions that does not fit is not left torn: the file
    is cut back to its last whole line, and the error names it."""
    metrics, predictions = tmp_path / "metrics.jsonl", tmp_path / "predictions.jsonl"
    metrics.write_text(json.dumps({"step": 0}) + "\n")
    predictions.write_text(json.dumps({"id": "a", "prediction": "hi"}) + "\n")
    before = metrics.read_bytes(), predictions.read_bytes()
    res = subprocess.run([sys.executable, "-c", APPEND_UNDER_LIMIT, str(metrics), str(predictions)], capture_output=True,
                         text=True, env=env())
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 2, res.stdout
    assert lines[0].startswith(f"{metrics}: could not write the metrics (File too large)")
    assert lines[1].startswith(f"{predictions}: could not write the predictions (File too large)")
    assert (metrics.read_bytes(), predictions.read_bytes()) == before
