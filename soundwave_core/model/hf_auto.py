"""swv models in transformers' Auto classes and ``transformers.pipeline``.

``import swv`` calls :func:`install_hooks`: post-import hooks (wrapt) that import the modules
registering swv with transformers as soon as transformers is imported (at once if it already
is), so that importing swv itself stays free of torch and transformers:

* when ``transformers`` is imported, :mod:`swv.model.speechlm`, which registers (at its end)
  :class:`SpeechLMConfig` with ``AutoConfig`` (the ``model_type`` ``swv_speechlm`` of an export's
  ``config.json``) and :class:`SpeechLM` with ``AutoModel``, so that
  ``AutoModel.from_pretrained(export_dir)`` works without ``trust_remote_code`` (no code is
  read from the model directory), and :class:`~swv.model.processor.SpeechLMProcessor` with
  ``AutoProcessor`` (``AutoProcessor.from_pretrained(export_dir)``);
* when ``transformers.pipelines`` is imported, :mod:`swv.infer.hf_pipeline`, which registers the
  ``audio-text-to-text`` task.

The hooks only import those modules; the modules register themselves once fully executed, so a
hook that fires while one of them is still being imported (it is the one importing
transformers) is harmless. A hook that fires while another swv module that the registering
module needs is still being imported (``import swv.model.processor`` as the very first import,
say) cannot import it yet: it leaves the registration to the registering module's own import,
which then happens on first use of :class:`SpeechLM`.

Without ``import swv``, transformers does not know ``model_type`` ``swv_speechlm``
(``KeyError: 'swv_speechlm'`` from ``AutoModel.from_pretrained``): every export's model card says
so (:mod:`swv.model.card`). transformers' only other route to a model type it does not ship,
``auto_map`` with ``trust_remote_code=True``, runs Python code from the model directory, which
swv never asks for.

:func:`peft_causal_lm` loads an export's LLM with its LoRA as plain transformers and PEFT
objects from any working directory (PEFT's ``AutoPeftModelForCausalLM`` resolves the recorded
base model ``backbone`` against the current directory).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import wrapt

from swv.core.errors import InputError
from swv.core.hub import HUB_ID, resolve_model

if TYPE_CHECKING:
    from peft import PeftModel

#: The transformers pipeline task swv registers.
PIPELINE_TASK = "audio-text-to-text"
#: module whose import triggers the registration -> module that registers
_REGISTERING = {"transformers": "swv.model.speechlm", "transformers.pipelines": "swv.infer.hf_pipeline"}


def _import_registering_module(module: ModuleType) -> None:
    try:
        importlib.import_module(_REGISTERING[module.__name__])
    except ImportError as exc:
        # transformers was imported from inside a module the registering module imports
        if "partially initialized module 'swv." not in str(exc):
            raise


def install_hooks() -> None:
    """Run the registrations when (or now, if already) transformers is imported."""
    for trigger in _REGISTERING:
        wrapt.register_post_import_hook(_import_registering_module, trigger)


def _base_model(directory: Path, adapter_config: dict[str, Any]) -> tuple[str, str | None]:
    """The base model an export's ``adapter_config.json`` records and its revision: a relative
    path (``backbone``, the bundled copy) resolved inside the export, never against the current
    directory; an absolute path or a Hub id as recorded."""
    config_file = directory / "adapter_config.json"
    base = adapter_config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise InputError(f"{config_file}: base_model_name_or_path: expected the base model's path or Hub id, got {base!r}")
    if os.path.isabs(base) or base.startswith("~"):
        return os.path.expanduser(base), adapter_config.get("revision")
    root, target = directory.resolve(), (directory / base).resolve()
    if target.is_dir() and root in target.parents:
        return str(target), None
    if "/" in base and HUB_ID.match(base) and ".." not in base:
        return base, adapter_config.get("revision")
    raise InputError(f"{config_file}: base_model_name_or_path: {base!r} is neither a directory inside the export nor "
                     "a Hub id (org/name)")


def peft_causal_lm(source: str | os.PathLike[str], *, revision: str | None = None, is_trainable: bool = False,
                   **model_kwargs: Any) -> PeftModel:
    """An export's LLM with its LoRA as plain transformers + PEFT objects (a
    ``peft.PeftModelForCausalLM``), from any working directory: what
    ``AutoPeftModelForCausalLM.from_pretrained(source)`` gives when run inside the export, the
    recorded base model (:func:`_base_model`) loaded with ``AutoModelForCausalLM.from_pretrained``
    (``model_kwargs``: ``dtype``, ``device_map``, ...; safetensors weights, no code) and its
    embeddings grown to the export's tokenizer as PEFT does. ``source``: the export directory or
    its Hub id at ``revision``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swv.backbones.lora_io import read_adapter_config

    directory = resolve_model(source, revision)
    base_path, base_revision = _base_model(directory, read_adapter_config(directory))
    base = AutoModelForCausalLM.from_pretrained(base_path, revision=base_revision, **model_kwargs)
    vocabulary = len(AutoTokenizer.from_pretrained(str(directory)))
    if vocabulary > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(vocabulary)
    return PeftModel.from_pretrained(base, str(directory), is_trainable=is_trainable)
