"""Layering: import-linter's contracts in pyproject.toml hold (layers point one way, components are
independent, no import cycles between siblings), and every package of swv is in a layer.

import-linter resolves imports through the installed ``swv`` (so it sees through the package-dir
remap) and counts imports inside functions; only ``if TYPE_CHECKING:`` imports are exempt.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import swv

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold(tmp_path: Path) -> None:
    # In a subprocess run from elsewhere: import-linter puts its working directory on sys.path.
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_every_package_is_in_a_layer() -> None:
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers"]
    layered = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {f"swv.{m.name}" for m in pkgutil.iter_modules(swv.__path__) if m.ispkg}
    assert packages == layered, f"not in a layer: {sorted(packages - layered)}; gone: {sorted(layered - packages)}"


def test_no_loose_modules_at_the_root() -> None:
    loose = [m.name for m in pkgutil.iter_modules(swv.__path__) if not m.ispkg]
    assert loose == [], f"modules at the swv root belong in a domain package: {loose}"


def test_the_cli_is_the_top_layer() -> None:
    (layers,) = [c["layers"] for c in _contracts() if c["type"] == "layers"]
    assert layers[0] == "swv.cli"


def test_every_model_module_imports_first(tmp_path: Path) -> None:
    """Each module of swv.model imports as the first swv import of a process: transformers'
    post-import hook (swv.model.hf_auto) fires mid-way and must not hit a half-imported module."""
    names = [f"swv.model.{m.name}" for m in pkgutil.iter_modules(importlib.import_module("swv.model").__path__)]
    code = "import importlib, sys\nimportlib.import_module(sys.argv[1])\n"
    failed = {}
    for name in names:
        res = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, cwd=tmp_path)
        if res.returncode != 0:
            failed[name] = res.stderr.strip().splitlines()[-1:]
    assert len(names) >= 10 and not failed, failed
