"""Each list of names is defined once: the tasks (swv.model.defaults.TASKS), the eval tasks
(swv.eval.evaluation.EVAL_TASKS), the text normalisers (swv.eval.metrics.NORMALIZE_MODES), the
SFT formats (swv.dataprep.sft.FORMATS); every other module imports it instead of spelling it out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from swv.dataprep.sft import FORMATS, TEMPLATES
from swv.eval.evaluation import EVAL_TASKS
from swv.eval.metrics import NORMALIZE_MODES
from swv.model.defaults import TASKS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("soundwave_core", "cli", "plugins", "encoders", "adapters", "backbones")
           for p in sorted((ROOT / d).rglob("*.py"))]


def spelled_lists(tree: ast.AST) -> list[tuple[int, set[str]]]:
    """``(line, strings)`` of every tuple, list or set literal (``Literal[...]`` included) of strings."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
            if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                out.append((node.lineno, {e.value for e in node.elts}))  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize(("names", "home"), [
    (EVAL_TASKS, "soundwave_core/eval/evaluation.py"),
    (NORMALIZE_MODES, "soundwave_core/eval/metrics.py"),
    (FORMATS, "soundwave_core/dataprep/sft.py"),
    (TASKS[2:], "soundwave_core/model/defaults.py"),
])
def test_each_list_is_spelled_out_in_one_module(names: tuple[str, ...], home: str) -> None:
    wanted = set(names)
    found = [f"{path.relative_to(ROOT)}:{line}" for path in SOURCES
             for line, strings in spelled_lists(ast.parse(path.read_text(encoding="utf-8")))
             if len(strings & wanted) >= min(3, len(wanted))]
    assert [where.rsplit(":", 1)[0] for where in found] in ([home], []), f"{sorted(names)} spelled out in {found}"


def test_spelled_lists_are_found() -> None:
    tree = ast.parse('A = Literal["english", "basic", "none"]\nB = ("x", 1)\n')
    assert spelled_lists(tree) == [(1, {"english", "basic", "none"})]


def test_sft_wordings_are_for_known_tasks() -> None:
    assert set(TEMPLATES) <= set(TASKS), set(TEMPLATES) - set(TASKS)
