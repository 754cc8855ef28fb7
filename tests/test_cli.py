"""The CLI shell: env, help, usage errors, debug tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from typer.testing import CliRunner

from swv.cli.main import app

runner = CliRunner()


def test_env_reports_versions_and_plugins() -> None:
    res = runner.invoke(app, ["env"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    assert torch.__version__.split("+")[0] in lines["torch"]
    for name in ("python", "torchaudio", "transformers", "peft", "accelerate", "cuda", "plugins"):
        assert name in lines
    assert "swv (ok)" in lines["plugins"]


def test_help_lists_only_working_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for command in ("train", "infer", "eval", "recipe", "plugins", "data", "convert", "env"):
        assert command in res.stdout


def _run(*args: str, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SWV_DEBUG"}
    if debug:
        env["SWV_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], capture_output=True, text=True, env=env)


def test_usage_errors_and_debug_traceback(tmp_path) -> None:
    res = _run("nope")
    assert res.returncode == 2 and "No such command" in res.stderr
    missing = tmp_path / "missing.yaml"
    res = _run("recipe", "show", str(missing))
    assert res.returncode == 2 and res.stderr == f"error: {missing}: recipe file not found\n"
    res = _run("recipe", "show", str(missing), debug=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "RecipeError" in res.stderr
