"""Issue 25, items 2 and 5 (rest): a model directory whose config disagrees with its own weights
is refused before anything is allocated (the model built on the meta device, shapes compared with
the safetensors headers); chat templates render under a time and size budget; each refusal is
one line through the CLI (a traceback only with SWV_DEBUG=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swv.core.errors import InputError

#: Peak-memory growth allowed while a tampered model directory is refused (the huge config
#: would need gigabytes).
MAX_RSS_GROWTH_MB = 500


@pytest.fixture(scope="module")
def saved(model_config_factory, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny model (with a LoRA) saved with its encoder and backbone bundled, and its weights."""
    from swv.model.speechlm import SpeechLM

    torch.manual_seed(0)
    model = SpeechLM(model_config_factory())
    path = tmp_path_factory.mktemp("bundled") / "model"
    model.save_pretrained(path, bundle=True)
    return path, {k: v.detach().clone() for k, v in model.state_dict().items()}


def tampered(saved: tuple[Path, dict], tmp_path: Path, file: str, change) -> Path:
    model = tmp_path / "model"
    shutil.copytree(saved[0], model)
    for name in ([file, "config.json"] if file == "swv_config.json" else [file]):
        data = json.loads((model / name).read_text())
        change(data)
        (model / name).write_text(json.dumps(data))
    return model


TAMPERED = {
    "huge adapter FFN": ("swv_config.json", lambda c: c["adapters"][0].update(ffn_multiplier=3e5), "adapter 'alignment'"),
    "100000 encoder layers": ("encoder/config.json", lambda c: c.update(encoder_layers=100_000), "encoder 'whisper'"),
    "backbone width": ("backbone/config.json", lambda c: c.update(intermediate_size=96), "(96, 32)"),
    "huge LoRA rank": ("adapter_config.json", lambda c: c.update(r=300_000), "r is 300000"),
}

_CLI_PROBE = """
import json, resource, sys
import swv.model.speechlm  # torch and transformers imported before the baseline
from swv.cli.main import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"code": code, "grown_mb": grown}))
"""


def run_cli_probe(*args: object) -> tuple[int, float, str]:
    """``swv <args>`` in a fresh process: exit code, peak-memory growth (MB) during the command, stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SWV_DEBUG": "0"}
    proc = subprocess.run([sys.executable, "-c", _CLI_PROBE, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], result["grown_mb"], proc.stderr


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_config_refused_before_allocating(saved, clip, tmp_path: Path, case: str, one_error) -> None:
    file, change, named = TAMPERED[case]
    model = tampered(saved, tmp_path, file, change)
    code, grown_mb, err = run_cli_probe("infer", model, clip, "--max-new-tokens", 1)
    line = one_error(code, err)
    assert named in line, line
    assert grown_mb < MAX_RSS_GROWTH_MB, (grown_mb, line)


def test_width_change_names_parameter_and_both_shapes(saved, tmp_path: Path) -> None:
    from swv.model.speechlm import SpeechLM

    model = tampered(saved, tmp_path, "swv_config.json", lambda c: c["adapters"][0].update(stack=3))
    with pytest.raises(InputError) as info:
        SpeechLM.from_pretrained(model)
    message = str(info.value)
    assert "\n" not in message
    assert "adapter 'alignment'" in message and "adapters[0]" in message, message
    assert "(32, 96)" in message and "(32, 64)" in message, message


def test_config_larger_than_its_weights_refused_by_the_budget(saved, tmp_path: Path) -> None:
    """A random-init backbone asking for 100,000 layers has no weights to compare with: the
    parameter budget from the weight files' sizes stops the meta build."""
    from swv.model.speechlm import SpeechLM

    def huge(config: dict) -> None:
        config["backbone"].update(path=None, tokenizer="backbone", lora=None, random_init={
            "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 100_000,
            "num_attention_heads": 4})

    model = tampered(saved, tmp_path, "swv_config.json", huge)
    with pytest.raises(InputError, match="more than its .* bytes of weight files can hold"):
        SpeechLM.from_pretrained(model)


def test_valid_export_loads_identically(saved) -> None:
    from swv.model.speechlm import SpeechLM

    path, state = saved
    loaded = SpeechLM.from_pretrained(path).state_dict()
    assert loaded.keys() == state.keys()
    for key, tensor in state.items():
        assert loaded[key].device.type == "cpu", key
        assert torch.equal(loaded[key], tensor), key


def test_debug_shows_the_traceback(saved, clip, tmp_path: Path) -> None:
    file, change, _ = TAMPERED["backbone width"]
    model = tampered(saved, tmp_path, file, change)
    swv = Path(sys.executable).parent / "swv"
    proc = subprocess.run([str(swv), "infer", str(model), str(clip)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "SWV_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "(96, 32)" in proc.stderr, proc.stderr


# -- chat templates under a time and size budget ----------------------------------------------
LOOPING = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
HUGE = "{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from swv.assets import asset_path

    return AutoTokenizer.from_pretrained(str(asset_path("tiny_tokenizer")))


def test_render_matches_transformers(tokenizer) -> None:
    from swv.model.chat_render import render_chat

    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "<audio>\nhi"},
                {"role": "assistant", "content": "ok"}]
    for prompt in (False, True):
        ours = render_chat(tokenizer, messages, prompt, "t")
        assert ours == tokenizer.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)


@pytest.mark.parametrize(("template", "budget"), [
    (LOOPING, "s budget"), (HUGE, "character budget"), ("{{ 'x' * 1000000000 }}", "character budget"),
    ("{{ 7 ** 10000000000 }}", "MAX_POWER_BITS"),
])
def test_render_budget(tokenizer, template: str, budget: str) -> None:
    from swv.model.chat_render import render_chat

    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = template
    with pytest.raises(InputError, match=budget) as info:
        render_chat(tok, [{"role": "user", "content": "hi"}], True, "x.jinja", seconds=0.5, max_chars=10_000)
    assert "x.jinja" in str(info.value)


@pytest.mark.parametrize(("template", "budget"), [(LOOPING, "MAX_TEMPLATE_SECONDS"), (HUGE, "MAX_TEMPLATE_CHARS")])
def test_template_budget_through_the_cli(cli, saved, clip, tmp_path: Path, template: str, budget: str, one_error) -> None:
    model = tmp_path / "model"
    shutil.copytree(saved[0], model)
    template_file = model / "backbone" / "chat_template.jinja"  # the template prompts are built with
    template_file.write_text(template)
    line = one_error(*cli(["infer", model, clip, "--max-new-tokens", 1])[::2])
    assert budget in line and str(template_file) in line, line
