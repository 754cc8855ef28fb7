"""The composed speech LLM: encoder -> adapter chain -> backbone.

Submodule prefixes are stable: ``encoder.``, ``adapters.<name>.`` (chain order), ``backbone.``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from swv.core.config import CONFIG_NAME
from swv.core.errors import ComponentError, InputError, SwvError, first_line

# a module import: transformers' post-import hook (swv.model.hf_auto) may import this module while
# swv.model.directory is still initialising
from swv.model import directory as model_directory
from swv.model.defaults import PAPER_SYSTEM_PROMPT, GenerationDefaults
from swv.model.losses import ctc_loss, lm_loss
from swv.model.processor import SpeechLMProcessor
from swv.model.splice import Spliced, splice_audio
from swv.model.stopping import stop_token_ids
from swv.nn.state import AudioState
from swv.nn.vocab_logits import VocabLogits
from swv.nn.windowing import encode_windowed, encoder_window_samples
from swv.registry.components import Component, Registry


class SpeechLMConfig(PreTrainedConfig):
    """Every component (a validated :class:`~swv.registry.components.Component`, or a ``{name, **args}``
    dict that :class:`SpeechLM` validates once and replaces by its Component), plus the prompt
    defaults. ``to_dict()`` writes components as ``{name, **args}``, the ``swv_config.json`` form."""

    model_type = "swv_speechlm"
    encoder: Component | dict | None = None
    adapters: list | None = None
    backbone: Component | dict | None = None
    system_prompt: str = PAPER_SYSTEM_PROMPT
    #: task -> default instruction (see :func:`swv.model.prompts.instruction_table`); None: the defaults
    instructions: dict | None = None
    #: decoding defaults (:class:`~swv.model.defaults.GenerationDefaults` fields); None: greedy, 256 tokens
    generation: dict | None = None
    encoder_trained: bool = False
    backbone_trained: bool = False
    #: components stored inside the model directory (kept bundled by later saves)
    bundled: list | None = None
    versions: dict | None = None
    #: What training did, one record per trained stage (appended by ``swv train`` at each
    #: export: ``stage``, ``kind``, ``recipe``, ``steps``, ``datasets`` name -> source,
    #: ``metrics`` name -> value); the model card (:mod:`swv.model.card`) shows it.
    training: list | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("encoder", "backbone"):
            out[key] = _component_dict(out[key])
        out["adapters"] = [_component_dict(ref) for ref in out["adapters"]] if out["adapters"] is not None else None
        return out


def _component_dict(ref: Component | dict | None) -> dict | None:
    return ref.to_dict() if isinstance(ref, Component) else ref


@dataclass
class SpeechLMOutput(ModelOutput):
    """Forward outputs. ``loss`` is ``lm_loss`` (the Hugging Face meaning, see
    :meth:`SpeechLM.forward`); ``lm_loss``, ``ctc_loss`` and ``aux_losses`` (name -> scalar,
    reported by adapters) are unweighted. ``logits [B, L', V]`` (None when the backbone did not
    run, and in training with labels, where the LM head runs on the labelled positions only),
    ``ctc_logits [B_a, T, V]`` (a :class:`~swv.nn.vocab_logits.VocabLogits`: call
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
    aux_losses: dict[str, torch.Tensor] | None = None


def _cached_state(
    encoder_embeds: torch.Tensor | None, encoder_lengths: torch.Tensor | None, speech_lengths: torch.Tensor | None
) -> AudioState:
    """Cached encoder outputs as the encoder's :class:`AudioState`."""
    assert encoder_embeds is not None
    if encoder_lengths is None:
        raise InputError("encoder_lengths is required with encoder_embeds")
    speech = None if speech_lengths is None else speech_lengths.long().to(encoder_lengths.device)
    return AudioState(embeds=encoder_embeds, lengths=encoder_lengths.long(), speech_lengths=speech)


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from swv.registry.plugins import default_registry

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
        config.encoder = registry.resolve("encoder", config.encoder)
        config.adapters = [registry.resolve("adapter", ref) for ref in config.adapters]
        config.backbone = registry.resolve("backbone", config.backbone)
        self.backbone = registry.build("backbone", config.backbone)
        info = self.backbone.info()
        self.encoder = registry.build("encoder", config.encoder)
        self.adapters = nn.ModuleDict()
        dim = self.encoder.output_dim
        has_ctc = False
        for ref in config.adapters:
            adapter = registry.build("adapter", ref, input_dim=dim, backbone=info)
            if adapter.needs_ctc and not has_ctc:
                raise ComponentError(f"adapter {ref.name!r} needs CTC logits: put an adapter that produces them (e.g. alignment) before it")
            has_ctc = has_ctc or adapter.produces_ctc
            self.adapters[ref.name] = adapter
            dim = adapter.output_dim
        if dim != info.hidden_size:
            raise ComponentError(f"the adapter chain ends at width {dim}, but the backbone expects {info.hidden_size}")
        self.audio_token_id = info.audio_token_id
        self.post_init()
        # post_init reads only direct children; the layer classes of the Hugging Face models inside
        # the components (e.g. LlamaDecoderLayer) let accelerate's FSDP TRANSFORMER_BASED_WRAP shard per layer
        self._no_split_modules = set().union(
            *(m._no_split_modules or () for m in self.modules() if isinstance(m, PreTrainedModel) and m is not self)
        )

    # Weights come from the components themselves (checkpoints or their own init).
    def init_weights(self) -> None:
        return None

    def train(self, mode: bool = True) -> SpeechLM:
        """Train mode for what a stage trains: an adapter none of whose parameters require grad
        stays in eval mode (its dropout off), as a frozen encoder does. So a frozen alignment
        adapter keeps the same frames in training as at inference (Stage II of the paper)."""
        super().train(mode)
        for adapter in self.adapters.values():
            if mode and not any(parameter.requires_grad for parameter in adapter.parameters()):
                adapter.eval()
        return self

    def _init_weights(self, module: nn.Module) -> None:
        return None

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def has_ctc_head(self) -> bool:
        """Whether an adapter of the chain produces CTC logits (a CTC head to rescore with)."""
        return any(adapter.produces_ctc for adapter in self.adapters.values())

    def clip_classes(self) -> dict[str, list[str]]:
        """The whole-clip labels the chain's adapters learn from (``Adapter.clip_classes``), per
        task in sorted task order: the columns of ``clip_targets`` in :meth:`forward`."""
        merged: dict[str, list[str]] = {}
        for name, adapter in self.adapters.items():
            for task, labels in adapter.clip_classes().items():
                if task in merged and merged[task] != labels:
                    raise ComponentError(f"adapter {name!r}: clip classes of task {task!r} {labels} differ from an "
                                         f"earlier adapter's {merged[task]}")
                merged[task] = list(labels)
        return dict(sorted(merged.items()))

    # -- the audio road: waveforms / features / cached encoder outputs -> adapter chain ------
    @property
    def audio_window_samples(self) -> int | None:
        """Longest clip (samples at ``encoder.sample_rate``) the encoder takes in one pass
        (Whisper: 30 s); ``None`` when unbounded. Longer waveforms given to
        :meth:`encode_audio` are windowed."""
        return encoder_window_samples(self.encoder)

    def encode_audio(
        self,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        *,
        waveforms: Sequence[np.ndarray] | None = None,
        encoder_embeds: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
        stop_after_ctc: bool = False,
        window_batch_size: int | None = None,
        encoder_speech_lengths: torch.Tensor | None = None,
        clip_targets: torch.Tensor | None = None,
    ) -> AudioState:
        """Audio -> the adapter chain's output: the one road from audio to LLM inputs.

        Give exactly one of:

        * ``waveforms``: mono float arrays at ``encoder.sample_rate``, of any length. Clips longer
          than :attr:`audio_window_samples` are cut into consecutive windows whose valid encoder
          frames are joined along time before the chain (:mod:`swv.nn.windowing`), windows
          encoded ``window_batch_size`` at a time (all at once when ``None``);
        * ``input_features [B, ...]`` with ``feature_lengths [B]`` (the encoder's own features);
        * ``encoder_embeds [B, T, D_enc]`` with ``encoder_lengths [B]`` (e.g. the feature cache):
          the encoder is skipped; ``encoder_speech_lengths [B]`` says how many of those frames
          hold audio when the encoder counted padding as valid (``AudioState.speech_lengths``).

        Inputs are moved to the encoder's device; the encoder output is cast to the adapters'
        dtype and device (a float16 encoder before float32 adapters). With ``stop_after_ctc``
        the chain stops after the first adapter that produces CTC logits (all a CTC-only stage
        needs). ``clip_targets [B, K]`` (training): each row's class index per task of
        :meth:`clip_classes` (column k: the k-th task), -100 where none; the adapters get them as
        ``state.clip_targets``. Returns the final :class:`AudioState` (``embeds [B, N, D_llm]``, ``lengths [B]``
        audio tokens, CTC logits and aux losses if any) with ``encoder_lengths [B]`` (valid
        encoder frames, summed over windows) and ``num_windows [B]`` set.
        """
        given = [name for name, value in (("waveforms", waveforms), ("input_features", input_features),
                                          ("encoder_embeds", encoder_embeds)) if value is not None]
        if len(given) != 1:
            raise InputError(
                "encode_audio takes exactly one of waveforms, input_features (with feature_lengths) or "
                f"encoder_embeds (with encoder_lengths); got {', '.join(given) or 'none'}"
            )
        if waveforms is not None:
            windowed = encode_windowed(self.encoder, waveforms, window_batch_size=window_batch_size,
                                       device=next(self.encoder.parameters()).device)
            state, num_windows = windowed.state, windowed.num_windows
        elif input_features is not None:
            state = self._encode_features(input_features, feature_lengths)
            num_windows = torch.ones_like(state.lengths)
        else:
            state = _cached_state(encoder_embeds, encoder_lengths, encoder_speech_lengths)
            num_windows = torch.ones_like(state.lengths)
        state = self._to_adapters(state)
        if clip_targets is not None:
            state = state.replace(clip_targets=self._clip_target_columns(clip_targets, state.lengths.device))
        return self._run_chain(state, stop_after_ctc, num_windows)

    def _clip_target_columns(self, clip_targets: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """``clip_targets [B, K]`` -> task -> ``[B]``, by the column order of :meth:`clip_classes`."""
        tasks = list(self.clip_classes())
        if clip_targets.dim() != 2 or clip_targets.shape[1] != len(tasks):
            raise InputError(f"clip_targets must be [B, {len(tasks)}] (one column per task of {tasks}), "
                             f"got {tuple(clip_targets.shape)}")
        return {task: clip_targets[:, k].to(device=device, dtype=torch.long) for k, task in enumerate(tasks)}

    def _encode_features(self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None) -> AudioState:
        if feature_lengths is None:
            raise InputError("feature_lengths is required with input_features")
        device = next(self.encoder.parameters()).device
        return self.encoder(input_features.to(device), feature_lengths.to(device))

    def _to_adapters(self, state: AudioState) -> AudioState:
        """``state`` cast to the adapters' dtype and device (the backbone's for a chain without parameters)."""
        target = next(iter(self.adapters.parameters()), None)
        if target is None:
            target = next(self.backbone.parameters())
        return state.replace(
            embeds=state.embeds.to(device=target.device, dtype=target.dtype),
            lengths=state.lengths.to(target.device),
            speech_lengths=None if state.speech_lengths is None else state.speech_lengths.to(target.device),
        )

    def _run_chain(self, state: AudioState, stop_after_ctc: bool, num_windows: torch.Tensor) -> AudioState:
        """The adapter chain over the encoder's ``state`` (each adapter told the window length in
        its input frames); ``encoder_lengths`` and ``num_windows`` set on the result, and an
        utterance vector put before the audio tokens (unless a CTC-only chain stopped early)."""
        encoder_frames = state.lengths
        window = state.window_frames
        for adapter in self.adapters.values():
            state = adapter(state.replace(window_frames=window))
            if window is not None:
                window = int(adapter.output_lengths(torch.tensor([window], device=encoder_frames.device)).item())
            if stop_after_ctc and state.ctc_logits is not None:
                break
        else:
            state = state.with_utterance_token()
        return state.replace(encoder_lengths=encoder_frames, num_windows=num_windows.to(encoder_frames.device))

    def splice(
        self,
        state: AudioState | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        padding_side: Literal["left", "right"] = "right",
    ) -> Spliced:
        """Token embeddings of ``input_ids [B, L]`` with ``state``'s audio embeddings put at the
        audio placeholders (ids, mask and labels are moved to the backbone's device, the audio
        cast to its dtype)."""
        device = next(self.backbone.parameters()).device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        labels = None if labels is None else labels.to(device)
        token_embeds = self.backbone.embed_tokens(input_ids)
        if state is None:
            dim = token_embeds.shape[-1]
            audio = token_embeds.new_zeros(0, 0, dim)
            lengths = torch.zeros(0, dtype=torch.long, device=device)
        else:
            audio, lengths = state.embeds, state.lengths.to(device)
        return splice_audio(
            token_embeds,
            input_ids,
            attention_mask,
            audio.to(device=device, dtype=token_embeds.dtype),
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
        encoder_embeds: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
        run_backbone: bool | None = None,
        stop_after_ctc: bool = False,
        encoder_speech_lengths: torch.Tensor | None = None,
        lm_reduction: str = "token",
        clip_targets: torch.Tensor | None = None,
    ) -> SpeechLMOutput:
        """Run the model and report every loss it can compute, unweighted.

        ``input_features``/``feature_lengths`` (or cached ``encoder_embeds``/``encoder_lengths``)
        hold one row per audio placeholder in ``input_ids`` (row-major order); they go
        through :meth:`encode_audio`. The backbone runs when ``run_backbone`` is true (default:
        when ``input_ids`` are given); ``stop_after_ctc`` ends the adapter chain at the first
        adapter producing CTC logits (see :meth:`encode_audio`). Training stages set both
        (:mod:`swv.train.stages`); the model never weighs losses.

        Losses on the output: ``lm_loss`` (with ``labels`` and the backbone run),
        ``ctc_loss`` (with ``ctc_targets``/``ctc_target_lengths``; rows with an empty target are
        left out), ``aux_losses`` (whatever the adapters reported in ``AudioState.aux_losses``).
        ``loss`` has its Hugging Face meaning: it is ``lm_loss``, the token-mean next-token
        cross-entropy of the backbone over the positions whose label is not -100 (``labels``
        are shifted by one inside, as in a causal LM), and ``None`` without ``labels``; CTC and
        auxiliary losses are never part of it. ``lm_reduction="row"`` averages each row's tokens
        first, then the rows (:func:`~swv.model.losses.lm_loss`; a stage's ``lm_reduction``).
        ``clip_targets [B_a, K]`` (one row per audio row): whole-clip labels for the adapters
        that learn from them (:meth:`encode_audio`).
        """
        if run_backbone is None:
            run_backbone = input_ids is not None
        elif run_backbone and input_ids is None:
            raise InputError("run_backbone=True needs input_ids")
        state = None
        if input_features is not None or encoder_embeds is not None:
            state = self.encode_audio(input_features, feature_lengths, encoder_embeds=encoder_embeds,
                                      encoder_lengths=encoder_lengths, stop_after_ctc=stop_after_ctc,
                                      encoder_speech_lengths=encoder_speech_lengths, clip_targets=clip_targets)
        out = SpeechLMOutput()
        if state is not None:
            out.ctc_logits, out.ctc_lengths, out.keep_mask = state.ctc_logits, state.ctc_lengths, state.keep_mask
            out.audio_embeds, out.audio_lengths = state.embeds, state.lengths
            out.aux_losses = dict(state.aux_losses)
            if ctc_targets is not None:
                out.ctc_loss = self._ctc_loss(state, ctc_targets, ctc_target_lengths)
        if run_backbone:
            assert input_ids is not None
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            self._language_model(out, self.splice(state, input_ids, mask, labels), lm_reduction)
        return out

    def _language_model(self, out: SpeechLMOutput, spliced: Spliced, lm_reduction: str = "token") -> None:
        """Run the backbone on the spliced inputs; set ``logits`` (unless training with labels,
        where the LM head runs on the labelled positions only) and ``lm_loss``/``loss``."""
        lm_logits: torch.Tensor | VocabLogits | None = None
        if self.training and spliced.labels is not None:
            lm_logits = self.backbone.factored_logits(spliced.inputs_embeds, spliced.attention_mask, spliced.position_ids)
        if lm_logits is None:
            lm_out = self.backbone(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                position_ids=spliced.position_ids,
            )
            out.logits = lm_logits = lm_out.logits
        if spliced.labels is not None:
            out.lm_loss = lm_loss(lm_logits, spliced.labels, lm_reduction)
            out.loss = out.lm_loss

    def _ctc_loss(
        self, state: AudioState, ctc_targets: torch.Tensor, ctc_target_lengths: torch.Tensor | None
    ) -> torch.Tensor | None:
        """CTC loss of the chain's CTC logits against ``ctc_targets [B, S]``; ``None`` when no
        row has a target."""
        if state.ctc_logits is None or state.ctc_lengths is None:
            raise ComponentError("a CTC loss was requested but no adapter in the chain produces CTC logits")
        if ctc_target_lengths is None:
            raise InputError("ctc_target_lengths is required with ctc_targets")
        rows = ctc_target_lengths > 0  # rows without a transcript take no CTC loss
        if not bool(rows.any()):
            return None
        return ctc_loss(
            state.ctc_logits.select_rows(rows),
            state.ctc_lengths[rows],
            ctc_targets[rows],
            ctc_target_lengths[rows],
            self.audio_token_id,
        )

    def generation_defaults(self) -> GenerationDefaults:
        """This model's decoding defaults (``config.generation`` over greedy, 256 new tokens)."""
        return GenerationDefaults.model_validate(self.config.generation or {})

    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer (see :mod:`swv.model.stopping`): the backbone generation
        config's eos id(s), the tokenizer's eos and the chat template's end-of-turn token."""
        tokenizer = self.tokenizer
        return stop_token_ids(
            tokenizer, self.backbone.hf_model.generation_config, tokenizer.convert_ids_to_tokens(self.audio_token_id)
        )

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        *,
        waveforms: Sequence[np.ndarray] | None = None,
        encoder_embeds: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
        audio_state: AudioState | None = None,
        window_batch_size: int | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Answer left-padded prompts ``input_ids [B, L]`` (``attention_mask [B, L]``).

        The audio (one row per audio placeholder, in row-major order: a conversation may hold
        several) is any input of
        :meth:`encode_audio`, or its result as ``audio_state``; it is encoded once, spliced in
        (batches left-padded after splicing) and the backbone generates with its KV cache.
        ``generate_kwargs`` go to transformers' ``generate``; ``eos_token_id`` defaults to
        :meth:`stop_token_ids`. Returns the new token ids ``[B, N]`` (rows that stop early are
        padded with the pad id; cut them with :func:`swv.model.stopping.cut_at_stop`).
        """
        has_input = input_features is not None or waveforms is not None or encoder_embeds is not None
        if audio_state is not None and has_input:
            raise InputError("generate takes either audio_state or audio inputs, not both")
        state = audio_state
        if has_input:
            state = self.encode_audio(
                input_features,
                feature_lengths,
                waveforms=waveforms,
                encoder_embeds=encoder_embeds,
                encoder_lengths=encoder_lengths,
                window_batch_size=window_batch_size,
            )
        spliced = self.splice(state, input_ids, attention_mask, padding_side="left")
        generate_kwargs.setdefault("eos_token_id", self.stop_token_ids())
        return self.backbone.generate(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            **generate_kwargs,
        )

    # -- the model directory (swv.model.directory) --------------------------------------------
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

        Layout: ``swv_config.json`` and the same config as ``config.json`` (``model_type``
        ``swv_speechlm``, for transformers' Auto classes, see :mod:`swv.model.hf_auto`);
        ``adapters/<name>.safetensors``; LoRA in PEFT format (``adapter_model.safetensors`` +
        ``adapter_config.json``, whose base model is the export's own backbone: ``backbone``,
        relative to the export, when bundled, else the backbone's ``path`` and ``revision``);
        the processor (:class:`~swv.model.processor.SpeechLMProcessor`: the tokenizer and
        ``processor_config.json``); the model card ``README.md`` (:mod:`swv.model.card`);
        ``encoder.safetensors`` only if the encoder was trained (or ``save_encoder``).
        A referenced (not bundled) encoder or backbone loaded from the Hugging Face Hub is
        recorded with the commit it was loaded at as its ``revision``.
        The encoder and backbone are referenced by their config unless ``bundle`` (or their
        ``needs_bundle`` is true, e.g. a random init or a GGUF source, or the backbone's base
        weights were trained), in which case full copies go to ``encoder/`` and ``backbone/``
        (their ``save_pretrained``/``save_base`` and ``bundled_config``). ``merge_lora`` writes
        the LoRA-merged backbone to ``backbone/``.
        """
        return model_directory.save_model(self, Path(save_directory), bundle=bundle, merge_lora=merge_lora, save_encoder=save_encoder)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        source: str | os.PathLike[str],
        *,
        revision: str | None = None,
        registry: Registry | None = None,
        lora_trainable: bool = False,
        trust_remote_code: bool = False,
        **_: Any,
    ) -> SpeechLM:
        """Rebuild a model written by :meth:`save_pretrained` from a local directory or a
        Hugging Face Hub id (at ``revision``: branch, tag or commit), fetched into the Hugging
        Face cache through :func:`swv.core.hub.resolve_dir` (offline: ``HF_HUB_OFFLINE=1`` uses the
        cache only). Other keyword arguments (those transformers' ``AutoModel`` passes) are
        ignored.

        A model directory is data: its ``swv_config.json`` cannot enable code execution. A
        component that asks for ``trust_remote_code`` loads only when the caller passes
        ``trust_remote_code=True`` (``swv infer --trust-remote-code``), and then with a warning
        naming the Python files it ships. Relative paths in the config must stay inside the
        directory. Every ``*.safetensors`` file is checked to be complete before anything loads, and the
        config against the weights' shapes on the meta device
        (:func:`swv.model.directory.check_against_weights`).
        """
        registry = _registry(registry)
        directory, data = model_directory.read_saved_config(source, revision, registry, trust_remote_code)
        try:
            model_directory.check_against_weights(directory, data, lambda: cls(SpeechLMConfig(**data), registry=registry))
            model = cls(SpeechLMConfig(**data), registry=registry)
            model_directory.load_weights(model, directory, lora_trainable)
        except ComponentError as exc:
            raise InputError(f"{directory / CONFIG_NAME}: {first_line(exc)}") from None
        except SwvError:
            raise
        except Exception as exc:  # a library (tokenizers, peft, transformers) choking on a malformed file
            raise InputError(
                f"{directory}: cannot load the model, a file of the directory is malformed "
                f"({type(exc).__name__}: {first_line(exc)})"
            ) from exc
        return model.eval()


# transformers' Auto classes know swv models (see swv.model.hf_auto): no trust_remote_code needed
AutoConfig.register(SpeechLMConfig.model_type, SpeechLMConfig, exist_ok=True)
AutoModel.register(SpeechLMConfig, SpeechLM, exist_ok=True)
AutoProcessor.register(SpeechLMConfig, SpeechLMProcessor, exist_ok=True)
