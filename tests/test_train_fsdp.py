"""Sharded parameters (FSDP) export and checkpoint whole: 2 CPU processes over gloo (launched as
tests/test_train_distributed.py launches them) shard the tiny recipe's Stage II model with
FSDP2's ``fully_shard``, change every trainable weight, and write the stage's export through
``StageRunner.export``; it equals the export of the same model unsharded (what one process or DDP
writes). The trainable-weights checkpoint written from the shards loads back into a freshly
sharded model, whose export is the same again.

accelerate 1.16 does not run its own FSDP on the CPU (``distributed_type: FSDP`` takes effect only
on a GPU-like device; on the CPU the processes join a gloo group as MULTI_CPU, i.e. DDP), so a
training run under accelerate's FSDP is not possible here: the worker shards the model itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DDP_CONFIG = ROOT / "configs" / "ddp.yaml"
TIMEOUT = 420  # seconds for the launch; a hung gloo group fails the test instead of CI

WORKER = '''
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from swv.recipes.loader import load_recipe
from swv.registry.plugins import default_registry
from swv.train.checkpoint import TrainableWeightsHooks
from swv.train.runner import RunContext, StageRunner
from swv.train.stages import recipe_stages

out = Path(sys.argv[1])
acc = Accelerator(cpu=True)
assert acc.num_processes == 2, acc.num_processes


def runner(run: str) -> StageRunner:
    loaded = load_recipe("tiny", [f"output_dir={out / run}"], default_registry())
    stage = recipe_stages(loaded, default_registry())[1]  # shrinking: adapters, LoRA and backbone trained
    return StageRunner(RunContext(loaded, "test", "", out / run, acc), stage, None)


def change(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(1.5).add_(0.25)


def sharded(r: StageRunner) -> torch.nn.Module:
    model = r.prepare_model()
    mesh = init_device_mesh("cpu", (2,))
    for layer in model.modules():  # per layer, as accelerate's TRANSFORMER_BASED_WRAP (configs/fsdp.yaml)
        if type(layer).__name__ in model._no_split_modules:
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    return model


first = runner("run")
if acc.is_main_process:  # the reference: the same model, not sharded
    plain = first.unsharded_model()
    change(plain)
    plain.save_pretrained(out / "plain")
model = sharded(first)
change(model)
first.export(model, {"stage": "shrinking"})

hooks = TrainableWeightsHooks(acc)
ckpt = out / "ckpt"
if acc.is_main_process:
    ckpt.mkdir()
acc.wait_for_everyone()
hooks.save([model], [{}], str(ckpt))
acc.wait_for_everyone()
second = runner("resumed")
fresh = sharded(second)
hooks.load([fresh], str(ckpt))
second.export(fresh, {"stage": "shrinking"})
acc.wait_for_everyone()
acc.end_training()
'''


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("SWV_", "ACCELERATE_"))}
    out.update(SWV_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1")
    return out


def safetensors_files(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.relative_to(directory).as_posix(): load_file(str(p)) for p in sorted(directory.rglob("*.safetensors"))}


def assert_same_weights(got: Path, expected: Path) -> None:
    a, b = safetensors_files(got), safetensors_files(expected)
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], rtol=0, atol=0, msg=f"{name}: {key}")


def test_sharded_model_exports_and_checkpoints_whole(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CONFIG), str(script), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    export = tmp_path / "run" / "shrinking" / "export"
    assert_same_weights(export, tmp_path / "plain")
    # the checkpoint holds the whole trainable weights, not one process's slice
    trainable = load_file(str(tmp_path / "ckpt" / "trainable.safetensors"))
    exported_adapter = load_file(str(export / "adapters" / "alignment.safetensors"))
    assert {f"adapters.alignment.{k}" for k in exported_adapter} <= trainable.keys()
    for key, tensor in exported_adapter.items():
        assert torch.equal(trainable[f"adapters.alignment.{key}"], tensor), key
    assert_same_weights(tmp_path / "resumed" / "shrinking" / "export", export)


def test_fsdp_config_shards_each_encoder_and_llm_layer() -> None:
    """configs/fsdp.yaml's wrap policy finds the layer classes a SpeechLM declares."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry
    from swv.train.runner import build_model

    config = yaml.safe_load((ROOT / "configs" / "fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP"
    fsdp = config["fsdp_config"]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"], auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"], state_dict_type=fsdp["fsdp_state_dict_type"])
    model = build_model(load_recipe("tiny", [], default_registry()), None)
    plugin.set_auto_wrap_policy(model)
    assert sorted(plugin.transformer_cls_names_to_wrap) == ["LlamaDecoderLayer", "WhisperEncoderLayer"]
