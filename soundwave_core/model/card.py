"""The model card (``README.md``) of an export, rendered from its config.

What it says comes from the saved ``swv_config.json`` only: the encoder, adapter chain and
backbone (with their sources and revision pins), the system prompt, and the training record
(``SpeechLMConfig.training``: one entry per trained stage, appended by ``swv train`` at each
export: recipe, stage kind, steps, data sources and held-out metrics). Parts that are not known
(an untrained model, an imported checkpoint) are said to be unknown rather than left out.
"""

from __future__ import annotations

import json
from typing import Any

from swv.core.config import CONFIG_NAME
from swv.core.hub import HUB_ID
from swv.model.hf_auto import PIPELINE_TASK

#: The line that registers swv's model type with transformers (``KeyError: 'swv_speechlm'`` without it).
IMPORT_LINE = "import swv  # registers swv_speechlm with AutoConfig, AutoModel, AutoProcessor and the pipeline task"


def _source(component: dict[str, Any]) -> str:
    """``name`` and where its weights come from (path or hub id, revision, random init)."""
    name = component.get("name", "?")
    if component.get("random_init") is not None:
        return f"`{name}` (random initialisation)"
    path = component.get("path") or component.get("gguf_file")
    if path is None:
        return f"`{name}`"
    pin = f" at revision `{component['revision']}`" if component.get("revision") else ""
    return f"`{name}` from `{path}`{pin}"


def _front_matter(config: dict[str, Any]) -> str:
    """Hugging Face model-card metadata (YAML front matter)."""
    lines = ["---", "library_name: swv", f"pipeline_tag: {PIPELINE_TASK}", "tags:", "- swv", "- speech", "- audio"]
    backbone = config.get("backbone") or {}
    base = backbone.get("path") or ""
    if HUB_ID.match(base) and "backbone" not in (config.get("bundled") or []):
        lines.append(f"base_model: {json.dumps(base)}")
    lines.append("---")
    return "\n".join(lines)


def _stage_section(training: list[dict[str, Any]]) -> list[str]:
    if not training:
        return ["## Training", "", "Not recorded: this model was not trained by `swv train` (or was imported)."]
    out = ["## Training", "", "| stage | kind | recipe | steps | data | held-out metrics |",
           "| --- | --- | --- | --- | --- | --- |"]
    for record in training:
        data = ", ".join(f"`{name}` ({source})" for name, source in (record.get("datasets") or {}).items()) or "-"
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (record.get("metrics") or {}).items()) or "not measured"
        out.append(
            f"| {record.get('stage', '?')} | {record.get('kind', '?')} | {record.get('recipe') or '-'} | "
            f"{record.get('steps', '?')} | {data} | {metrics} |"
        )
    return out


def _lora_text(lora: dict[str, Any] | None) -> str:
    if not lora:
        return "none (or merged into `backbone/`)"
    return (f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')} on {', '.join(lora.get('target_modules') or [])} "
            "(PEFT format: `adapter_config.json`, `adapter_model.safetensors`)")


def _components_section(config: dict[str, Any]) -> list[str]:
    """The encoder, adapters, backbone (with its LoRA), library versions and system prompt."""
    encoder = config.get("encoder") or {}
    backbone = config.get("backbone") or {}
    adapters = [a.get("name", "?") for a in config.get("adapters") or []]
    bundled = config.get("bundled") or []
    system = config.get("system_prompt") or ""
    versions = ", ".join(f"{k} {v}" for k, v in sorted((config.get("versions") or {}).items())) or "unknown"
    return [
        "## Components",
        "",
        f"- Audio encoder: {_source(encoder)}{' (bundled in `encoder/`)' if 'encoder' in bundled else ''}",
        f"- Adapters: {' -> '.join(f'`{a}`' for a in adapters)} (`adapters/<name>.safetensors`)",
        f"- LLM backbone: {_source(backbone)}{' (bundled in `backbone/`)' if 'backbone' in bundled else ''}",
        f"- Backbone adapter: {_lora_text(backbone.get('lora'))}",
        f"- Saved with: {versions}",
        "",
        "System prompt:" if system else "No system prompt.",
        *(["", "```text", system, "```"] if system else []),
    ]


def _loading_section() -> list[str]:
    """How to load the export with swv, through transformers and from the command line."""
    return [
        "## How to load it",
        "",
        "With swv installed; `MODEL` is this directory or its Hub id:",
        "",
        "```python",
        "from swv import Pipeline",
        "",
        'pipe = Pipeline.from_pretrained("MODEL")  # revision="..." pins a Hub commit',
        'print(pipe("clip.wav", prompt="Transcribe the speech."))',
        "```",
        "",
        "Through transformers: `import swv` first. It registers the model type `swv_speechlm` with transformers' "
        f"Auto classes and the `{PIPELINE_TASK}` pipeline task; without it transformers does not know the model "
        "type and `AutoModel.from_pretrained` fails (`KeyError: 'swv_speechlm'`, or a `ValueError` saying it does "
        "not recognize the architecture `swv_speechlm`). No `trust_remote_code`: no code is read from this directory.",
        "",
        "```python",
        f"{IMPORT_LINE}",
        "import transformers",
        "",
        'model = transformers.AutoModel.from_pretrained("path/to/MODEL")',
        f'pipe = transformers.pipeline("{PIPELINE_TASK}", model="path/to/MODEL")',
        'print(pipe("clip.wav", prompt="Transcribe the speech.")["generated_text"])',
        'answers = pipe(["a.wav", "b.wav"], batch_size=2, generate_kwargs={"max_new_tokens": 64})',
        "```",
        "",
        "From the command line: `swv infer MODEL clip.wav` (add `--revision REV` for a Hub id).",
        "",
        f"The configuration is `{CONFIG_NAME}` (also `config.json`, for transformers).",
    ]


def _peft_section(backbone: dict[str, Any], bundled: list[str]) -> list[str]:
    """How to load the LLM with its LoRA through plain PEFT, from any working directory."""
    if "backbone" not in bundled:
        base = backbone.get("path")
        pin = f', revision="{backbone["revision"]}"' if backbone.get("revision") else ""
        return [
            "", f"The LLM with its LoRA alone loads with plain PEFT; the adapter records its base model as `{base}`.",
            *_code(f'base = AutoModelForCausalLM.from_pretrained("{base}"{pin})'),
            "", "`AutoPeftModelForCausalLM.from_pretrained(\"path/to/MODEL\")` works as well, and so does "
            "`swv.model.hf_auto.peft_causal_lm`:", *_code(),
        ]
    return [
        "", "The LLM with its LoRA alone loads as plain transformers + PEFT objects, from any working directory:",
        *_code(),
        "", "or without swv, in two steps:",
        *_code('base = AutoModelForCausalLM.from_pretrained("path/to/MODEL/backbone")'),
        "", "The adapter records its base model as `backbone`, relative to this directory, so that the directory can "
        "be moved or uploaded as it is. PEFT's `AutoPeftModelForCausalLM.from_pretrained(\"path/to/MODEL\")` hands "
        "that path unchanged to transformers, which resolves it against the current directory: it works only when "
        "run inside this directory (elsewhere it looks for a Hub repository named `backbone`). PEFT has no setting "
        "for a base model relative to the adapter, and an absolute path would break when the directory moves.",
    ]


def _code(base_line: str | None = None) -> list[str]:
    """A Python block: ``peft_causal_lm`` (no ``base_line``), or ``base_line`` and ``PeftModel``."""
    if base_line is None:
        body = ["from swv.model.hf_auto import peft_causal_lm", "",
                'llm = peft_causal_lm("path/to/MODEL")  # a peft.PeftModelForCausalLM']
    else:
        body = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM", "", base_line,
                'llm = PeftModel.from_pretrained(base, "path/to/MODEL")']
    return ["", "```python", *body, "```"]


def render_model_card(config: dict[str, Any]) -> str:
    """The ``README.md`` text of an export whose ``swv_config.json`` holds ``config``."""
    backbone = config.get("backbone") or {}
    lines = [
        _front_matter(config),
        "",
        "# swv speech language model",
        "",
        "A speech LLM in the Soundwave style, built with swv: an audio encoder, "
        "an adapter chain that aligns and shrinks its frames into the LLM's embedding space, and a causal LLM "
        "that answers instructions about the audio.",
        "",
        *_components_section(config),
        "",
        *_stage_section(config.get("training") or []),
        "",
        *_loading_section(),
    ]
    if backbone.get("lora"):
        lines += _peft_section(backbone, config.get("bundled") or [])
    return "\n".join(lines) + "\n"
