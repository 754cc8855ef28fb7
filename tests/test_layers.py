"""Layering: library code (everything under the ``swv`` import root but ``swv.cli``) never imports the CLI."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def _package_files(name: str) -> set[Path]:
    return {f for p in importlib.import_module(name).__path__ for f in Path(p).rglob("*.py")}


def test_library_never_imports_the_cli() -> None:
    packages = ["swv", "swv.encoders", "swv.adapters", "swv.backbones", "swv.plugins"]
    files = sorted(set().union(*(_package_files(p) for p in packages)) - _package_files("swv.cli"))
    assert len(files) > 50
    offenders = [
        f"{path.name}: {name}"
        for path in files
        for name in _imports(ast.parse(path.read_text(encoding="utf-8")))
        if name == "swv.cli" or name.startswith("swv.cli.")
    ]
    assert not offenders, offenders
