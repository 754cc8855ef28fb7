"""Code shape: no library function over 60 lines (``def`` to its last line, docstring included),
so each unit of the library can be read in one screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("soundwave_core", "encoders", "adapters", "backbones", "plugins", "cli")
MAX_LINES = 60


def _long_functions(root: Path) -> list[str]:
    found = []
    for folder in LIBRARY:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_library_function_is_over_60_lines() -> None:
    assert _long_functions(ROOT) == []


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "soundwave_core").mkdir()
    (tmp_path / "soundwave_core" / "m.py").write_text(f"def f():\n{body}\n", encoding="utf-8")
    assert _long_functions(tmp_path) == [f"soundwave_core/m.py:1 f ({MAX_LINES + 1} lines)"]
