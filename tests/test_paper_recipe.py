"""The `soundwave` recipe against the paper's numbers (soundwave-paper.txt): table 13's batch read
per GPU on the paper's 32 GPUs, the epochs each stage then sees, Stage II's temperature schedule,
the fewer-GPU override its comments give, and the shrinking dropout of `compat: released`
(the importer's config and the model it loads: tests/test_import_export.py)."""

from __future__ import annotations

import math
import re

import pytest

from swv.adapters.shrinking import ShrinkingConfig
from swv.nn.context import BackboneInfo
from swv.recipes.loader import load_recipe, shipped_recipes
from swv.registry.plugins import load_plugins
from swv.train.train_recipe import batch_plan

#: Section 4.1: training runs on 32 A800 GPUs.
PAPER_GPUS = 32
#: Table 13, stages I/II/III: "Batch" (per GPU in swv's reading) and "Accumulation steps".
PAPER_BATCH = (32, 16, 8)
PAPER_ACCUM = (8, 8, 4)
#: Section 4.1: 6000, 6000 and "around 4000" steps.
PAPER_STEPS = (6000, 6000, 4000)
#: Rows per stage: table 9's sum (Stage I); table 2's tasks QA 78k + ASR 3012k + ST 460k + sound
#: 25k (Stage II, the tasks the temperature mixes); table 11's sum (Stage III).
PAPER_ROWS = (3_036_435, 78_000 + 3_012_000 + 460_000 + 25_000, 2_651_493)


@pytest.fixture(scope="module")
def registry():
    return load_plugins(autoload=False).registry


@pytest.fixture(scope="module")
def soundwave(registry):
    return load_recipe("soundwave", [], registry).recipe


@pytest.mark.parametrize("name", ["soundwave", "soundwave-qwen2"])
def test_global_batch_is_the_papers_per_gpu_batch_on_32_gpus(registry, name: str) -> None:
    recipe = load_recipe(name, [], registry).recipe
    assert [s.batch_size for s in recipe.stages] == [PAPER_GPUS * b for b in PAPER_BATCH]
    assert [s.grad_accum for s in recipe.stages] == list(PAPER_ACCUM)
    assert [s.max_steps for s in recipe.stages] == list(PAPER_STEPS)
    plan = batch_plan(recipe, PAPER_GPUS)  # on the paper's 32 GPUs each takes table 13's batch
    assert [plan[s.name]["per_device_batch"] for s in recipe.stages] == list(PAPER_BATCH)


def test_ablation_baselines_train_with_the_soundwave_batches(registry, soundwave) -> None:
    for name in ("conv4-baseline", "qformer-baseline"):
        stages = load_recipe(name, [], registry).recipe.stages
        assert [(s.batch_size, s.grad_accum, s.max_steps) for s in stages] == [
            (s.batch_size, s.grad_accum, s.max_steps) for s in soundwave.stages[1:]
        ]


def stage_epochs(stage, rows: int) -> float:
    """Epochs (Σn rows drawn, the sampler's unit) a stage sees over its steps."""
    return stage.max_steps * stage.batch_size * stage.grad_accum / rows


def test_epochs_per_stage_and_stage_two_temperature(soundwave) -> None:
    epochs = [stage_epochs(s, rows) for s, rows in zip(soundwave.stages, PAPER_ROWS, strict=True)]
    assert epochs == [pytest.approx(16.2, abs=0.1), pytest.approx(6.9, abs=0.1), pytest.approx(1.54, abs=0.05)]
    mixture = soundwave.stages[1].data.mixture
    # T = 1 at the start, +5 per epoch (section 4.1); the last, partial epoch is epoch 6
    assert mixture.temperature == 1.0 and mixture.temperature_step == 5.0
    assert mixture.temperature + mixture.temperature_step * math.floor(epochs[1]) == 31.0


def documented_overrides() -> list[str]:
    """The `key=value` overrides of the recipe's fewer-GPU example (the `swv train` comment lines)."""
    text = shipped_recipes()["soundwave"].read_text()
    example = re.search(r"#\s+swv train --recipe soundwave (.*?\\\n#\s+.*?)\n", text)
    assert example, "soundwave.yaml lost its fewer-GPU `swv train` example"
    return re.findall(r"stages\.\d\.\w+=\d+", example.group(1))


def test_the_documented_eight_gpu_override_keeps_rows_per_step(registry, soundwave) -> None:
    overrides = documented_overrides()
    assert len(overrides) == 6
    eight = load_recipe("soundwave", overrides, registry).recipe
    plan, paper = batch_plan(eight, 8), batch_plan(soundwave, PAPER_GPUS)
    for stage in soundwave.stages:
        assert plan[stage.name]["rows_per_step"] == paper[stage.name]["rows_per_step"]
        assert plan[stage.name]["per_device_batch"] == paper[stage.name]["per_device_batch"]


def test_released_compat_defaults_the_shrinking_dropout_to_the_released_value(registry) -> None:
    assert ShrinkingConfig().dropout == 0.0
    assert ShrinkingConfig(compat="released").dropout == 0.1
    assert ShrinkingConfig.model_validate({"compat": "released", "dropout": 0.0}).dropout == 0.0
    assert ShrinkingConfig(compat="paper", dropout=0.2).dropout == 0.2
    with pytest.raises(ValueError, match="compat"):
        ShrinkingConfig.model_validate({"compat": "relased"})
    info = BackboneInfo(16, 2, 20, 19, 0)
    built = registry.build("adapter", {"name": "shrinking", "compat": "released"}, input_dim=16, backbone=info)
    assert built.cross_attn.dropout == 0.1 and built.config.dropout == 0.1

