"""Guard: the repository's folders never shadow real top-level packages."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_swv_maps_to_the_repository_folders() -> None:
    import swv
    import swv.adapters
    import swv.cli
    import swv.encoders

    assert Path(swv.__file__).resolve().parent == ROOT / "soundwave_core"
    assert Path(swv.adapters.__file__).resolve().parent == ROOT / "adapters"
    assert Path(swv.encoders.__file__).resolve().parent == ROOT / "encoders"
    assert Path(swv.cli.__file__).resolve().parent == ROOT / "cli"


def test_card_folders_are_not_importable_as_top_level_modules() -> None:
    # Run from the repository root, where a naive setup would import ./adapters.
    code = (
        "import importlib.util, json\n"
        "out = {}\n"
        "for name in ('adapters', 'encoders', 'backbones', 'plugins', 'cli', 'soundwave_core'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    out[name] = spec.origin if spec is not None else None\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    import json

    for name, origin in json.loads(res.stdout).items():
        assert origin is None or not str(origin).startswith(str(ROOT)), f"{name} resolves into the repo: {origin}"
    # and in this very test process (pytest --import-mode=importlib adds nothing to sys.path)
    spec = importlib.util.find_spec("adapters")
    assert spec is None or not str(spec.origin).startswith(str(ROOT))


def test_every_package_is_listed_in_pyproject() -> None:
    """Strict editable installs and wheels only contain the packages pyproject lists."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = data["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = tool["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            found.add(".".join((pkg, *init.parent.relative_to(base).parts)))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_readme_plugin_example_is_the_tested_plugin() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", readme, flags=re.S)
    plugin = ROOT / "tests" / "data" / "plugins" / "example_pool"
    for path in (plugin / "pyproject.toml", plugin / "src" / "swv_example_pool" / "plugin.py", plugin / "src" / "swv_example_pool" / "adapter.py"):
        assert path.read_text() in blocks, f"README's copy of {path.name} is out of date"
