"""Recipe composition, overrides, validation errors and the `swv recipe` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from swv.cli.main import app
from swv.core.errors import RecipeError
from swv.recipes.loader import load_recipe, merge, shipped_recipes
from swv.registry.plugins import load_plugins

runner = CliRunner()


@pytest.fixture(scope="module")
def registry():
    return load_plugins(autoload=False).registry


BASE = {
    "output_dir": "runs/base",
    "model": {
        "encoder": {"name": "whisper", "path": "enc"},
        "adapters": [{"name": "alignment"}, {"name": "shrinking"}],
        "backbone": {"name": "llama", "path": "llm", "lora": {"r": 8}},
    },
    "data": {"datasets": {"asr": {"manifest": "a.jsonl"}, "qa": {"manifest": "q.jsonl"}}},
    "stages": [
        {"name": "alignment", "kind": "alignment", "trainable": ["adapters.alignment"], "losses": {"ctc": 1.0},
         "optimizer": {"lr": 1e-4}, "batch_size": 4, "max_steps": 100, "data": {"datasets": ["asr"]}},
        {"name": "shrinking", "kind": "shrinking", "trainable": ["adapters.shrinking", "lora"], "losses": {"lm": 1.0, "ctc": 0.3},
         "optimizer": {"lr": 3e-5}, "batch_size": 2, "max_steps": 100, "data": {"datasets": ["asr", "qa"]}},
    ],
}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_recipes_validate(registry) -> None:
    names = set(shipped_recipes())
    assert {"soundwave", "soundwave-qwen2", "conv4-baseline", "qformer-baseline"} <= names
    for name in names:
        loaded = load_recipe(name, [], registry)
        assert loaded.recipe.stages
    sw = load_recipe("soundwave", [], registry).recipe
    assert [s.batch_size for s in sw.stages] == [1024, 512, 256]  # table 13 per GPU x 32 GPUs (test_paper_recipe.py)
    assert [s.optimizer.lr for s in sw.stages] == [1e-4, 3e-5, 3e-5]
    assert [s.grad_accum for s in sw.stages] == [8, 8, 4]
    assert [s.max_steps for s in sw.stages] == [6000, 6000, 4000]
    assert sw.stages[1].losses == {"lm": 1.0, "ctc": 0.3}
    assert sw.stages[1].data.mixture.temperature == 1.0 and sw.stages[1].data.mixture.temperature_step == 5.0
    conv = load_recipe("conv4-baseline", [], registry).recipe
    assert conv.stages[1].data == sw.stages[2].data  # the ablation fine-tunes on the same SFT mixture
    qformer = load_recipe("qformer-baseline", [], registry).recipe
    assert [a.name for a in qformer.model.adapters] == ["qformer"] and qformer.stages[1].data == sw.stages[2].data
    lora = sw.model.backbone.args()["lora"]
    assert lora["r"] == 64 and lora["alpha"] == 16 and lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    qwen = load_recipe("soundwave-qwen2", [], registry).recipe
    assert qwen.model.backbone.name == "qwen2" and qwen.stages == sw.stages


def test_extends_merges_maps_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = {
        "extends": "base.yaml",
        "output_dir": "runs/child",
        "model": {"backbone": {"lora": {"alpha": 4}}, "adapters": [{"name": "conv", "factor": 3}]},
    }
    loaded = load_recipe(write(tmp_path / "child.yaml", child))
    model = loaded.recipe.model
    assert model.backbone.args() == {"path": "llm", "lora": {"r": 8, "alpha": 4}}
    assert [a.name for a in model.adapters] == ["conv"]
    assert loaded.recipe.output_dir == "runs/child"
    assert merge({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": {"d": 2}}) == {"a": [3], "b": {"c": 1, "d": 2}}


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(RecipeError, match="'extends' cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_overrides_apply_before_validation(tmp_path: Path, registry) -> None:
    path = write(tmp_path / "r.yaml", BASE)
    loaded = load_recipe(path, ["stages.0.max_steps=10", "model.backbone.lora.r=4", "stages.1.optimizer.lr=2e-5", "seed=7"], registry)
    assert loaded.recipe.stages[0].max_steps == 10
    assert loaded.model_components.backbone.config.lora.r == 4
    assert loaded.recipe.stages[1].optimizer.lr == 2e-5
    assert loaded.recipe.seed == 7
    # YAML 1.1 reads an unquoted ``no`` as false: precision=no still means no mixed precision
    assert load_recipe(path, ["precision=no"], registry).recipe.precision == "no"
    assert load_recipe(path, ["precision=bf16"], registry).recipe.precision == "bf16"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.0.max_step=10", "r.yaml: stages[0].max_step: unknown field (from override 'stages.0.max_step=10')"),
        ("model.backbone.lora.rank=4", "r.yaml: model.backbone.lora.rank: unknown field (from override 'model.backbone.lora.rank=4')"),
        ("stages.5.max_steps=1", "index 5 out of range (list has 2 items)"),
        ("stages.x.max_steps=1", "stages: no item named 'x'; use an index (0-1) or one of the names: "),
        ("output_dir.x=1", "output_dir holds a str, not a mapping or list"),
        ("seed.x=1", "seed: Input should be a valid integer (from override 'seed.x=1')"),
        ("novalue", "expected key.path=value"),
    ],
)
def test_override_typos_are_errors(tmp_path: Path, registry, override: str, message: str) -> None:
    path = write(tmp_path / "r.yaml", BASE)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [override], registry)
    assert message in str(info.value)


def test_validation_errors_name_file_and_dotted_path(tmp_path: Path, registry) -> None:
    bad = {**BASE, "stages": [dict(BASE["stages"][0]), {**BASE["stages"][1], "optimizer": {"lr": -1}}]}
    path = write(tmp_path / "bad.yaml", bad)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [], registry)
    assert str(info.value) == f"{path}: stages[1].optimizer.lr: Input should be greater than 0 (got -1)"

    unknown = {**BASE, "model": {**BASE["model"], "adapters": [{"name": "alignmnt"}]}}
    path = write(tmp_path / "unknown.yaml", unknown)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, [], registry)
    text = str(info.value)
    assert "model.adapters[0].name: unknown adapter 'alignmnt' (did you mean 'alignment'?)" in text
    assert "registered adapters: alignment, conv, qformer, shrinking, stack" in text

    missing_ds = {**BASE, "stages": [{**BASE["stages"][0], "data": {"datasets": ["nope"]}}]}
    with pytest.raises(RecipeError, match="dataset 'nope' is not defined under data.datasets"):
        load_recipe(write(tmp_path / "ds.yaml", missing_ds))

    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match=r"broken.yaml:\d+:\d+: invalid YAML"):
        load_recipe(tmp_path / "broken.yaml")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="did you mean 'soundwave'"):
        load_recipe("soundwav")


def test_recipe_cli_ls_show_cp_validate(tmp_path: Path) -> None:
    res = runner.invoke(app, ["recipe", "ls"])
    assert res.exit_code == 0 and "soundwave " in res.stdout and "conv4-baseline" in res.stdout

    res = runner.invoke(app, ["recipe", "show", "soundwave", "stages.0.max_steps=12"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.stdout)
    assert shown["stages"][0]["max_steps"] == 12
    assert shown["model"]["adapters"][1] == {"name": "shrinking", **shown["model"]["adapters"][1]}
    assert shown["model"]["adapters"][0]["compat"] == "paper"  # component defaults are filled in
    assert shown["stages"][0]["schedule"]["warmup_steps"] == 200

    res = runner.invoke(app, ["recipe", "cp", "soundwave", str(tmp_path)])
    assert res.exit_code == 0
    copied = tmp_path / "soundwave.yaml"
    assert copied.read_text() == shipped_recipes()["soundwave"].read_text()
    res = runner.invoke(app, ["recipe", "cp", "soundwave", str(copied)])
    assert res.exit_code != 0

    res = runner.invoke(app, ["recipe", "validate", "soundwave", str(copied)])
    assert res.exit_code == 0 and res.stdout.count("ok: ") == 2
    bad = write(tmp_path / "bad.yaml", {**BASE, "seed": "x"})
    res = runner.invoke(app, ["recipe", "validate", "soundwave", str(bad)])
    assert res.exit_code == 2
    assert "bad.yaml: seed: Input should be a valid integer" in res.output


def test_cli_errors_are_one_line_with_exit_code(tmp_path: Path, capsys) -> None:
    from swv.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["recipe", "show", str(tmp_path / "nope.yaml")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "recipe file not found" in err
