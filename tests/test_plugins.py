"""Plugin discovery through real installed distributions, and failure isolation."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from swv.registry.hookspecs import hookimpl
from swv.registry.plugins import PluginWarning, load_plugins

DATA = Path(__file__).parent / "data" / "plugins"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory, plugin_installer) -> Path:
    """Install the two test distributions (one good, one broken) into a private site dir."""
    return plugin_installer(tmp_path_factory.mktemp("site"), str(DATA / "example_pool"), str(DATA / "broken_plugin"))


def swv(site: Path | None, *args: str, disable: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWV_")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    if disable:
        env["SWV_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "swv.cli", *args], env=env, capture_output=True, text=True, cwd=cwd)


def test_third_party_plugin_listed_with_distribution_and_broken_one_reported(plugin_site: Path) -> None:
    res = swv(plugin_site, "plugins", "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    plugin_line = next(line for line in lines if line.strip().startswith("example-pool ") and "swv-example-pool" in line)
    assert "swv-example-pool 0.3.1" in plugin_line and plugin_line.rstrip().endswith("ok")
    broken = next(line for line in lines if line.strip().startswith("broken "))
    assert "swv-broken-plugin 1.0.0" in broken and "broken: RuntimeError: this plugin is broken on purpose" in broken
    adapters = lines[lines.index("adapters:") + 1 : lines.index("backbones:")]
    names = [a.split()[0] for a in adapters]
    assert names == ["alignment", "conv", "example-pool", "qformer", "shrinking", "stack", "utterance"]
    assert any("[example-pool]" in a for a in adapters)
    assert "warning: plugin 'broken' from swv-broken-plugin 1.0.0 is broken and was skipped" in res.stderr


def test_autoload_can_be_disabled(plugin_site: Path) -> None:
    res = swv(plugin_site, "plugins", "list", disable=True)
    assert res.returncode == 0
    assert "example-pool" not in res.stdout and "broken" not in res.stdout
    assert "third-party discovery disabled" in res.stdout


RECIPE = """
output_dir: runs/x
model:
  encoder: {{name: whisper, path: openai/whisper-large-v3}}
  adapters: [{{name: example-pool, factor: {factor}}}]
  backbone: {{name: llama, path: meta-llama/Llama-3.1-8B-Instruct}}
data:
  datasets:
    asr: {{manifest: train.jsonl}}
stages:
  - name: sft
    kind: sft
    trainable: ["adapters.*"]
    losses: {{lm: 1.0}}
    optimizer: {{lr: 1.0e-4}}
    batch_size: 2
    max_steps: 1
    data: {{datasets: [asr]}}
"""


def test_recipe_naming_plugin_adapter_validates(plugin_site: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(RECIPE.format(factor=3))
    res = swv(plugin_site, "recipe", "validate", str(good))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"ok: {good}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.format(factor=0))
    res = swv(plugin_site, "recipe", "validate", str(bad))
    assert res.returncode == 2
    assert f"{bad}: model.adapters[0].factor: Input should be greater than or equal to 1" in res.stderr
    # without the plugin the same recipe names an unknown adapter
    res = swv(plugin_site, "recipe", "validate", str(good), disable=True)
    assert res.returncode == 2 and "unknown adapter 'example-pool'" in res.stderr


def test_plugin_adapter_builds_and_runs(plugin_site: Path) -> None:
    code = (
        "import torch; from swv.registry.plugins import default_registry; from swv.nn.context import BackboneInfo;"
        "from swv.nn.state import AudioState;"
        "ad = default_registry().build('adapter', {'name': 'example-pool', 'factor': 2}, input_dim=4, backbone=BackboneInfo(8, 2, 10, 9, 0));"
        "out = ad(AudioState(torch.randn(2, 5, 4), torch.tensor([5, 3])));"
        "print(tuple(out.embeds.shape), out.lengths.tolist())"
    )
    env = dict(os.environ, PYTHONPATH=str(plugin_site))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(2, 3, 8) [3, 2]"


def _plugin(name: str, fn) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.swv_register_components = hookimpl(fn)  # type: ignore[attr-defined]
    return mod


def test_duplicate_name_is_an_error_and_rolled_back() -> None:
    def dup(registry):
        registry.register("adapter", "fresh", target="x:Y", config="x:Z")
        registry.register("adapter", "conv", target="x:Y", config="x:Z")

    with pytest.warns(PluginWarning, match="duplicate adapter name 'conv'"):
        plugins = load_plugins(autoload=False, extra=[_plugin("dup", dup)])
    assert [p.status for p in plugins.plugins] == ["ok", "broken"]
    assert "fresh" not in plugins.registry.names("adapter")
    assert plugins.registry.get("adapter", "conv").plugin == "swv"


def test_explicit_override_and_hook_exception() -> None:
    def override(registry):
        registry.register("adapter", "conv", target="x:Y", config="x:Z", override=True, description="mine")

    def boom(registry):
        raise ValueError("kaboom")

    with pytest.warns(PluginWarning, match="kaboom"):
        plugins = load_plugins(autoload=False, extra=[_plugin("over", override), _plugin("boom", boom)])
    spec = plugins.registry.get("adapter", "conv")
    assert spec.plugin == "over" and spec.overrides == "swv" and spec.description == "mine"
    assert plugins.plugins[-1].status == "broken" and "ValueError: kaboom" in (plugins.plugins[-1].error or "")


def test_new_component_kinds_can_be_added() -> None:
    def metric(registry):
        registry.add_kind("metric")
        registry.register("metric", "wer", target="x:Y", config="x:Z")

    plugins = load_plugins(autoload=False, extra=[_plugin("metrics", metric)])
    assert plugins.registry.names("metric") == ["wer"]
    assert "metric" in plugins.registry.kinds


def test_help_and_plugins_list_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from swv.cli.main import app\n"
        "for args in (['--help'], ['plugins', 'list'], ['recipe', 'ls']):\n"
        "    try:\n"
        "        app(args=args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'torchaudio', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
