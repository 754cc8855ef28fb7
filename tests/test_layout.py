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
