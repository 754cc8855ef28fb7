"""Data-parallel training on CPU (gloo) launched with the shipped accelerate config
(configs/ddp.yaml): 2 processes really run, split every global batch, train the same model as
1 process with the same global batch, and resume bit-identically after a kill; the global
batch, the output-directory lock and the data loader's exact resume with workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DDP_CONFIG = ROOT / "configs" / "ddp.yaml"
TIMEOUT = 420  # seconds for one launch; a hung gloo group fails the test instead of CI
# Stage I of the tiny recipe, short, dropout off (its masks come from each process's own RNG,
# so only without it can 1 and 2 processes compute the same thing); SpecAugment stays on
# (its masks are seeded per row). Batches are logged per process.
STAGE_I = ["--stage", "alignment", "stages.0.max_steps=6", "stages.0.save_every=2", "stages.0.keep_last=10",
           "stages.0.batch_size=8", "stages.0.log_every=2", "model.adapters.0.dropout=0.0", "data.log_batches=true",
           "data.num_workers=1"]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("SWV_", "ACCELERATE_"))}
    out.update(SWV_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1")
    return out


def one_process(*args: str) -> list[str]:
    return [sys.executable, "-m", "swv.cli", "train", "--recipe", "tiny", "output_dir=run", *args]


def two_processes(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG),
            "-m", "swv.cli", "train", "--recipe", "tiny", "output_dir=run", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env(), timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def weights(work: Path) -> dict[str, torch.Tensor]:
    return load_file(str(work / "run" / "alignment" / "export" / "adapters" / "alignment.safetensors"))


def batch_log(work: Path, rank: int) -> list[dict]:
    path = work / "run" / "alignment" / f"batches-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torch's elastic agent starts the
    training processes in sessions of their own, out of reach of a process-group kill)."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    run(one_process(*STAGE_I), one)
    res = run(two_processes(*STAGE_I), two)
    (two / "launch.log").write_text(res.stdout + res.stderr)
    return {"one": one, "two": two}


def test_no_unused_parameter_search_when_every_trainable_module_gets_a_gradient(runs: dict[str, Path]) -> None:
    """Stage I trains the alignment adapter from its CTC loss alone: DDP is not asked to search
    for unused parameters (which costs a graph walk and a warning every step)."""
    log = (runs["two"] / "launch.log").read_text()
    assert "[alignment] DDP find_unused_parameters=False" in log
    assert "find_unused_parameters=True was specified" not in log


def test_two_processes_really_run_and_record_the_batch(runs: dict[str, Path]) -> None:
    info = json.loads((runs["two"] / "run" / "run.json").read_text())
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["batch"]["alignment"] == {"global_batch": 8, "per_device_batch": 4, "grad_accum": 1, "rows_per_step": 8}
    single = json.loads((runs["one"] / "run" / "run.json").read_text())
    assert single["world_size"] == 1 and single["batch"]["alignment"]["per_device_batch"] == 8
    ckpt = runs["two"] / "run" / "alignment" / "checkpoints" / "step-0000006"
    assert {"random_states_0.pkl", "random_states_1.pkl", "optimizer.bin", "trainable.safetensors"} <= {p.name for p in ckpt.iterdir()}


def test_ranks_split_each_global_batch_in_the_one_process_order(runs: dict[str, Path]) -> None:
    single = batch_log(runs["one"], 0)
    rank0, rank1 = batch_log(runs["two"], 0), batch_log(runs["two"], 1)
    assert len(single) == len(rank0) == len(rank1) == 6
    for s, a, b in zip(single, rank0, rank1):
        assert s["step"] == a["step"] == b["step"]
        assert len(a["rows"]) == len(b["rows"]) == 4 and not set(a["rows"]) & set(b["rows"])  # different rows
        assert a["rows"] + b["rows"] == s["rows"]  # the same examples, in the same order


def test_two_processes_train_the_one_process_model(runs: dict[str, Path]) -> None:
    # DDP averages the two halves' gradients, 1 process takes the gradient of the whole batch:
    # equal up to float32 summation order, which 6 Adam steps amplify to ~1e-6
    a, b = weights(runs["one"]), weights(runs["two"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    m1 = [r for r in map(json.loads, (runs["one"] / "run" / "alignment" / "metrics.jsonl").read_text().splitlines()) if "ctc_loss" in r]
    m2 = [r for r in map(json.loads, (runs["two"] / "run" / "alignment" / "metrics.jsonl").read_text().splitlines()) if "ctc_loss" in r]
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [2, 4, 6]
    # the logged training loss is the global batch's (the processes' mean), not rank 0's half
    assert [r["ctc_loss"] for r in m2] == pytest.approx([r["ctc_loss"] for r in m1], rel=1e-5)


def test_two_process_kill_and_resume_is_bit_identical(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.Popen(two_processes(*STAGE_I), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = tmp_path / "run" / "alignment" / "checkpoints"
    deadline = time.time() + TIMEOUT
    try:
        while time.time() < deadline and not (ckpts / "step-0000002").is_dir() and proc.poll() is None:
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    assert (ckpts / "step-0000002").is_dir(), "the run never reached step 2"
    assert not (tmp_path / "run" / "alignment" / "export").exists(), "killed too late"
    res = run(two_processes(*STAGE_I), tmp_path)
    assert "resuming stage alignment from" in res.stdout
    assert "took over the lock of pid" in res.stdout  # the killed run's lock file named a dead pid
    a, b = weights(runs["two"]), weights(tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert batch_log(tmp_path, 1) == batch_log(runs["two"], 1)


def test_global_batch_must_divide_over_the_processes() -> None:
    from swv.core.errors import UsageError
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.train_recipe import batch_plan

    recipe = load_recipe("soundwave", [], default_registry()).recipe
    plan = batch_plan(recipe, 8)
    assert plan["alignment"] == {"global_batch": 1024, "per_device_batch": 128, "grad_accum": 8, "rows_per_step": 8192}
    assert plan["sft"]["per_device_batch"] == 32 and plan["shrinking"]["rows_per_step"] == 4096
    assert batch_plan(recipe, 1)["shrinking"]["per_device_batch"] == 512
    with pytest.raises(UsageError) as err:
        batch_plan(recipe, 3)
    assert str(err.value) == ("stages[0] (alignment).batch_size: the global batch 1024 does not divide over 3 processes; "
                              "use a multiple of 3 or another number of processes")


def test_sampler_shares_and_epoch_do_not_depend_on_the_world_size(memory_rows) -> None:
    from swv.data.sampler import MixtureSampler

    rows = memory_rows([70, 30], [1.0] * 100)
    whole = MixtureSampler(rows, 8, temperature_step=5.0, seed=1)
    parts = [MixtureSampler(rows, 8, temperature_step=5.0, seed=1, rank=r, world_size=3) for r in range(3)]
    its = [p.shares() for p in parts]
    seen = 0
    for full in whole.shares():
        got = [next(it) for it in its]
        assert sum((g.indices for g in got), []) == full.indices  # contiguous shares, in order
        assert all(g.global_rows == len(full.indices) and g.after == full.after for g in got)
        seen += len(full.indices)
        if full.epoch == 1:
            break
    assert seen - len(full.indices) == 100  # epoch 1 starts after sum(sizes) examples, on any world size
    assert whole.batches_per_epoch() == parts[0].batches_per_epoch() == 13


def test_output_dir_lock_names_the_holder_and_recovers_stale_locks(tmp_path: Path) -> None:
    from swv.core.errors import UsageError
    from swv.train.lock import LOCK_NAME, OutputDirLock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from swv.train.lock import OutputDirLock; "
         "OutputDirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        res = subprocess.run(one_process("--stage", "alignment", "stages.0.max_steps=1"), capture_output=True,
                             text=True, cwd=tmp_path, env=env(), timeout=TIMEOUT)
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and f"in use by another swv train (pid {holder.pid} on " in res.stderr
        with pytest.raises(UsageError, match=f"pid {holder.pid}"):
            OutputDirLock(tmp_path / "run").acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its pid is left in the file, the next run takes over
    lock = OutputDirLock(tmp_path / "run").acquire()
    assert lock.took_over == holder.pid
    lock.release()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released on exit
    with OutputDirLock(tmp_path / "run") as again:
        assert again.took_over is None
    # a stale lock file written by hand (dead pid on this host) is detected too
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run" / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with OutputDirLock(tmp_path / "run") as taken:
        assert taken.took_over == int(dead.stdout)
