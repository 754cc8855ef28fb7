"""The composed speech LLM: encoder -> adapter chain -> backbone.

Submodule prefixes are stable: ``encoder.``, ``adapters.<name>.`` (chain order), ``backbone.``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from swv.errors import ComponentError, InputError
from swv.io import atomic_directory
from swv.model.losses import ctc_loss, lm_loss
from swv.model.splice import Spliced, splice_audio
from swv.model.state import AudioState
from swv.model.vocab_logits import VocabLogits
from swv.recipes.schema import PAPER_SYSTEM_PROMPT
from swv.registry import Registry

CONFIG_NAME = "swv_config.json"
ENCODER_WEIGHTS = "encoder.safetensors"
ADAPTER_DIR = "adapters"
BUNDLED_ENCODER_DIR = "encoder"
BUNDLED_BACKBONE_DIR = "backbone"


class SpeechLMConfig(PreTrainedConfig):
    """Every component's registered name and resolved config, plus the prompt defaults."""

    model_type = "swv_speechlm"
    encoder: dict | None = None
    adapters: list | None = None
    backbone: dict | None = None
    system_prompt: str = PAPER_SYSTEM_PROMPT
    encoder_trained: bool = False
    backbone_trained: bool = False
    #: components stored inside the model directory (kept bundled by later saves)
    bundled: list | None = None
    versions: dict | None = None


@dataclass
class SpeechLMOutput(ModelOutput):
    """Forward outputs. ``logits [B, L', V]`` (None when the backbone did not run, and in training
    with labels, where the LM head runs on the labelled positions only),
    ``ctc_logits [B_a, T, V]`` (a :class:`~swv.model.vocab_logits.VocabLogits`: call
    ``.materialise()`` for the tensor), ``keep_mask [B_a, T]``, ``audio_embeds [B_a, N, D]``,
    ``audio_lengths [B_a]``."""

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    ctc_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ctc_logits: VocabLogits | None = None
    ctc_lengths: torch.Tensor | None = None
    keep_mask: torch.Tensor | None = None
    audio_embeds: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("swv", "torch", "transformers", "peft"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from swv.pluginmanager import default_registry

    return default_registry()


class SpeechLM(PreTrainedModel):
    config_class = SpeechLMConfig
    base_model_prefix = "speechlm"
    main_input_name = "input_features"

    def __init__(self, config: SpeechLMConfig, registry: Registry | None = None) -> None:
        super().__init__(config)
        if not config.encoder or not config.adapters or not config.backbone:
            raise ComponentError("SpeechLM config needs an encoder, at least one adapter and a backbone")
        registry = _registry(registry)
        self.backbone = registry.build("backbone", config.backbone)
        info = self.backbone.info()
        self.encoder = registry.build("encoder", config.encoder)
        self.adapters = nn.ModuleDict()
        dim = self.encoder.output_dim
        has_ctc = False
        for ref in config.adapters:
            adapter = registry.build("adapter", ref, input_dim=dim, backbone=info)
            if getattr(adapter, "needs_ctc", False) and not has_ctc:
                raise ComponentError(f"adapter {ref['name']!r} needs CTC logits: put an adapter that produces them (e.g. alignment) before it")
            has_ctc = has_ctc or getattr(adapter, "produces_ctc", False)
            self.adapters[ref["name"]] = adapter
            dim = adapter.output_dim
        if dim != info.hidden_size:
            raise ComponentError(f"the adapter chain ends at width {dim}, but the backbone expects {info.hidden_size}")
        self.audio_token_id = info.audio_token_id
        self.post_init()

    # Weights come from the components themselves (checkpoints or their own init).
    def init_weights(self) -> None:
        return None

    def _init_weights(self, module: nn.Module) -> None:
        return None

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    # ---------------------------------------------------------------------------------------
    def encode_audio(
        self,
        input_features: torch.Tensor | None,
        feature_lengths: torch.Tensor | None,
        *,
        stop_after_ctc: bool = False,
        encoder_embeds: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
    ) -> AudioState:
        """Encoder + adapter chain. With ``stop_after_ctc`` the chain stops after the first
        adapter that produces CTC logits (all a CTC-only stage needs). Precomputed encoder
        outputs (``encoder_embeds [B, T, D]``, ``encoder_lengths [B]``, e.g. from the feature
        cache) skip the encoder."""
        if encoder_embeds is not None:
            if encoder_lengths is None:
                raise InputError("encoder_lengths is required with encoder_embeds")
            state = AudioState(embeds=encoder_embeds, lengths=encoder_lengths.long())
        else:
            if input_features is None or feature_lengths is None:
                raise InputError("encode_audio needs input_features and feature_lengths (or encoder_embeds)")
            state = self.encoder(input_features, feature_lengths)
        adapter_dtype = next(iter(self.adapters.parameters())).dtype
        if state.embeds.dtype != adapter_dtype:  # e.g. a float16 encoder before float32 adapters
            state = state.replace(embeds=state.embeds.to(adapter_dtype))
        for adapter in self.adapters.values():
            state = adapter(state)
            if stop_after_ctc and state.ctc_logits is not None:
                break
        return state

    def splice(
        self,
        state: AudioState | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> Spliced:
        token_embeds = self.backbone.embed_tokens(input_ids)
        if state is None:
            dim = token_embeds.shape[-1]
            audio = token_embeds.new_zeros(0, 0, dim)
            lengths = torch.zeros(0, dtype=torch.long, device=input_ids.device)
        else:
            audio, lengths = state.embeds, state.lengths
        return splice_audio(
            token_embeds,
            input_ids,
            attention_mask,
            audio.to(token_embeds.dtype),
            lengths,
            self.audio_token_id,
            labels=labels,
            padding_side=padding_side,
        )

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ctc_targets: torch.Tensor | None = None,
        ctc_target_lengths: torch.Tensor | None = None,
        lm_weight: float = 1.0,
        ctc_weight: float = 0.0,
        encoder_embeds: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
    ) -> SpeechLMOutput:
        """Run the model and (with targets) the weighted losses.

        ``input_features``/``feature_lengths`` hold one row per prompt row that contains the
        audio placeholder (in order). Without ``input_ids`` (or with ``lm_weight == 0`` and no
        labels) the backbone is not run at all: a CTC-only stage costs only encoder + adapter.
        """
        run_backbone = input_ids is not None and (lm_weight > 0 or labels is None)
        state = None
        if input_features is not None or encoder_embeds is not None:
            state = self.encode_audio(
                input_features,
                feature_lengths,
                stop_after_ctc=not run_backbone,
                encoder_embeds=encoder_embeds,
                encoder_lengths=encoder_lengths,
            )
        out = SpeechLMOutput()
        losses: list[torch.Tensor] = []
        if state is not None:
            out.ctc_logits, out.ctc_lengths, out.keep_mask = state.ctc_logits, state.ctc_lengths, state.keep_mask
            out.audio_embeds, out.audio_lengths = state.embeds, state.lengths
            if ctc_targets is not None and ctc_weight > 0:
                if state.ctc_logits is None or state.ctc_lengths is None:
                    raise ComponentError("a CTC loss was requested but no adapter in the chain produces CTC logits")
                if ctc_target_lengths is None:
                    raise InputError("ctc_target_lengths is required with ctc_targets")
                rows = ctc_target_lengths > 0  # rows without a transcript take no CTC loss
                if bool(rows.any()):
                    out.ctc_loss = ctc_loss(
                        state.ctc_logits.select_rows(rows),
                        state.ctc_lengths[rows],
                        ctc_targets[rows],
                        ctc_target_lengths[rows],
                        self.audio_token_id,
                    )
                    losses.append(ctc_weight * out.ctc_loss)
        if run_backbone:
            assert input_ids is not None
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            spliced = self.splice(state, input_ids, mask, labels)
            lm_logits: torch.Tensor | VocabLogits | None = None
            if self.training and spliced.labels is not None and lm_weight > 0:
                # the loss runs the LM head on the labelled positions only
                lm_logits = self.backbone.factored_logits(
                    spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids
                )
            if lm_logits is None:
                lm_out = self.backbone(
                    inputs_embeds=spliced.inputs_embeds,
                    attention_mask=spliced.attention_mask,
                    position_ids=spliced.position_ids,
                )
                out.logits = lm_logits = lm_out.logits
            if spliced.labels is not None and lm_weight > 0:
                out.lm_loss = lm_loss(lm_logits, spliced.labels)
                losses.append(lm_weight * out.lm_loss)
        if losses:
            out.loss = torch.stack(losses).sum()
        return out

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Encode and splice the audio once, then let the backbone generate with its KV cache.
        Returns the new token ids ``[B, N]``. Batches are left-padded after splicing."""
        state = None
        if input_features is not None:
            assert feature_lengths is not None
            state = self.encode_audio(input_features, feature_lengths)
        spliced = self.splice(state, input_ids, attention_mask, padding_side="left")
        return self.backbone.generate(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            **generate_kwargs,
        )

    # -- waveforms of any length (inference; see swv.infer.windowing) -------------------------
    @property
    def audio_window_samples(self) -> int | None:
        """Longest clip (samples at ``encoder.sample_rate``) the encoder takes in one pass
        (Whisper: 30 s); ``None`` when unbounded. Longer clips are windowed by
        :meth:`encode_waveforms`."""
        from swv.infer.windowing import encoder_window_samples

        return encoder_window_samples(self.encoder)

    def encode_waveforms(
        self, waveforms: list[Any], *, window_batch_size: int | None = None
    ) -> tuple[AudioState, Any]:
        """Mono float waveforms at ``encoder.sample_rate``, of any length -> adapter-chain state.

        Clips longer than :attr:`audio_window_samples` are split into consecutive windows whose
        encoder outputs (valid frames only) are joined along time before the adapter chain.
        Returns ``(state, windowed)``: the final :class:`AudioState` (``embeds [B, N, D_llm]``,
        ``lengths [B]`` audio tokens) and the encoder-level
        :class:`~swv.infer.windowing.WindowedAudio` (``state.lengths [B]`` encoder frames,
        ``num_windows [B]``).
        """
        from swv.infer.windowing import encode_windowed

        windowed = encode_windowed(self.encoder, waveforms, window_batch_size=window_batch_size)
        state = windowed.state
        for adapter in self.adapters.values():
            state = adapter(state)
        return state, windowed

    # ---------------------------------------------------------------------------------------
    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | os.PathLike[str],
        *,
        bundle: bool = False,
        merge_lora: bool = False,
        save_encoder: bool | None = None,
        **_: Any,
    ) -> Path:
        """Per-module export, written to a temporary directory and renamed into place.

        Layout: ``swv_config.json``; ``adapters/<name>.safetensors``; LoRA in PEFT format
        (``adapter_model.safetensors`` + ``adapter_config.json``); the tokenizer;
        ``encoder.safetensors`` only if the encoder was trained (or ``save_encoder``).
        The encoder and backbone are referenced by their source path unless ``bundle`` (or
        they were randomly initialised, or, for the backbone, its base weights were trained
        or it came from a GGUF file), in which case full copies go to ``encoder/`` and
        ``backbone/``. ``merge_lora`` writes the LoRA-merged backbone to ``backbone/``.
        """
        target = Path(save_directory)
        config = SpeechLMConfig(**self.config.to_dict())
        config.versions = _versions()
        encoder_cfg = dict(config.encoder or {})
        backbone_cfg = dict(config.backbone or {})
        with atomic_directory(target) as tmp:
            (tmp / ADAPTER_DIR).mkdir()
            for name, adapter in self.adapters.items():
                save_file(_contiguous(adapter.state_dict()), str(tmp / ADAPTER_DIR / f"{name}.safetensors"))
            was_bundled = set(config.bundled or [])
            bundled: list[str] = []
            if bundle or "encoder" in was_bundled or encoder_cfg.get("random_init") is not None:
                self.encoder.save_pretrained(tmp / BUNDLED_ENCODER_DIR)
                encoder_cfg.update(path=BUNDLED_ENCODER_DIR, random_init=None)
                bundled.append("encoder")
            elif save_encoder or (save_encoder is None and config.encoder_trained):
                save_file(_contiguous(self.encoder.state_dict()), str(tmp / ENCODER_WEIGHTS))
            if (
                merge_lora
                or bundle
                or config.backbone_trained
                or "backbone" in was_bundled
                or backbone_cfg.get("random_init") is not None
                or backbone_cfg.get("gguf_file")
            ):
                self.backbone.save_base(tmp / BUNDLED_BACKBONE_DIR, merged=merge_lora)
                backbone_cfg.update(path=BUNDLED_BACKBONE_DIR, random_init=None, gguf_file=None, tokenizer=None)
                bundled.append("backbone")
                if merge_lora:
                    backbone_cfg["lora"] = None
            if not merge_lora:
                self.backbone.save_lora(tmp)
            self.backbone.tokenizer.save_pretrained(str(tmp))
            config.encoder, config.backbone, config.bundled = encoder_cfg, backbone_cfg, bundled
            (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        return target

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        directory: str | os.PathLike[str],
        *,
        registry: Registry | None = None,
        lora_trainable: bool = False,
        **_: Any,
    ) -> SpeechLM:
        """Rebuild a model from a directory written by :meth:`save_pretrained`."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise InputError(f"{directory}: not an swv model directory (missing {CONFIG_NAME})")
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{config_path}: invalid JSON ({exc.msg})") from None
        data.pop("model_type", None)
        config = SpeechLMConfig(**data)
        config.encoder = _localise(dict(config.encoder or {}), directory)
        config.backbone = _localise(dict(config.backbone or {}), directory)
        model = cls(config, registry=registry)
        for name, adapter in model.adapters.items():
            path = directory / ADAPTER_DIR / f"{name}.safetensors"
            if not path.is_file():
                raise InputError(f"{directory}: missing adapter weights {ADAPTER_DIR}/{name}.safetensors")
            _load_into(adapter, path)
        if (directory / ENCODER_WEIGHTS).is_file():
            _load_into(model.encoder, directory / ENCODER_WEIGHTS)
        if (directory / "adapter_config.json").is_file():
            model.backbone.load_lora(directory, trainable=lora_trainable)
        return model.eval()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _localise(cfg: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Component paths saved relative to the model directory become absolute."""
    path = cfg.get("path")
    if isinstance(path, str) and not os.path.isabs(path) and (directory / path).exists():
        cfg["path"] = str((directory / path).resolve())
    return cfg


def _load_into(module: nn.Module, path: Path) -> None:
    state = load_file(str(path))
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise InputError(f"{path}: weights do not match the configured module ({detail})")

