"""Registers swv's built-in components through the same hook third-party plugins implement.

Targets are import strings, so nothing here imports torch.
"""

from __future__ import annotations

from swv.registry.components import Registry
from swv.registry.hookspecs import hookimpl

_BUILTINS: list[tuple[str, str, str, str]] = [
    # kind, name, module, description
    ("encoder", "whisper", "swv.encoders.whisper", "Whisper encoder (frozen); 30 s padded or trimmed input"),
    ("encoder", "seamless", "swv.encoders.seamless", "w2v-BERT 2.0 speech encoder of SeamlessM4T v2 (frozen)"),
    ("encoder", "ssl", "swv.encoders.ssl", "wav2vec 2.0 / HuBERT / WavLM / data2vec-audio (transformers AutoModel, frozen); layer choice"),
    ("adapter", "alignment", "swv.adapters.alignment", "Soundwave alignment adapter: pair frames, project, Transformer layer, CTC head"),
    ("adapter", "shrinking", "swv.adapters.shrinking", "Soundwave shrinking adapter: keep CTC peaks, cross-attend to all frames"),
    ("adapter", "conv", "swv.adapters.conv", "Qwen2-Audio-style conv/pool downsampling x n baseline"),
    ("adapter", "stack", "swv.adapters.stack", "Frame stacking x n + MLP projection baseline"),
    ("adapter", "qformer", "swv.adapters.qformer", "Window-level Q-Former (SALMONN style): learned queries per window of frames"),
    ("backbone", "llama", "swv.backbones.llama", "Llama-architecture causal LM (transformers), optional LoRA"),
    ("backbone", "qwen2", "swv.backbones.qwen2", "Qwen2-architecture causal LM (transformers), optional LoRA"),
]

_CLASS_NAMES = {
    "whisper": ("WhisperEncoder", "WhisperConfig"),
    "seamless": ("SeamlessEncoder", "SeamlessConfig"),
    "ssl": ("SSLEncoder", "SSLConfig"),
    "alignment": ("AlignmentAdapter", "AlignmentConfig"),
    "shrinking": ("ShrinkingAdapter", "ShrinkingConfig"),
    "conv": ("ConvAdapter", "ConvConfig"),
    "stack": ("StackAdapter", "StackConfig"),
    "qformer": ("QFormerAdapter", "QFormerConfig"),
    "llama": ("LlamaBackbone", "LlamaConfig"),
    "qwen2": ("Qwen2Backbone", "Qwen2Config"),
}


@hookimpl
def swv_register_components(registry: Registry) -> None:
    for kind, name, module, description in _BUILTINS:
        cls_name, cfg_name = _CLASS_NAMES[name]
        registry.register(
            kind,
            name,
            target=f"{module}:{cls_name}",
            config=f"{module}:{cfg_name}",
            description=description,
        )
