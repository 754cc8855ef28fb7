"""A model directory on disk: its layout, writing one (:func:`save_model`) and reading one back
(:func:`read_saved_config`, :func:`load_weights`) under swv's trust policy.

Layout: ``swv_config.json`` and the same config as ``config.json`` (``model_type``
``swv_speechlm``, for transformers' Auto classes, see :mod:`swv.model.hf_auto`);
``adapters/<name>.safetensors``; the LoRA in PEFT format (``adapter_model.safetensors`` +
``adapter_config.json``, whose base model is the export's own backbone); the processor
(:class:`~swv.model.processor.SpeechLMProcessor`: the tokenizer and ``processor_config.json``);
``generation_config.json``; the model card ``README.md`` (:mod:`swv.model.card`);
``encoder.safetensors`` when the encoder was trained; full copies of the encoder and backbone in
``encoder/`` and ``backbone/`` when bundled.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from swv.core.config import CONFIG_NAME
from swv.core.errors import ComponentError, InputError, SwvError, UsageError, first_line
from swv.core.hub import HUB_ID, hub_weight_bytes, is_hub_id, resolve_model
from swv.core.io import atomic_directory, check_safetensors, safetensors_shapes
from swv.core.validation import describe_error, format_loc
from swv.model.card import render_model_card
from swv.model.processor import SpeechLMProcessor
from swv.nn.meta import check_shapes, meta_build, parameter_budget
from swv.registry.components import Component, Registry

if TYPE_CHECKING:
    from swv.model.speechlm import SpeechLM

ENCODER_WEIGHTS = "encoder.safetensors"
ADAPTER_DIR = "adapters"
BUNDLED_ENCODER_DIR = "encoder"
BUNDLED_BACKBONE_DIR = "backbone"
#: transformers' config file (the same content as ``swv_config.json``) and the model card.
HF_CONFIG_NAME = "config.json"
MODEL_CARD = "README.md"
#: PEFT's adapter config file, and its field naming the base model.
LORA_CONFIG_FILE = "adapter_config.json"
#: PEFT's LoRA weight files (one of them, beside :data:`LORA_CONFIG_FILE`).
LORA_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: Files whose contents are loaded as weights: each must lie inside the model directory.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".gguf", ".pt", ".pth"})


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def save_model(model: SpeechLM, target: Path, *, bundle: bool, merge_lora: bool, save_encoder: bool | None) -> Path:
    """Write ``model`` as a model directory ``target`` (see :meth:`SpeechLM.save_pretrained`),
    in a temporary directory renamed into place."""
    config = model.config
    with atomic_directory(target) as tmp:
        (tmp / ADAPTER_DIR).mkdir()
        for name, adapter in model.adapters.items():
            save_file(_contiguous(adapter.state_dict()), str(tmp / ADAPTER_DIR / f"{name}.safetensors"))
        bundled: list[str] = []
        encoder = _save_encoder(model, tmp, bundle, save_encoder, bundled)
        backbone = _save_backbone(model, tmp, bundle or merge_lora, merge_lora, bundled)
        if not merge_lora and model.backbone.save_lora(tmp):
            _point_lora_at_backbone(tmp, backbone.to_dict())
        SpeechLMProcessor.from_model(model).save_pretrained(str(tmp))  # the tokenizer and processor_config.json
        model.generation_defaults().to_generation_config().save_pretrained(str(tmp))
        saved = config.to_dict()
        saved.update(encoder=encoder.to_dict(), backbone=backbone.to_dict(), bundled=bundled, versions=model_versions())
        write_config_files(tmp, saved)
    return target


def _save_encoder(model: SpeechLM, tmp: Path, bundle: bool, save_encoder: bool | None, bundled: list[str]) -> Component:
    """Bundle the encoder (``encoder/``), or save its trained weights, or reference it (a Hub
    checkpoint at the commit it was loaded at); its saved config."""
    config, encoder = model.config, model.config.encoder
    if bundle or "encoder" in (config.bundled or []) or model.encoder.needs_bundle:
        model.encoder.save_pretrained(tmp / BUNDLED_ENCODER_DIR)
        bundled.append("encoder")
        return encoder.replace(**model.encoder.bundled_config(BUNDLED_ENCODER_DIR))
    if save_encoder or (save_encoder is None and config.encoder_trained):
        save_file(_contiguous(model.encoder.state_dict()), str(tmp / ENCODER_WEIGHTS))
    return encoder if model.encoder.hub_commit is None else encoder.replace(revision=model.encoder.hub_commit)


def _save_backbone(model: SpeechLM, tmp: Path, bundle: bool, merge_lora: bool, bundled: list[str]) -> Component:
    """Bundle the backbone's base weights (``backbone/``, the LoRA merged in with ``merge_lora``)
    when asked or needed (trained base weights, a random init or GGUF source, bundled before), else
    reference it; its saved config."""
    config, backbone = model.config, model.config.backbone
    if bundle or config.backbone_trained or "backbone" in (config.bundled or []) or model.backbone.needs_bundle:
        model.backbone.save_base(tmp / BUNDLED_BACKBONE_DIR, merged=merge_lora)
        bundled.append("backbone")
        return backbone.replace(**model.backbone.bundled_config(BUNDLED_BACKBONE_DIR, merged=merge_lora))
    return backbone if model.backbone.hub_commit is None else backbone.replace(revision=model.backbone.hub_commit)


def model_versions() -> dict[str, str]:
    """Versions of swv and the libraries a saved model was written with (its config's ``versions``)."""
    out = {}
    for dist in ("swv", "torch", "transformers", "peft"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def read_saved_config(source: str | os.PathLike[str], revision: str | None, registry: Registry,
                      trust_remote_code: bool) -> tuple[Path, dict[str, Any]]:
    """The model directory of ``source`` (a local directory or a Hub id at ``revision``) and its
    saved config with every component validated against ``registry`` (the ``SpeechLMConfig``
    kwargs). Component paths become absolute inside the directory; a component that asks for
    ``trust_remote_code`` needs the caller's ``trust_remote_code``; every ``*.safetensors`` file is
    checked to be complete first. Errors name ``swv_config.json`` and the field."""
    directory = resolve_model(source, revision)
    config_path = directory / CONFIG_NAME
    data = read_model_config(directory)
    _check_weight_files(directory)
    data.pop("model_type", None)
    bundled = data.get("bundled") if isinstance(data.get("bundled"), list) else []
    for key in ("encoder", "backbone"):
        data[key] = _localise(_component_ref(data.get(key), config_path, key), directory, config_path, key,
                              key in bundled)
        _apply_trust(data[key], trust_remote_code, directory, config_path, key)
    adapters = data.get("adapters")
    if not isinstance(adapters, list) or not adapters:
        raise InputError(f"{config_path}: adapters: expected a non-empty list of {{name, ...}} objects")
    data["adapters"] = [
        _resolve(registry, "adapter", _component_ref(ref, config_path, f"adapters[{i}]"), config_path, ("adapters", i))
        for i, ref in enumerate(adapters)
    ]
    for key in ("encoder", "backbone"):
        data[key] = _resolve(registry, key, data[key], config_path, (key,))
    return directory, data


def load_weights(model: SpeechLM, directory: Path, lora_trainable: bool) -> None:
    """Load a model directory's adapter, encoder and LoRA weights into the model built from its config."""
    for name, adapter in model.adapters.items():
        path = directory / ADAPTER_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise InputError(f"{directory}: missing adapter weights {ADAPTER_DIR}/{name}.safetensors")
        _load_into(adapter, path)
    if (directory / ENCODER_WEIGHTS).is_file():
        _load_into(model.encoder, directory / ENCODER_WEIGHTS)
    if (directory / LORA_CONFIG_FILE).is_file():
        model.backbone.load_lora(directory, trainable=lora_trainable)
        return
    orphans = [name for name in LORA_WEIGHT_FILES if (directory / name).exists()]
    if orphans:
        raise InputError(f"{directory}: has LoRA weights ({orphans[0]}) but no {LORA_CONFIG_FILE}, without which "
                         "the LoRA cannot be applied; restore it from the export the weights came from")


def check_against_weights(directory: Path, data: dict[str, Any], build: Callable[[], SpeechLM]) -> None:
    """Refuse a model directory whose config disagrees with its own weights, before anything is
    allocated: ``build`` (the model from the config ``data`` of :func:`read_saved_config`) runs on
    the meta device under a parameter budget from the weight files' sizes (a Hub-id component's
    counted from the Hub's file list, or from its snapshot in the cache offline), the backbone
    and encoder check their checkpoints' shapes (safetensors or GGUF headers) while building, then
    every adapter parameter (and the encoder's, when ``encoder.safetensors`` holds them) is
    compared with the safetensors headers. Errors name the component, the parameter, the config
    field and both shapes. A model with a component that cannot be built on the meta device is
    not pre-checked (see docs/plugins.md)."""
    config_path = directory / CONFIG_NAME
    weight_bytes = _weight_bytes(directory, data)
    budget = None if weight_bytes is None else parameter_budget(weight_bytes)
    try:
        with meta_build(budget, str(config_path), weight_bytes or 0):
            model = build()
    except SwvError:
        raise
    except Exception:  # a component that cannot be built on the meta device (e.g. it loads weights through
        return  # transformers' from_pretrained in its constructor) is not pre-checked; the real build follows
    for index, (name, adapter) in enumerate(model.adapters.items()):
        path = directory / ADAPTER_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise InputError(f"{directory}: missing adapter weights {ADAPTER_DIR}/{name}.safetensors")
        check_shapes(adapter.named_parameters(), safetensors_shapes([path]), f"adapter {name!r}",
                     f"{config_path} (adapters[{index}])")
    if (directory / ENCODER_WEIGHTS).is_file():
        check_shapes(model.encoder.named_parameters(), safetensors_shapes([directory / ENCODER_WEIGHTS]),
                     f"encoder {model.config.encoder.name!r}", f"{config_path} (encoder)")


def _weight_bytes(directory: Path, data: dict[str, Any]) -> int | None:
    """Bytes of the weight files the model directory's config can draw on: its own, those of a
    component checkpoint elsewhere on disk (or an absolute ``gguf_file``) and those of a
    component given as a Hub id (:func:`_hub_bytes`); ``None`` when a component's files cannot
    be found (its own loading then says why)."""
    roots, hub_bytes = [directory], 0
    for key in ("encoder", "backbone"):
        cfg = data[key].to_dict()
        path, gguf = cfg.get("path"), cfg.get("gguf_file")
        if isinstance(gguf, str) and os.path.isabs(gguf):
            roots.append(Path(gguf))
        if not isinstance(path, str):
            continue
        if is_hub_id(path):
            size = _hub_bytes(path, cfg.get("revision"), gguf)
            if size is None:
                return None
            hub_bytes += size
        elif not Path(path).expanduser().exists():
            return None
        elif directory.resolve() not in Path(path).expanduser().resolve().parents:
            roots.append(Path(path).expanduser())
    files = {f.resolve() for root in roots for f in (root.rglob("*") if root.is_dir() else [root])
             if f.suffix in WEIGHT_SUFFIXES and f.is_file()}
    return hub_bytes + sum(f.stat().st_size for f in files)


def _hub_bytes(repo_id: str, revision: Any, gguf_file: Any) -> int | None:
    """Bytes of a Hub-id component's weight files (its ``gguf_file``, or every file with a
    :data:`WEIGHT_SUFFIXES` suffix but ``.gguf``), read before download (:func:`swv.core.hub.hub_weight_bytes`)."""
    patterns = [gguf_file] if isinstance(gguf_file, str) else [f"*{suffix}" for suffix in sorted(WEIGHT_SUFFIXES - {".gguf"})]
    return hub_weight_bytes(repo_id, revision if isinstance(revision, str) else None, patterns)


def _containing_root(directory: Path) -> Path:
    """What a model directory's files may resolve into: the directory itself, or for a Hub
    snapshot in the Hugging Face cache (whose files link to ``../../blobs``) its repository folder."""
    root = directory.resolve()
    if root.parent.name == "snapshots":
        return root.parent.parent
    return root


def _check_weight_files(directory: Path) -> None:
    """Every weight file of ``directory`` (:data:`WEIGHT_SUFFIXES`) must resolve inside it (a
    symlink to a file elsewhere is refused) and every ``*.safetensors`` be complete."""
    root = _containing_root(directory)
    for file in sorted(directory.rglob("*")):
        if file.suffix not in WEIGHT_SUFFIXES:
            continue
        target = file.resolve()
        if root not in target.parents:
            raise InputError(f"{file}: weight file resolves outside the model directory (to {target})")
        if file.suffix == ".safetensors":
            check_safetensors(file)


def read_model_config(directory: Path) -> dict[str, Any]:
    """The JSON object of ``directory/swv_config.json`` (an :class:`InputError` naming the file otherwise)."""
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise InputError(f"{directory}: not an swv model directory (missing {CONFIG_NAME})")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{config_path}: invalid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{config_path}: cannot read ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{config_path}: expected a JSON object, got {type(data).__name__}")
    return data


def _component_ref(ref: Any, config_path: Path, key: str) -> dict[str, Any]:
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        raise InputError(f"{config_path}: {key}: expected an object with a 'name' (a registered component), got {ref!r}")
    return dict(ref)


def _resolve(registry: Registry, kind: str, ref: dict[str, Any], config_path: Path, loc: tuple[Any, ...]) -> Component:
    """One component of a saved config, validated; errors name ``swv_config.json`` and the field."""
    try:
        return registry.resolve(kind, ref)
    except ComponentError as exc:
        raise InputError(f"{config_path}: {format_loc((*loc, 'name'))}: {first_line(exc)}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"{config_path}: {format_loc((*loc, *first.get('loc', ())))}: {describe_error(first)}") from None


def _apply_trust(cfg: dict[str, Any], allowed: bool, directory: Path, config_path: Path, key: str) -> None:
    """A component that asks for ``trust_remote_code`` needs the caller's consent (never the
    config's); with it, warn naming the Python files that may run."""
    if not cfg.get("trust_remote_code"):
        return
    source = Path(str(cfg.get("path") or directory))
    files = sorted(str(f) for f in (source.rglob("*.py") if source.is_dir() else []))
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "") if files else "none found locally"
    if not allowed:
        raise UsageError(
            f"{config_path}: {key}.trust_remote_code is true: this model directory asks to run Python code it ships "
            f"({shown}); a model directory cannot enable that. Review the code, then pass --trust-remote-code"
        )
    warnings.warn(f"{key}: running the model's own Python code (--trust-remote-code): {shown}", stacklevel=2)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def write_config_files(directory: Path, saved: dict[str, Any]) -> None:
    """Write a model directory's config (``SpeechLMConfig.to_dict()`` form) as ``swv_config.json``
    and, for transformers, as ``config.json``, and its model card ``README.md``."""
    text = json.dumps(saved, indent=2, sort_keys=True) + "\n"
    (directory / CONFIG_NAME).write_text(text)
    (directory / HF_CONFIG_NAME).write_text(text)
    (directory / MODEL_CARD).write_text(render_model_card(saved))


def _point_lora_at_backbone(directory: Path, backbone: dict[str, Any]) -> None:
    """Make the saved LoRA's ``base_model_name_or_path`` the export's own backbone (PEFT records
    the path the weights were loaded from, e.g. the previous stage's export): its ``path`` as
    saved (``backbone``, relative to the export, when bundled; a hub id or a local path when
    referenced) and its ``revision``. The bundled path stays relative so that a moved export (or
    a Hub snapshot) still names its own copy; PEFT's ``AutoPeftModelForCausalLM`` resolves it
    against the current directory, :func:`swv.model.hf_auto.peft_causal_lm` inside the export."""
    file = directory / LORA_CONFIG_FILE
    adapter_config = json.loads(file.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = backbone.get("path")
    adapter_config["revision"] = backbone.get("revision")
    file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


#: Component fields that name files or directories.
PATH_FIELDS = ("path", "tokenizer")


def _localise(cfg: dict[str, Any], directory: Path, config_path: Path, key: str, bundled: bool) -> dict[str, Any]:
    """Component paths saved relative to the model directory become absolute; a relative path
    that leaves the directory (``../x``, symlinks resolved) is refused, and so is one missing
    from the directory unless it is an ``org/name`` Hub id of a component not ``bundled`` (it is
    never looked up in the current directory). Absolute paths and Hub ids refer to base weights
    the model was trained on (loaded as safetensors, never as code); ``gguf_file`` is confined
    like the path it is in."""
    root = _containing_root(directory)
    for field in PATH_FIELDS:
        value = cfg.get(field)
        if not isinstance(value, str) or os.path.isabs(value) or value.startswith("~"):
            continue
        try:
            target = (directory / value).resolve()
            found = target.exists()
        except (OSError, ValueError, RuntimeError) as exc:  # too long for a file name, a NUL, a symlink loop
            raise InputError(f"{config_path}: {key}.{field}: {value[:80]!r} cannot name a file ({first_line(exc)})") from None
        if target != root and root not in target.parents:
            raise InputError(f"{config_path}: {key}.{field}: {value!r} points outside the model directory")
        if found:
            cfg[field] = str(target)
        elif bundled or "/" not in value or not HUB_ID.match(value):
            raise InputError(f"{config_path}: {key}.{field}: {value!r} is missing from the model directory "
                             f"({directory / value} does not exist) and is not a Hub id (org/name)")
        elif Path(value).exists():  # the loaders would take ./org/name for the Hub id
            raise InputError(f"{config_path}: {key}.{field}: Hub id {value!r} is also a path in the current "
                             f"directory ({Path(value).resolve()}); run from another directory")
    _confine_gguf(cfg, root, config_path, key)
    return cfg


def _confine_gguf(cfg: dict[str, Any], root: Path, config_path: Path, key: str) -> None:
    """A relative ``gguf_file`` names a file inside ``path``: refused when it leaves it, or
    leaves the model directory when ``path`` is inside it (symlinks resolved)."""
    gguf, path = cfg.get("gguf_file"), cfg.get("path")
    if not isinstance(gguf, str) or os.path.isabs(gguf) or not isinstance(path, str):
        return
    inside_model = os.path.isabs(path) and (Path(path) == root or root in Path(path).parents)
    if inside_model:
        target = (Path(path) / gguf).resolve()
        if root not in target.parents:
            raise InputError(f"{config_path}: {key}.gguf_file: {gguf!r} resolves outside the model directory")
    elif ".." in Path(gguf).parts:
        raise InputError(f"{config_path}: {key}.gguf_file: {gguf!r} leaves the checkpoint it names a file of")


def _load_into(module: nn.Module, path: Path) -> None:
    state = load_file(str(path))
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise InputError(f"{path}: weights do not match the configured module ({detail})")
