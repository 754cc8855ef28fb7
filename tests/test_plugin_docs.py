"""docs/plugins.md and the base classes name everything swv's core reads from a component.

Each base class declares ``CORE_MEMBERS`` (what the core reads or calls) and ``CONFIG_FIELDS``
(config fields the core reads or sets when a component's config has them). This test finds, by
AST over the core (``soundwave_core/`` and ``cli/``), every attribute read on an encoder, adapter
or backbone and every config field read on their configs, and fails when one is not declared,
when a declared member is missing from its base class, or when the doc does not name it.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import pytest
from torch import nn

from swv.adapters.base import Adapter
from swv.backbones.base import Backbone
from swv.encoders.base import Encoder
from swv.model.directory import PATH_FIELDS
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState
from swv.recipes.schema import ComponentRef
from swv.registry.components import Component

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
BASES = {"encoder": Encoder, "adapter": Adapter, "backbone": Backbone}
#: What an expression named ``encoder``/``backbone``/``adapter`` may also be: a module's own
#: members, a recipe's component reference, a resolved component, or its stored dict.
NOT_COMPONENT_MEMBERS = set(dir(nn.Module)) | set(dir(Component)) | set(dir(ComponentRef)) | set(dir(dict))
#: Expressions holding a component's config as a dict (any kind); ``name`` (the registered name)
#: is in every one.
ANY_CONFIG = {"component", "cfg"}


def _name(node: ast.AST) -> str | None:
    """The last identifier of ``x``, ``a.b.x`` (what the value is called)."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _loaded_class_kind(node: ast.AST) -> str | None:
    """``registry.get("adapter", name).load_class()`` -> ``"adapter"``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_class":
        inner = node.func.value
        if isinstance(inner, ast.Call) and inner.args and isinstance(inner.args[0], ast.Constant):
            return inner.args[0].value if inner.args[0].value in BASES else None
    return None


def _config_fields(node: ast.AST) -> tuple[str | None, list[str]]:
    """``x.get("f")``, ``x["f"]``, ``x.replace(f=...)`` on a component config -> (name of x, [f])."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return _name(node.value), [node.slice.value]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner, method = _name(node.func.value), node.func.attr
        if method == "get" and node.args and isinstance(node.args[0], ast.Constant):
            return owner, [node.args[0].value]
        if method == "replace":
            return owner, [k.arg for k in node.keywords if k.arg]
    return None, []


def scan(sources: list[tuple[str, str]]) -> tuple[dict[tuple[str, str], set[str]], dict[tuple[str, str], set[str]]]:
    """``(kind, member) -> places`` read on components and ``(kind, field) -> places`` read on
    their configs (kind ``any`` for configs of any component)."""
    members: dict[tuple[str, str], set[str]] = defaultdict(set)
    fields: dict[tuple[str, str], set[str]] = defaultdict(set)
    for where, text in sources:
        for node in ast.walk(ast.parse(text)):
            place = f"{where}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute):
                kind = _name(node.value) if _name(node.value) in BASES else _loaded_class_kind(node.value)
                if kind is not None and node.attr not in NOT_COMPONENT_MEMBERS:
                    members[(kind, node.attr)].add(place)
            owner, names = _config_fields(node)
            if owner in BASES or owner in ANY_CONFIG:
                for field in (n for n in names if n.isidentifier() and n != "name"):
                    fields[(owner if owner in BASES else "any", field)].add(place)  # type: ignore[arg-type]
    return members, fields


def core_sources() -> list[tuple[str, str]]:
    files = [*sorted((ROOT / "soundwave_core").rglob("*.py")), *sorted((ROOT / "cli").rglob("*.py"))]
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in files]


def doc_section(cls: type) -> str:
    """The part of docs/plugins.md under the heading naming ``cls``."""
    match = re.search(rf"^## [^\n]*`{re.escape(cls.__module__)}\.{cls.__name__}`[^\n]*\n(.*?)(?=^## |\Z)", DOC,
                      re.S | re.M)
    assert match is not None, f"docs/plugins.md has no section for {cls.__module__}.{cls.__name__}"
    return match.group(1)


def named_in(text: str, name: str) -> bool:
    """Whether ``text`` names ``name`` in code quotes (`` `name` ``, `` `name: int` ``, `` `name(...)` ``)."""
    return re.search(rf"`(self\.)?{re.escape(name)}[`:(\[ ]", text) is not None


def declared(cls: type, name: str) -> bool:
    return hasattr(cls, name) or any(name in vars(c).get("__annotations__", {}) for c in cls.__mro__)


# -- the checks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def found() -> tuple[dict, dict]:
    return scan(core_sources())


def test_every_member_the_core_reads_is_declared(found) -> None:
    members, _ = found
    undeclared = {f"{kind}.{name}": sorted(places)[:2] for (kind, name), places in members.items()
                  if name not in BASES[kind].CORE_MEMBERS}
    assert not undeclared, f"add to the base class's CORE_MEMBERS and to docs/plugins.md: {undeclared}"
    # the scan sees the members it should (a scan that finds nothing would pass the check above)
    assert {("adapter", "aux_loss_names"), ("backbone", "factored_logits"), ("encoder", "hub_commit")} <= set(members)


@pytest.mark.parametrize("kind", list(BASES))
def test_declared_members_exist_on_the_base_class_and_in_the_doc(kind: str) -> None:
    cls = BASES[kind]
    section = doc_section(cls)
    assert set(cls.__abstractmethods__) <= set(cls.CORE_MEMBERS)
    assert [m for m in cls.CORE_MEMBERS if not declared(cls, m)] == []
    assert [m for m in cls.CORE_MEMBERS if not named_in(section, m)] == [], "missing from docs/plugins.md"


def test_every_config_field_the_core_reads_is_declared_and_documented(found) -> None:
    _, fields = found
    for field in PATH_FIELDS:
        fields[("any", field)].add("swv.model.directory.PATH_FIELDS")
    everywhere = set().union(*(set(cls.CONFIG_FIELDS) for cls in BASES.values()))
    undeclared = {f"{kind}.{name}": sorted(places)[:2] for (kind, name), places in fields.items()
                  if name not in (everywhere if kind == "any" else BASES[kind].CONFIG_FIELDS)}
    assert not undeclared, f"add to the base class's CONFIG_FIELDS and to docs/plugins.md: {undeclared}"
    assert {("backbone", "special_tokens"), ("any", "trust_remote_code")} <= set(fields)
    section = DOC.split("## Config fields the core reads", 1)[1].split("\n## ", 1)[0]
    assert sorted(f for f in everywhere if not named_in(section, f)) == []


@pytest.mark.parametrize("cls", [BackboneInfo, AudioState])
def test_shared_state_fields_are_documented(cls: type) -> None:
    assert [f.name for f in dataclasses.fields(cls) if not named_in(DOC, f.name)] == []


def test_the_scan_catches_an_undeclared_read() -> None:
    source = (
        "def f(model, registry):\n"
        "    model.encoder.brand_new_rate\n"
        "    next(model.encoder.parameters())\n"
        "    registry.get('adapter', 'x').load_class().secret_flag\n"
        "    model.backbone.replace(revision='abc')\n"
        "    component.get('weights_file')\n"
    )
    members, fields = scan([("x.py", source)])
    assert set(members) == {("encoder", "brand_new_rate"), ("adapter", "secret_flag")}
    assert set(fields) == {("backbone", "revision"), ("any", "weights_file")}
    assert not named_in(DOC, "brand_new_rate") and named_in("`hub_commit: str`", "hub_commit")
