"""CLI and training ergonomics: continuing a finished or killed run with more steps, naming what differs
in a changed recipe, ``--restart``, overrides in ``recipe validate``, stages addressed by name in
overrides, one help style (no ``<bool>``, upper-case argument placeholders) and ``--device auto``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from swv.core.errors import RecipeError, UsageError
from swv.recipes.loader import load_recipe
from swv.registry.plugins import default_registry

# Stage I of the tiny recipe, small and without held-out evaluation; no warmup, so that the
# cosine schedule's length shows in every rate.
SMALL = ["stages.0.batch_size=2", "stages.0.log_every=2", "stages.0.data.eval_datasets=[]",
         "stages.0.schedule.warmup_steps=0"]


def train_alignment(tmp_path: Path, *overrides: str, **options: bool) -> Path:
    from swv.train.train_recipe import train

    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}", *SMALL, *overrides], default_registry())
    return train(loaded, stage="alignment", **options)[0]


def stage_file(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "alignment" / "stage.json").read_text())


def metrics(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "run" / "alignment" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_finished_stage_continues_to_a_larger_max_steps(tmp_path: Path, capsys) -> None:
    train_alignment(tmp_path, "stages.0.max_steps=4")
    assert stage_file(tmp_path)["done"] is True and stage_file(tmp_path)["step"] == 4
    capsys.readouterr()

    export = train_alignment(tmp_path, "stages.0.max_steps=8")
    out = capsys.readouterr().out
    assert "stage alignment finished at step 4; its length changed" in out
    assert "resuming stage alignment from" in out and "step-0000004 (step 4)" in out
    assert "length changed from 4 to 8 steps" in out
    info = stage_file(tmp_path)
    assert info["done"] is True and info["step"] == 8 and info["length"]["max_steps"] == 8
    assert (tmp_path / "run" / "alignment" / "checkpoints" / "step-0000008").is_dir()
    assert json.loads((export / "swv_config.json").read_text())["training"][-1]["steps"] == 8
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    # the schedule is rebuilt for 8 steps: the rate after step 6 is the 8-step cosine's
    assert records[2]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 6 / 8)), rel=1e-6)

    train_alignment(tmp_path, "stages.0.max_steps=8", "stages.0.log_every=4", "data.num_workers=0")
    assert "stage alignment already done" in capsys.readouterr().out  # cadence changes keep the run

    with pytest.raises(UsageError, match="is at step 8, past the stage's new length of 6 steps"):
        train_alignment(tmp_path, "stages.0.max_steps=6")


class _Killed(Exception):
    """Stands for a kill in the middle of a stage (nothing after it runs: no final checkpoint,
    no export, ``stage.json`` still says not done)."""


def test_killed_stage_continues_to_a_new_max_steps(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from swv.train.runner import StageRunner

    original = StageRunner.train_step

    def killed_during_step_7(self, loop, max_norm):
        if loop.state.step == 7:  # checkpointed at step 4, step 6 logged, steps 5-7 not saved
            raise _Killed
        return original(self, loop, max_norm)

    monkeypatch.setattr(StageRunner, "train_step", killed_during_step_7)
    with pytest.raises(_Killed):
        train_alignment(tmp_path, "stages.0.max_steps=8", "stages.0.save_every=4")
    monkeypatch.setattr(StageRunner, "train_step", original)
    assert stage_file(tmp_path)["done"] is False and not (tmp_path / "run" / "alignment" / "export").exists()
    assert [r["step"] for r in metrics(tmp_path)] == [2, 4, 6]
    capsys.readouterr()

    export = train_alignment(tmp_path, "stages.0.max_steps=12", "stages.0.save_every=4")
    out = capsys.readouterr().out
    assert "finished at step" not in out  # not a finished stage reopened: an unfinished one resumed
    assert "resuming stage alignment from" in out and "step-0000004 (step 4)" in out
    assert "length changed from 8 to 12 steps" in out
    info = stage_file(tmp_path)
    assert info["done"] is True and info["step"] == 12 and info["total_steps"] == 12
    assert info["length"]["max_steps"] == 12
    assert json.loads((export / "swv_config.json").read_text())["training"][-1]["steps"] == 12
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]  # the killed run's step 6 is not logged twice
    # from step 5 on, the 12-step cosine, not the 8-step one the checkpoint was written with
    assert records[2]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 6 / 12)), rel=1e-6)

    with pytest.raises(UsageError, match="is at step 12, past the stage's new length of 10 steps"):
        train_alignment(tmp_path, "stages.0.max_steps=10", "stages.0.save_every=4")


def test_changed_learning_rate_is_named_and_restart_starts_over(tmp_path: Path, capsys) -> None:
    train_alignment(tmp_path, "stages.0.max_steps=4")
    with pytest.raises(UsageError) as info:
        train_alignment(tmp_path, "stages.0.max_steps=4", "stages.0.optimizer.lr=0.001")
    message = str(info.value)
    assert "holds checkpoints of a different recipe (stages.0.optimizer.lr: 0.003 -> 0.001)" in message
    assert "--restart" in message and "\n" not in message
    capsys.readouterr()

    with pytest.raises(UsageError, match="--resume or --restart"):
        train_alignment(tmp_path, "stages.0.optimizer.lr=0.001", resume=True, restart=True)
    train_alignment(tmp_path, "stages.0.max_steps=4", "stages.0.optimizer.lr=0.001", restart=True)
    out = capsys.readouterr().out
    assert f"removed {tmp_path / 'run' / 'alignment'} (--restart)" in out
    assert "resuming" not in out
    assert stage_file(tmp_path)["done"] is True and stage_file(tmp_path)["step"] == 4
    ckpts = sorted((tmp_path / "run" / "alignment" / "checkpoints").iterdir())
    assert "lr: 0.001" in (ckpts[-1] / "recipe.yaml").read_text()


def test_identity_diff_names_fields_and_ignores_continuable_settings() -> None:
    from swv.train.identity import identity_diff, recipe_hash

    old = load_recipe("tiny", [], default_registry()).resolved()
    new = load_recipe("tiny", ["stages.sft.max_steps=3", "stages.1.log_every=1", "data.num_workers=0", "output_dir=x"],
                      default_registry()).resolved()
    assert identity_diff(old, new) == [] and recipe_hash(old) == recipe_hash(new)
    changed = load_recipe("tiny", ["stages.0.optimizer.lr=0.001", "model.adapters.shrinking.dropout=0.1"],
                          default_registry()).resolved()
    diff = identity_diff(old, changed)
    assert "stages.0.optimizer.lr: 0.003 -> 0.001" in diff
    assert "model.adapters.1.dropout: 0.0 -> 0.1" in diff
    assert recipe_hash(old) != recipe_hash(changed)


def test_overrides_address_list_items_by_name() -> None:
    loaded = load_recipe("tiny", ["stages.shrinking.max_steps=7", "stages.alignment.optimizer.lr=0.01"], default_registry())
    assert loaded.recipe.stages[1].max_steps == 7 and loaded.recipe.stages[0].optimizer.lr == 0.01
    with pytest.raises(RecipeError) as info:
        load_recipe("tiny", ["stages.alignmnt.max_steps=1"], default_registry())
    assert "stages: no item named 'alignmnt'; use an index (0-2) or one of the names: alignment, shrinking, sft" in str(info.value)
    with pytest.raises(RecipeError, match=r"stages\[1\]\.max_steps: .*\(from override 'stages\.shrinking\.max_steps=0'\)"):
        load_recipe("tiny", ["stages.shrinking.max_steps=0"], default_registry())


def test_recipe_validate_takes_overrides(cli) -> None:
    code, out, err = cli(["recipe", "validate", "tiny", "stages.alignment.max_steps=10"])
    assert code == 0, err
    assert "ok: " in out
    code, out, err = cli(["recipe", "validate", "tiny", "stages.alignment.max_steps=0"])
    assert code == 2
    assert "stages[0].max_steps" in err and "(from override 'stages.alignment.max_steps=0')" in err
    code, out, err = cli(["recipe", "validate", "stages.0.max_steps=1"])
    assert code == 2 and "name at least one recipe" in err


def _commands(command, path: list[str]):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


def test_help_style_is_one_everywhere(cli) -> None:
    import typer
    from typer.core import TyperArgument

    from swv.cli.main import app

    seen = 0
    for path, command in _commands(typer.main.get_command(app), []):
        for param in command.params:
            if isinstance(param, TyperArgument):
                assert param.metavar and param.metavar == param.metavar.upper(), (path, param.name)
        code, out, err = cli([*path, "-h"])
        assert code == 0, (path, err)
        assert "<bool>" not in out, path
        seen += 1
    assert seen > 20
    code, out, _ = cli(["infer", "-h"])
    assert "{MODEL} [AUDIO]..." in out and "[default: auto]" in out
    code, out, _ = cli(["serve", "-h"])
    assert "{MODEL}" in out and "[default: auto]" in out
    for args in (["data", "filter", "-h"], ["data", "cache-features", "-h"]):
        code, out, _ = cli(args)
        assert code == 0 and "[default: auto]" in out, args


def test_device_auto_resolves_to_the_cpu_here() -> None:
    from swv.cli.options import RunOptions
    from swv.core.devices import resolve_device
    from swv.infer.pipeline import _parse_device

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is available")
    assert RunOptions().device == "auto"
    assert resolve_device("auto") == torch.device("cpu") and _parse_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="device: invalid device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize(("cuda", "mps", "want"), [
    (True, True, "cuda"),  # CUDA first, even with MPS there
    (True, False, "cuda"),
    (False, True, "mps"),  # then Apple's MPS
    (False, False, "cpu"),  # then the CPU
])
def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, want: str) -> None:
    from swv.core.devices import resolve_device
    from swv.infer.pipeline import _parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    for name in ("auto", "AUTO", " auto "):
        assert resolve_device(name) == torch.device(want), name
    assert _parse_device("auto") == torch.device(want)  # what infer, eval and serve resolve
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device is never replaced
