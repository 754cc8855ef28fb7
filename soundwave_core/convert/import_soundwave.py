"""Released Soundwave checkpoints -> swv model directories (``swv import soundwave``).

A released checkpoint is a Llama checkpoint with ``model_type: "Soundwave"`` whose state dict
also holds the Whisper encoder and both adapters (which key prefix goes to which part:
``ENCODER_PREFIX``, ``ADAPTER_PREFIXES`` and ``BACKBONE_PREFIXES`` below). It becomes::

    DEST/swv_config.json                 encoder + [alignment, shrinking] (compat "released") + llama
                                         (also as config.json, for transformers; and README.md)
    DEST/encoder/                        encoder-only Whisper (config.json, model.safetensors,
                                         preprocessor_config.json), from ``model.audio_tower.*``
    DEST/backbone/                       plain LlamaForCausalLM (config, weights, tokenizer with the
                                         released prompt as its chat template, generation_config.json
                                         with the released sampling defaults)
    DEST/adapters/alignment.safetensors  proj, layer (TransformerEncoderLayer), norm, ctc_head
    DEST/adapters/shrinking.safetensors  cross_attn (MultiheadAttention), norm
    DEST/tokenizer files                 as ``SpeechLM.save_pretrained`` writes them

The encoder's config is the audio tower's own ``config.json`` (the released config's
``audio_tower``: a directory, absolute or relative to the checkpoint, or a hub id found in the
local Hugging Face cache; nothing is downloaded) checked against the weights' shapes; when it
cannot be read, the head count is guessed as ``d_model / 64`` and the summary says so.

The released inference builds its prompt by hand (:func:`released_chat_template` reproduces it
token for token) and samples with top_p 0.9, temperature 0.2, up to 512 new tokens
(:data:`RELEASED_GENERATION`), without swv's repetition control or length bound
(:data:`RELEASED_CONTROLS`); both are written into the import.

Every key of the checkpoint must belong to one of these parts and every part must be complete
with the shapes its swv module expects (checked from the safetensors headers before anything
is read); the whole directory is written under a temporary name and renamed into place. The
backbone weights are copied one source shard at a time, so peak memory stays around one shard
plus the encoder and adapters.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from swv.adapters.shrinking import DEFAULT_DROPOUT as SHRINKING_DROPOUT
from swv.core.dtypes import DTYPE_NAMES
from swv.core.errors import InputError, UsageError
from swv.core.io import atomic_directory, check_safetensors

__all__ = ["OUTPUT_DTYPES", "ImportSummary", "import_soundwave", "released_key"]

SOUNDWAVE_MODEL_TYPE = "soundwave"
#: Config fields the released model adds to its LlamaConfig (dropped from the backbone config).
SOUNDWAVE_FIELDS = ("audio_tower", "adapter_size", "audio_patch_size", "audio_patch_token", "llm_pad_token_id")
_NOT_LLAMA_FIELDS = (*SOUNDWAVE_FIELDS, "model_type", "architectures", "auto_map", "transformers_version", "torch_dtype")
OUTPUT_DTYPES = DTYPE_NAMES
WHISPER_HEAD_DIM = 64  # every Whisper size uses 64-wide attention heads
#: The released inference's system prompt (the paper's appendix C wording has no comma after "provides").
RELEASED_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides, and assist the user with a variety of tasks using natural language."
)
#: The released inference's decoding settings.
RELEASED_GENERATION = {"do_sample": True, "top_p": 0.9, "temperature": 0.2, "max_new_tokens": 512}
#: The released inference has no repetition control and no length bound: an import keeps it so.
RELEASED_CONTROLS = {"no_repeat_ngram_size": 0, "repetition_penalty": 1.0, "length_bound": False}

ENCODER_PREFIX = "model.audio_tower."
#: released key prefix -> (swv adapter, key prefix inside it)
ADAPTER_PREFIXES: dict[str, tuple[str, str]] = {
    "model.mm_projector1.": ("alignment", "proj."),
    "model.asr_transformer_encoder.layers.0.": ("alignment", "layer."),
    "model.out_norm.": ("alignment", "norm."),
    "model.audio_feature_head.": ("alignment", "ctc_head."),
    "model.lbm.encoder_attn.": ("shrinking", "cross_attn."),
    "model.lbm.atten_layer_norm.": ("shrinking", "norm."),
}
BACKBONE_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
#: Non-persistent rotary buffers that old transformers versions wrote into Llama checkpoints.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
PARTS = ("encoder", "alignment", "shrinking", "backbone")


@dataclass(frozen=True)
class _Entry:
    """One tensor of the checkpoint: released key, shard file, shape and safetensors dtype."""

    source: str
    file: Path
    shape: tuple[int, ...]
    dtype: str


Plan = dict[str, dict[str, _Entry]]  # part -> {swv key inside the part: entry}


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_soundwave` wrote."""

    dest: Path
    audio_token_id: int
    dtype: str
    parameters: dict[str, int]  # part -> number of parameters
    encoder: dict[str, int]  # d_model, layers, heads, mel bins
    llm: dict[str, int]  # hidden, layers, heads, vocab
    #: where the encoder config came from: the audio tower's config.json, or the head-size guess
    encoder_config_source: str = ""


# ----------------------------------------------------------------------------------------------
# Reading the source
# ----------------------------------------------------------------------------------------------
def read_soundwave_config(src: Path) -> dict[str, Any]:
    """``src/config.json`` of a released Soundwave checkpoint (model_type checked)."""
    file = src / "config.json"
    if not src.is_dir():
        raise InputError(f"{src}: not a directory (expected a Soundwave checkpoint directory)")
    if not file.is_file():
        raise InputError(f"{src}: not a Soundwave checkpoint (no config.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{file}: not a readable JSON file ({error})") from None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str) or model_type.lower() != SOUNDWAVE_MODEL_TYPE:
        raise InputError(f"{src}: not a Soundwave checkpoint (config.json model_type is {model_type!r}, expected 'Soundwave')")
    return data


def _weight_map(src: Path) -> dict[str, Path]:
    """Key -> safetensors file, from ``model.safetensors`` or ``model.safetensors.index.json``."""
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if single.is_file():
        check_safetensors(single)
        with safe_open(str(single), framework="pt") as handle:
            return {key: single for key in handle.keys()}
    if index.is_file():
        try:
            mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{index}: not a valid shard index ({error})") from None
        files = {key: src / str(name) for key, name in mapping.items()}
        for file in sorted(set(files.values())):
            if not file.is_file():
                raise InputError(f"{file}: shard listed in {index.name} does not exist")
            check_safetensors(file)
        return files
    raise InputError(f"{src}: no safetensors weights (expected model.safetensors or model.safetensors.index.json)")


def _read_entries(src: Path) -> list[_Entry]:
    """Every tensor of the checkpoint with its shape and dtype, from the file headers only."""
    by_file: dict[Path, list[str]] = {}
    for key, file in _weight_map(src).items():
        by_file.setdefault(file, []).append(key)
    entries: list[_Entry] = []
    for file in sorted(by_file):
        try:
            with safe_open(str(file), framework="pt") as handle:
                present = set(handle.keys())
                for key in by_file[file]:
                    if key not in present:
                        raise InputError(f"{file}: weight {key} listed in the shard index is not in this shard")
                    info = handle.get_slice(key)
                    entries.append(_Entry(key, file, tuple(info.get_shape()), info.get_dtype()))
        except InputError:
            raise
        except Exception as error:  # SafetensorError, OSError
            raise InputError(f"{file}: not a readable safetensors file ({error})") from None
    return entries


def _route(key: str) -> tuple[str, str] | None:
    """Released key -> (part, swv key inside that part), or None for an unknown key."""
    if key.startswith(ENCODER_PREFIX):
        return "encoder", key[len(ENCODER_PREFIX) :]
    for prefix, (part, inner) in ADAPTER_PREFIXES.items():
        if key.startswith(prefix):
            return part, inner + key[len(prefix) :]
    if key.startswith(BACKBONE_PREFIXES):
        return "backbone", key
    return None


def released_key(part: str, key: str) -> str:
    """Inverse of the routing: the released checkpoint's name of swv ``part`` / ``key``."""
    if part == "encoder":
        return ENCODER_PREFIX + key
    if part == "backbone":
        return key
    for prefix, (owner, inner) in ADAPTER_PREFIXES.items():
        if owner == part and key.startswith(inner):
            return prefix + key[len(inner) :]
    return f"{part}.{key}"


def plan_keys(entries: Iterable[_Entry], src: Path) -> Plan:
    """Sort every checkpoint tensor into its part; an unknown key is an error."""
    plan: Plan = {part: {} for part in PARTS}
    for entry in entries:
        routed = _route(entry.source)
        if routed is None:
            if _IGNORED.match(entry.source):
                continue
            raise InputError(f"{src}: unknown weight {entry.source} (not part of the released Soundwave layout)")
        part, key = routed
        plan[part][key] = entry
    return plan


# ----------------------------------------------------------------------------------------------
# Configs and validation
# ----------------------------------------------------------------------------------------------
def _require(plan: Plan, part: str, key: str, src: Path, rank: int) -> tuple[int, ...]:
    """Shape of a weight the configs are derived from (missing or wrong rank: an error)."""
    entry = plan[part].get(key)
    if entry is None:
        raise InputError(f"{src}: checkpoint is missing weight {released_key(part, key)}")
    if len(entry.shape) != rank:
        raise InputError(f"{src}: weight {entry.source} has shape {list(entry.shape)}, expected {rank} dimensions")
    return entry.shape


def _stored_dtype(plan: Plan) -> str:
    """The dtype the Llama weights are stored in (float32 when not a float16/bfloat16/float32)."""
    entry = plan["backbone"].get("model.embed_tokens.weight")
    return _ST_DTYPES.get(entry.dtype, "float32") if entry is not None else "float32"


def _encoder_shapes(plan: Plan, src: Path) -> dict[str, int]:
    """The Whisper sizes the audio tower's weights imply."""
    d_model, mels, _ = _require(plan, "encoder", "conv1.weight", src, 3)
    positions, _ = _require(plan, "encoder", "embed_positions.weight", src, 2)
    ffn, _ = _require(plan, "encoder", "layers.0.fc1.weight", src, 2)
    layers = 1 + max(int(k.split(".")[1]) for k in plan["encoder"] if k.startswith("layers."))
    return {"d_model": d_model, "num_mel_bins": mels, "max_source_positions": positions,
            "encoder_ffn_dim": ffn, "encoder_layers": layers}


def audio_tower_config_file(audio_tower: Any, src: Path) -> Path | None:
    """The ``config.json`` of the released config's ``audio_tower``: a directory as given or
    relative to the checkpoint, else a hub id's file in the local Hugging Face cache; None when
    none is readable (nothing is downloaded)."""
    if not isinstance(audio_tower, str) or not audio_tower.strip():
        return None
    for directory in (Path(audio_tower).expanduser(), src / audio_tower):
        if (directory / "config.json").is_file():
            return directory / "config.json"
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(audio_tower, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def whisper_config(plan: Plan, src: Path, audio_tower: Any = None) -> tuple[Any, str]:
    """The encoder's ``transformers.WhisperConfig`` and where it came from: the audio tower's
    ``config.json`` (its sizes checked against the weights) when readable, else derived from the
    weights' shapes with ``d_model / 64`` heads."""
    from transformers import WhisperConfig

    shapes = _encoder_shapes(plan, src)
    file = audio_tower_config_file(audio_tower, src)
    if file is not None:
        try:
            hf_config = WhisperConfig.from_dict(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as error:
            raise InputError(f"{file}: the audio tower's config is not a readable Whisper config ({error})") from None
        for name, value in shapes.items():
            if getattr(hf_config, name) != value:
                raise InputError(
                    f"{file}: {name} is {getattr(hf_config, name)} but the checkpoint's audio tower weights have {value}"
                )
        if hf_config.d_model % hf_config.encoder_attention_heads:
            raise InputError(f"{file}: d_model {hf_config.d_model} is not divisible by encoder_attention_heads")
        return hf_config, f"{file}"
    d_model = shapes["d_model"]
    if d_model % WHISPER_HEAD_DIM:
        raise InputError(f"{src}: audio tower width {d_model} is not a multiple of Whisper's head size {WHISPER_HEAD_DIM}")
    heads = d_model // WHISPER_HEAD_DIM
    guessed = WhisperConfig(
        **shapes,
        encoder_attention_heads=heads,
        decoder_layers=shapes["encoder_layers"],
        decoder_attention_heads=heads,
        decoder_ffn_dim=shapes["encoder_ffn_dim"],
    )
    reason = f"audio_tower {audio_tower!r} has no readable config.json" if audio_tower else "config.json names no audio_tower"
    return guessed, f"guessed from the weights ({reason}): {heads} heads of {WHISPER_HEAD_DIM}"


def llama_config(config: dict[str, Any], dtype: str, src: Path) -> Any:
    """The backbone's ``transformers.LlamaConfig``: the checkpoint config minus Soundwave's fields."""
    from transformers import LlamaConfig

    fields = {k: v for k, v in config.items() if k not in _NOT_LLAMA_FIELDS}
    try:
        hf_config = LlamaConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise InputError(f"{src}/config.json: not a valid Llama config ({error})") from None
    hf_config.architectures = ["LlamaForCausalLM"]
    hf_config.dtype = dtype
    return hf_config


def _meta_shapes(build: Any) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the module ``build()`` returns, built on the meta device (no memory)."""
    with torch.device("meta"):
        module: nn.Module = build()
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def check_part(plan: Plan, part: str, expected: dict[str, tuple[int, ...]], src: Path, optional: Iterable[str] = ()) -> None:
    """Every expected key present with its shape, and nothing else (errors name released keys)."""
    found = plan[part]
    skip = set(optional)
    missing = [key for key in expected if key not in found and key not in skip]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{src}: checkpoint is missing weight {released_key(part, missing[0])}{more}")
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        raise InputError(f"{src}: unexpected weight {found[unexpected[0]].source} for the {part} built from its shapes")
    for key, entry in found.items():
        if entry.shape != expected[key]:
            raise InputError(f"{src}: weight {entry.source} has shape {list(entry.shape)}, expected {list(expected[key])}")


def adapter_refs(plan: Plan, hidden: int, llm_heads: int, shrinking_heads: int | None, src: Path) -> list[dict[str, Any]]:
    """The swv adapter chain that reproduces the released adapters."""
    ffn = _require(plan, "alignment", "layer.linear1.weight", src, 2)[0]
    heads = shrinking_heads or llm_heads
    if hidden % heads:
        raise UsageError(f"--shrinking-heads {heads}: the LLM width {hidden} is not divisible by it")
    return [
        {
            "name": "alignment",
            "compat": "released",
            "stack": 2,
            "dropout": 0.1,
            "num_heads": llm_heads,
            "ffn_multiplier": ffn / hidden,
            "activation": "relu",
        },
        {"name": "shrinking", "compat": "released", "keep_blank_runs": True, "num_heads": heads,
         "dropout": SHRINKING_DROPOUT["released"]},
    ]


def _check_adapters(plan: Plan, refs: list[dict[str, Any]], encoder_dim: int, info: Any, src: Path) -> None:
    from swv.registry.plugins import default_registry

    registry = default_registry()
    dim = encoder_dim
    for ref in refs:
        shapes = _meta_shapes(lambda: registry.build("adapter", ref, input_dim=dim, backbone=info))
        check_part(plan, ref["name"], shapes, src)
        dim = info.hidden_size


def _audio_token_id(config: dict[str, Any], tokenizer_dir: Path, src: Path) -> int:
    """The swv audio token id (registered exactly as the llama backbone does), checked against the
    checkpoint's ``audio_patch_token`` (the CTC blank)."""
    from transformers import AutoTokenizer

    from swv.backbones.base import AUDIO_TOKEN
    from swv.backbones.hf_loading import register_audio_token

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as error:
        raise InputError(f"{src}: cannot load the checkpoint's tokenizer ({error})") from None
    in_vocab = tokenizer.get_vocab().get(AUDIO_TOKEN)
    expected = config.get("audio_patch_token", in_vocab)
    if expected is None:
        raise InputError(f"{src}: the tokenizer has no {AUDIO_TOKEN} token and config.json no audio_patch_token")
    if not isinstance(expected, int) or isinstance(expected, bool):
        raise InputError(f"{src}/config.json: audio_patch_token must be a token id, got {expected!r}")
    swv_id = register_audio_token(tokenizer, AUDIO_TOKEN)
    if swv_id != expected:
        raise InputError(
            f"{src}: the tokenizer gives {AUDIO_TOKEN} id {swv_id} but config.json audio_patch_token is {expected} "
            "(the CTC blank must be the audio token; is this the checkpoint's own tokenizer?)"
        )
    return swv_id


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def _load_part(entries: dict[str, _Entry], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Read one (small) part into memory under its swv keys."""
    by_file: dict[Path, list[str]] = {}
    for key, entry in entries.items():
        by_file.setdefault(entry.file, []).append(key)
    state: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        with safe_open(str(file), framework="pt") as handle:
            for key in keys:
                state[key] = _cast(handle.get_tensor(entries[key].source), dtype)
    return state


def _write_backbone_weights(entries: dict[str, _Entry], directory: Path, dtype: torch.dtype | None) -> None:
    """Copy the Llama weights one source shard at a time (one output shard per source shard)."""
    by_file: dict[Path, list[str]] = {}
    for key, entry in entries.items():
        by_file.setdefault(entry.file, []).append(key)
    files = sorted(by_file)
    names = {file: "model.safetensors" for file in files} if len(files) == 1 else {
        file: f"model-{i:05d}-of-{len(files):05d}.safetensors" for i, file in enumerate(files, start=1)
    }
    weight_map: dict[str, str] = {}
    total = 0
    for file in files:
        state = _load_part({key: entries[key] for key in by_file[file]}, dtype)
        save_file(state, str(directory / names[file]), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in state.values())
        weight_map.update(dict.fromkeys(state, names[file]))
        del state
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _copy_tokenizer(src: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if "tokenizer_config.json" not in copied:
        raise InputError(f"{src}: no tokenizer (tokenizer_config.json) in the checkpoint directory")
    for name in copied:
        shutil.copyfile(src / name, directory / name)


def _set_pad_token(directory: Path, pad_id: Any) -> None:
    """Give a tokenizer without a pad token the checkpoint's ``llm_pad_token_id`` (the id the
    released code pads batches with)."""
    from transformers import AutoTokenizer

    if not isinstance(pad_id, int) or isinstance(pad_id, bool) or pad_id < 0:
        return
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token_id is not None or pad_id >= len(tokenizer):
        return
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    tokenizer.save_pretrained(str(directory))


#: The Llama-3 header tokens the released prompt is built from (ids taken from the vocabulary).
PROMPT_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _added_by_tokenizer(tokenizer: Any) -> tuple[str, str]:
    """The special tokens the tokenizer adds around a piece of text by itself (Llama 3: the
    ``<|begin_of_text|>`` prefix), as text: ``(prefix, suffix)``."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
    prefix, suffix = full[:start], full[start + len(plain) :]
    return "".join(tokenizer.convert_ids_to_tokens(prefix)), "".join(tokenizer.convert_ids_to_tokens(suffix))


def released_chat_template(prefix: str, suffix: str, audio_token: str) -> str:
    """A chat template that renders the released inference prompt token for token.

    The released code joins header ids with separately tokenized pieces: the role name, the
    newline after the header (``"\n" + audio`` in the user turn, so no newline between the
    placeholder and the instruction), then the text; each piece gets whatever the tokenizer adds
    by itself (``prefix``/``suffix``, e.g. ``<|begin_of_text|>`` before every piece of a Llama 3
    tokenizer). swv's user turn is ``"<audio>\n<instruction>"``; the template drops that newline."""
    def quoted(text: str) -> str:
        return json.dumps(text)

    piece = "P + {} + S"
    return (
        "{%- set P = " + quoted(prefix) + " -%}{%- set S = " + quoted(suffix) + " -%}"
        "{%- set A = " + quoted(audio_token) + " -%}"
        "{{- '<|begin_of_text|>' -}}"
        "{%- for message in messages -%}"
        "{%- set content = message['content'] -%}"
        "{{- '<|start_header_id|>' + " + piece.format("message['role']") + " + '<|end_header_id|>' -}}"
        "{%- if message['role'] == 'user' and content.startswith(A) -%}"
        "{%- set rest = content[(A | length):] -%}"
        "{%- if rest.startswith('\n') -%}{%- set rest = rest[1:] -%}{%- endif -%}"
        "{{- " + piece.format("'\n' + A") + " + " + piece.format("rest") + " -}}"
        "{%- else -%}"
        "{{- " + piece.format("'\n'") + " + " + piece.format("content") + " -}}"
        "{%- endif -%}"
        "{{- '<|eot_id|>' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{- '<|start_header_id|>' + " + piece.format("'assistant'") + " + '<|end_header_id|>' + "
        + piece.format("'\n'") + " -}}"
        "{%- endif -%}"
    )


def _write_released_prompt(directory: Path, src: Path) -> None:
    """Make the tokenizer in ``directory`` prompt like the released inference (its chat template
    replaced by :func:`released_chat_template`)."""
    from transformers import AutoTokenizer

    from swv.backbones.base import AUDIO_TOKEN

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    vocab = tokenizer.get_vocab()
    missing = [token for token in PROMPT_TOKENS if token not in vocab]
    if missing:
        raise InputError(f"{src}: the tokenizer lacks {', '.join(missing)}, which the released prompt is built from")
    prefix, suffix = _added_by_tokenizer(tokenizer)
    tokenizer.chat_template = released_chat_template(prefix, suffix, AUDIO_TOKEN)
    tokenizer.save_pretrained(str(directory))


def _write_generation_config(src: Path, directory: Path) -> None:
    """The source's generation config (if any) with the released sampling defaults."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(str(src)) if (src / "generation_config.json").is_file() else GenerationConfig()
    config.update(**RELEASED_GENERATION)
    config.save_pretrained(str(directory))


def _write_encoder(state: dict[str, torch.Tensor], hf_config: Any, directory: Path) -> None:
    from transformers import WhisperFeatureExtractor

    directory.mkdir(parents=True)
    hf_config.save_pretrained(str(directory))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=hf_config.num_mel_bins).save_pretrained(str(directory))


def _swv_config(refs: list[dict[str, Any]], backbone_dtype: str) -> dict[str, Any]:
    from swv.model.directory import BUNDLED_BACKBONE_DIR, BUNDLED_ENCODER_DIR, model_versions
    from swv.model.speechlm import SpeechLMConfig
    config = SpeechLMConfig(
        encoder={"name": "whisper", "path": BUNDLED_ENCODER_DIR, "mode": "pad_to_30s"},
        adapters=refs,
        backbone={"name": "llama", "path": BUNDLED_BACKBONE_DIR, "dtype": backbone_dtype},
        system_prompt=RELEASED_SYSTEM_PROMPT,
        generation={**RELEASED_GENERATION, **RELEASED_CONTROLS},
        encoder_trained=False,
        versions=model_versions(),
    )
    return config.to_dict()


def _check_destination(src: Path, dest: Path, overwrite: bool) -> None:
    resolved, source = dest.resolve(), src.resolve()
    if resolved == source or resolved in source.parents or source in resolved.parents:
        raise UsageError(f"{dest}: destination overlaps the source {src}; choose a separate directory")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest}: exists and is not a directory")
        if any(dest.iterdir()) and not overwrite:
            raise UsageError(f"{dest}: directory exists and is not empty (pass --overwrite to replace it)")


def _count(entries: dict[str, _Entry]) -> int:
    total = 0
    for entry in entries.values():
        count = 1
        for dim in entry.shape:
            count *= dim
        total += count
    return total


@dataclass(frozen=True)
class _Validated:
    """A checkpoint whose keys and shapes have been checked, with the configs derived from it."""

    plan: Plan
    whisper: Any  # transformers.WhisperConfig
    llama: Any  # transformers.LlamaConfig
    adapters: list[dict[str, Any]]
    backbone_dtype: str
    encoder_source: str


def _validate(src: Path, config: dict[str, Any], shrinking_heads: int | None, dtype: str | None) -> _Validated:
    """Route every key, derive the configs and check every part against its module's shapes
    (built on the meta device) before anything is read or written."""
    from transformers import LlamaForCausalLM
    from transformers.models.whisper.modeling_whisper import (
        WhisperEncoder as HFWhisperEncoder,
    )

    from swv.nn.context import BackboneInfo

    plan = plan_keys(_read_entries(src), src)
    whisper, encoder_source = whisper_config(plan, src, config.get("audio_tower"))
    check_part(plan, "encoder", _meta_shapes(lambda: HFWhisperEncoder(whisper)), src)
    adapter_size = config.get("adapter_size", whisper.d_model)
    if adapter_size != whisper.d_model:
        raise InputError(f"{src}/config.json: adapter_size is {adapter_size} but the audio tower is {whisper.d_model} wide")
    backbone_dtype = dtype or _stored_dtype(plan)
    llama = llama_config(config, backbone_dtype, src)
    optional = ["lm_head.weight"] if llama.tie_word_embeddings else []
    check_part(plan, "backbone", _meta_shapes(lambda: LlamaForCausalLM(llama)), src, optional)
    refs = adapter_refs(plan, llama.hidden_size, llama.num_attention_heads, shrinking_heads, src)
    info = BackboneInfo(llama.hidden_size, llama.num_attention_heads, llama.vocab_size, 0, 0)
    _check_adapters(plan, refs, whisper.d_model, info, src)
    return _Validated(plan, whisper, llama, refs, backbone_dtype, encoder_source)


def _write(checked: _Validated, src: Path, config: dict[str, Any], tmp: Path, dtype: torch.dtype | None) -> int:
    """Write the swv model directory into ``tmp``; returns the audio token id. The tokenizer is
    checked first, so a mismatch fails before any weight is copied."""
    from swv.model.directory import ADAPTER_DIR, BUNDLED_BACKBONE_DIR, BUNDLED_ENCODER_DIR, write_config_files

    plan, llama = checked.plan, checked.llama
    backbone_dir = tmp / BUNDLED_BACKBONE_DIR
    _copy_tokenizer(src, backbone_dir)
    llama.save_pretrained(str(backbone_dir))
    audio_id = _audio_token_id(config, backbone_dir, src)
    if audio_id >= llama.vocab_size:
        raise InputError(f"{src}: audio token id {audio_id} is outside the model's {llama.vocab_size}-row vocabulary")
    _set_pad_token(backbone_dir, config.get("llm_pad_token_id"))
    _write_released_prompt(backbone_dir, src)
    _write_generation_config(src, backbone_dir)
    _write_backbone_weights(plan["backbone"], backbone_dir, dtype)
    _write_encoder(_load_part(plan["encoder"], dtype), checked.whisper, tmp / BUNDLED_ENCODER_DIR)
    (tmp / ADAPTER_DIR).mkdir()
    for name in ("alignment", "shrinking"):
        save_file(_load_part(plan[name], dtype), str(tmp / ADAPTER_DIR / f"{name}.safetensors"))
    _copy_tokenizer(backbone_dir, tmp)
    from swv.model.defaults import GenerationDefaults

    GenerationDefaults(**RELEASED_GENERATION, **RELEASED_CONTROLS).to_generation_config().save_pretrained(str(tmp))
    swv_config = _swv_config(checked.adapters, checked.backbone_dtype)
    write_config_files(tmp, swv_config)
    return audio_id


def import_soundwave(
    src: str | Path,
    dest: str | Path,
    *,
    shrinking_heads: int | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Convert the released Soundwave checkpoint ``src`` into the swv model directory ``dest``.

    ``shrinking_heads``: heads of the shrinking cross-attention (default: the LLM's).
    ``dtype``: float32 / float16 / bfloat16 for every saved weight and the backbone's load
    dtype; ``None`` keeps the stored dtypes (the backbone then loads in its weights' dtype).
    The encoder and adapters always run in float32 (their weights are cast on load).
    """
    src, dest = Path(src), Path(dest)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)}")
    if shrinking_heads is not None and shrinking_heads < 1:
        raise UsageError(f"--shrinking-heads must be at least 1, got {shrinking_heads}")
    config = read_soundwave_config(src)
    _check_destination(src, dest, overwrite)
    checked = _validate(src, config, shrinking_heads, dtype)
    with atomic_directory(dest) as tmp:
        audio_id = _write(checked, src, config, tmp, getattr(torch, dtype) if dtype is not None else None)
    whisper, llama = checked.whisper, checked.llama
    return ImportSummary(
        dest=dest,
        audio_token_id=audio_id,
        dtype=dtype or "as stored",
        parameters={part: _count(checked.plan[part]) for part in PARTS},
        encoder={"d_model": whisper.d_model, "layers": whisper.encoder_layers,
                 "heads": whisper.encoder_attention_heads, "mel_bins": whisper.num_mel_bins},
        llm={"hidden": llama.hidden_size, "layers": llama.num_hidden_layers,
             "heads": llama.num_attention_heads, "vocab": llama.vocab_size},
        encoder_config_source=checked.encoder_source,
    )
