"""Experiment trackers: any tracker accelerate supports, the resolved recipe as hyperparameters,
training and held-out losses and the task mixture, read back from tensorboard and mlflow files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swv.core.errors import UsageError
from swv.train.tracking import (
    check_trackers,
    flatten_hparams,
    numeric,
    supported_trackers,
)

STEPS = ["--stage", "alignment", "stages.0.max_steps=4", "stages.0.log_every=2", "stages.0.save_every=2"]


def test_tracker_names_are_checked_against_accelerate() -> None:
    assert {"tensorboard", "wandb", "mlflow", "trackio", "comet_ml"} <= set(supported_trackers())
    assert "all" not in supported_trackers()
    with pytest.raises(UsageError, match=r"unknown tracker 'tensorbord'; accelerate supports .*tensorboard"):
        check_trackers(["tensorbord"])
    missing = [name for name in ("aim", "clearml", "swanlab", "dvclive") if name in supported_trackers()]
    from accelerate.tracking import get_available_trackers

    installed = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    absent = next(name for name in missing if name not in installed)
    with pytest.raises(UsageError, match=f"tracker '{absent}' is not installed"):
        check_trackers([absent])
    assert check_trackers(sorted(installed)) == sorted(installed)


def test_flatten_hparams_gives_scalars() -> None:
    flat = flatten_hparams({"seed": 3, "model": {"adapters": [{"name": "a"}, {"name": "b", "k": [1, 2]}], "x": None},
                            "ok": True, "lr": 1e-4})
    assert flat == {"seed": 3, "model.adapters.0.name": "a", "model.adapters.1.name": "b", "model.adapters.1.k": "[1, 2]",
                    "model.x": "null", "ok": True, "lr": 1e-4}
    assert numeric({"loss": 1.5, "event": "mixture", "mixture": {"asr": 0.25}, "ok": True}, "s") == \
        {"s/loss": 1.5, "s/mixture/asr": 0.25}


def _train(tmp_path: Path, trackers: str, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    env.update(SWV_DISABLE_PLUGIN_AUTOLOAD="1", **extra_env)
    return subprocess.run([sys.executable, "-m", "swv.cli", "train", "--recipe", "tiny", "output_dir=run",
                           f"trackers={trackers}", *STEPS], capture_output=True, text=True, cwd=tmp_path, env=env)


def test_unknown_tracker_is_one_line_error(tmp_path: Path) -> None:
    res = _train(tmp_path, "[tensorboard, nope]", {})
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: trackers: unknown tracker 'nope'")
    assert "Traceback" not in res.stderr


def test_recipe_validate_checks_tracker_names(tmp_path: Path) -> None:
    from swv.recipes.loader import shipped_recipes

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {shipped_recipes()['tiny']}\ntrackers: [tensorboard, nope]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    res = subprocess.run([sys.executable, "-m", "swv.cli", "recipe", "validate", str(recipe)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert "unknown tracker 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_a_tracker_that_refuses_to_start_is_one_line_error(tmp_path: Path) -> None:
    """mlflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set: the run stops with one
    line naming the tracker, not the library's traceback."""
    pytest.importorskip("mlflow")
    env = {"MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "false"}
    res = _train(tmp_path, "[mlflow]", env)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trackers: could not start mlflow"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_tensorboard_and_mlflow_see_hparams_losses_held_out_and_mixture(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    uri = (tmp_path / "mlruns").as_uri()
    res = _train(tmp_path, "[tensorboard, mlflow]", {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert res.returncode == 0, res.stderr[-3000:]

    # mlflow (file store): every recipe field as a parameter, metrics with their steps
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this switch
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "run"]
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert params["stages.0.optimizer.lr"] == "0.003" and params["model.encoder.mode"] == "trim"
    assert params["seed"] == "0" and params["stages.0.data.eval_datasets"] == '["dev_asr"]'
    assert [m.step for m in client.get_metric_history(run.info.run_id, "alignment/ctc_loss")] == [2, 4]
    held_out = client.get_metric_history(run.info.run_id, "alignment/eval_ctc_loss")
    assert [m.step for m in held_out] == [2, 4] and all(m.value > 0 for m in held_out)
    mixture = client.get_metric_history(run.info.run_id, "alignment/mixture/asr")
    assert mixture and mixture[0].value == 1.0
    assert client.get_metric_history(run.info.run_id, "alignment/temperature")[0].value == 1.0

    # tensorboard: the same scalars, and the hyperparameters in the hparams plugin's session info
    events = sorted((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events and all((tmp_path / "run" / "tensorboard") in e.parents for e in events)  # the documented place
    scalars, hparams = {}, {}
    for event_file in events:
        acc = EventAccumulator(str(event_file.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for event in EventFileLoader(str(event_file)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    hparams = dict(data.session_start_info.hparams.items())
    assert [s for s, _ in scalars["alignment/ctc_loss"]] == [2, 4]
    assert [s for s, _ in scalars["alignment/eval_ctc_loss"]] == [2, 4]
    assert [v for _, v in scalars["alignment/eval_ctc_loss"]] == pytest.approx([m.value for m in held_out], rel=1e-6)
    assert scalars["alignment/mixture/asr"][0][1] == 1.0
    assert hparams["stages.0.optimizer.lr"].number_value == pytest.approx(0.003)
    assert hparams["model.encoder.mode"].string_value == "trim"
