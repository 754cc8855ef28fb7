"""Inference: ``Pipeline`` turns audio + an instruction into text with a saved swv model.

>>> pipe = Pipeline.from_pretrained("runs/soundwave/final")          # doctest: +SKIP
>>> pipe("clip.wav", prompt="Transcribe the speech.")                # doctest: +SKIP
>>> pipe(["a.wav", "b.flac"], batch_size=8, return_stats=True)       # doctest: +SKIP
>>> for piece in pipe.stream("clip.wav", prompt="What is the speaker's emotion?"):  # doctest: +SKIP
...     print(piece, end="", flush=True)
>>> pipe.chat([{"role": "user", "content": [{"type": "audio", "path": "a.wav"},  # doctest: +SKIP
...            {"type": "text", "text": "Who speaks?"}]}, {"role": "assistant", "content": "A man."},
...            {"role": "user", "content": [{"type": "audio", "path": "b.wav"},
...            {"type": "text", "text": "And here?"}]}])

Conversations (:meth:`Pipeline.chat`): OpenAI-style messages whose user turns mix text and
audio parts (several clips, each at its place; see :mod:`swv.infer.chat`) are rendered with the
backbone's chat template; every clip's audio embeddings replace its placeholder.

Inputs go through the model's :class:`~swv.model.processor.SpeechLMProcessor` (:attr:`Pipeline.processor`),
the one road from audio + text to the model's inputs and from generated ids to text: audio
inputs are file paths, encoded file bytes, or 1-D float numpy arrays with their explicit
``sample_rate``; everything is mixed to mono and resampled to the encoder's rate, and prompts are
rendered with the model's system prompt and chat template.

Long audio: a clip longer than the encoder's window (:attr:`Pipeline.window_seconds`, 30 s for
Whisper) is split into consecutive windows whose encoder outputs are joined along time before
the adapter chain (see :mod:`swv.nn.windowing`), so nothing is truncated; attention in the
adapters stays within a window, so memory grows linearly with the duration. Clips longer than
``max_duration`` (default :data:`DEFAULT_MAX_DURATION`, 10 minutes; ``None`` for no limit) are
rejected with an :class:`~swv.core.errors.InputError`.

Batches: inputs are grouped ``batch_size`` at a time (in input order), the processor left-pads
the prompts (:meth:`SpeechLMProcessor.collate`), the audio goes through
:meth:`SpeechLM.encode_audio` and :meth:`SpeechLM.generate` splices the audio in and lets the
backbone generate with its KV cache. The processor cuts each row at its first stop
token (:mod:`swv.model.stopping`: the tokenizer's eos, the generation config's eos ids and the
chat template's end-of-turn token) and decoded with ``skip_special_tokens``. With greedy
decoding a batch gives the same text as one input at a time.

Runaway answers: an answer that renders the speech (a transcript or translation: the request's
task is ``asr`` or ``st``, or its instruction is the model's default instruction of one of
them, :func:`swv.model.prompts.renders_speech`) gets at most the audio-derived
:func:`swv.model.stopping.length_bound` of new tokens, per row (transformers
``StoppingCriteria``); every answer goes through the repetition controls
(``no_repeat_ngram_size``, ``repetition_penalty``: transformers' logits processors). Their
defaults are the model's (:class:`~swv.model.defaults.GenerationDefaults`); ``length_bound=False``,
``no_repeat_ngram_size=0`` and ``repetition_penalty=1.0`` turn them off.

Stats (:class:`Stats`, per request): ``audio_seconds``; ``num_windows``; ``encoder_frames`` (valid
encoder frames, summed over windows); ``audio_tokens`` (audio embeddings given to the LLM after
the adapter chain); ``compression_ratio = audio_tokens / encoder_frames``;
``time_to_first_token`` (seconds from the start of the request's batch, feature extraction
included, to its first generated token); ``new_tokens`` (generated tokens, stop token
included); ``total_seconds`` (the batch's wall time, audio decoding excluded) and
``tokens_per_second = new_tokens / total_seconds``. In a batch every request shares the batch's
timings.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from swv.core.audio import DEFAULT_MAX_DURATION
from swv.core.devices import resolve_device
from swv.core.dtypes import torch_dtype
from swv.core.errors import InputError, SwvError, UsageError, first_line
from swv.core.hub import resolve_model
from swv.infer.batching import Prepared, Result, Stats, encode_requests, generate_prepared, token_budget
from swv.infer.rescoring import check_ctc_head, rescore_with_ctc
from swv.infer.chat import AudioPart, ParsedConversation, RequestLimits, parse_messages
from swv.infer.settings import GenerationSettings
from swv.infer.streaming import TextStream, TokenClock
from swv.model.defaults import ASR_INSTRUCTION
from swv.model.processor import AudioInput, ChatRequest, SpeechLMProcessor, Waveform, decode_audio, input_name
from swv.model.speechlm import SpeechLM
from swv.nn.state import AudioState

# The names of Pipeline's API (its arguments and results) are importable from here, where they
# are defined in swv.infer.settings / batching / streaming and swv.model.processor.
__all__ = [
    "DEFAULT_MAX_DURATION",
    "DEFAULT_PROMPT",
    "ChatRequest",
    "GenerationSettings",
    "Pipeline",
    "Prepared",
    "Result",
    "Stats",
    "TextStream",
    "Waveform",
    "decode_audio",
]

#: Instruction used when none is given.
DEFAULT_PROMPT = ASR_INSTRUCTION


class Pipeline:
    """Speech + instruction -> text with a :class:`~swv.model.speechlm.SpeechLM`.

    Build with :meth:`from_pretrained` (a saved model directory) or ``Pipeline(model)``. The
    model is put in eval mode. Inputs and answers go through ``processor`` (default: the
    model's, :meth:`SpeechLMProcessor.from_model`). ``system_prompt=None`` uses the
    processor's (the model's saved system prompt, the paper's by default); ``""`` uses none.
    """

    def __init__(
        self, model: SpeechLM, system_prompt: str | None = None, processor: SpeechLMProcessor | None = None
    ) -> None:
        self.model = model.eval()
        if processor is None:
            processor = SpeechLMProcessor.from_model(model)
        self.processor = processor.with_system_prompt(system_prompt)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def stop_ids(self) -> torch.Tensor:
        """``[K]`` ids that end an answer (the processor's)."""
        return self.processor.stop_ids

    @property
    def system_prompt(self) -> str | None:
        return self.processor.system_prompt

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        system_prompt: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> Pipeline:
        """Load a model written by ``SpeechLM.save_pretrained`` (a directory, or a Hugging Face Hub
        id at ``revision``: see :func:`swv.core.hub.resolve_model`) onto ``device``, optionally cast to
        ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"`` or a torch dtype).
        ``trust_remote_code`` lets a component that asks for it run the Python code its
        directory ships (see :meth:`SpeechLM.from_pretrained`). The processor is the one saved
        in the directory (:meth:`SpeechLMProcessor.from_pretrained`)."""
        torch_device = _parse_device(device)
        weights_dtype = _parse_dtype(dtype)
        path = resolve_model(model_dir, revision)
        try:
            model = SpeechLM.from_pretrained(path, trust_remote_code=trust_remote_code)
            processor = SpeechLMProcessor.from_pretrained(path, model=model)
        except SwvError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # e.g. truncated safetensors
            raise InputError(f"{path}: cannot load the model ({first_line(exc)})") from None
        try:
            model.to(device=torch_device, dtype=weights_dtype)
        except (RuntimeError, AssertionError) as exc:
            raise UsageError(f"device {device}: not usable here ({first_line(exc)})") from None
        return cls(model, system_prompt=system_prompt, processor=processor)

    # -- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Sample rate (Hz) the encoder expects; inputs are resampled to it."""
        return self.processor.sampling_rate

    def audio_seconds(self, request: ChatRequest) -> float:
        """Seconds of a request's audio (its clips together), known before it is encoded."""
        return request.audio_samples / self.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def window_seconds(self) -> float | None:
        """Length of one encoder window in seconds (Whisper: 30); ``None`` if unbounded."""
        samples = self.model.audio_window_samples
        return None if samples is None else samples / self.sample_rate

    def resolve(self, settings: GenerationSettings) -> GenerationSettings:
        """``settings`` with what they leave open taken from the model's saved defaults."""
        return settings.over(self.model.generation_defaults())

    def rescores(self, request: ChatRequest, settings: GenerationSettings) -> bool:
        """Whether a non-streamed answer to ``request`` is rescored with the CTC head (a transcript,
        and the resolved ``ctc_weight`` above 0; :mod:`swv.infer.rescoring`)."""
        return request.transcript and bool(self.resolve(settings).ctc_weight)

    def check_rescoring(self, settings: GenerationSettings) -> None:
        """A :class:`UsageError` when the resolved ``ctc_weight`` is above 0 but the model has no
        CTC head to rescore transcripts with (checked before anything is generated)."""
        check_ctc_head(self.model, self.resolve(settings).ctc_weight)

    def token_budget(self, settings: GenerationSettings, state: AudioState) -> int:
        """Most new tokens for a batch: ``max_new_tokens`` (resolved), plus the audio tokens of the
        longest clip (``state.lengths``) when the answer starts with a transcript."""
        return token_budget(self.resolve(settings), state)

    def row_limits(
        self, prepared: Prepared, settings: GenerationSettings, requested: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Most new tokens of each row of a prepared batch, ``[B]`` (:meth:`Prepared.row_limits`
        with the resolved settings): ``requested[b]`` (default: :meth:`token_budget`), and for a
        request whose answer renders its speech at most the length bound of its audio."""
        return prepared.row_limits(self.resolve(settings), self.sample_rate, requested)

    def default_prompt(self, task: str = "asr", language: str | None = None) -> str:
        """The model's default instruction for ``task`` (the table training used)."""
        return self.processor.default_instruction(task, language)

    # -- inputs -----------------------------------------------------------------------------
    def load(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        name: str | None = None,
        max_duration: float | None = DEFAULT_MAX_DURATION,
        max_channels: int | None = None,
    ) -> Waveform:
        """Decode, mix to mono and resample one input to :attr:`sample_rate`
        (:meth:`SpeechLMProcessor.load`: ``sample_rate`` is the rate of a numpy array, required
        for one; with ``max_duration`` (seconds; ``None``: no limit) or ``max_channels``, a
        clip over them raises :class:`InputError`, a file's before it is decoded)."""
        return self.processor.load(audio, sample_rate=sample_rate, name=name, max_duration=max_duration,
                                   max_channels=max_channels)

    def prepare(self, samples: np.ndarray, rate: int, name: str, *, max_duration: float | None = DEFAULT_MAX_DURATION) -> Waveform:
        """Check an already decoded mono waveform at ``rate`` and resample it."""
        return self.processor.prepare(samples, rate, name, max_duration=max_duration)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Chat-template ids of one request: system prompt, user turn (audio + ``prompt``),
        assistant header."""
        return self.processor.prompt_ids(prompt)

    def request(self, waveform: Waveform, prompt: str, task: str | None = None) -> ChatRequest:
        """A one-turn request: ``waveform`` followed by the instruction ``prompt`` (see
        :meth:`SpeechLMProcessor.request`: ``task`` decides whether the length bound applies)."""
        return self.processor.request(waveform, prompt, task)

    def chat_request(
        self, messages: Any, *, max_duration: float | None = None, base_dir: str | os.PathLike[str] | None = None,
        local_audio: bool = True, limits: RequestLimits | None = None,
    ) -> ChatRequest:
        """Check, render and decode an OpenAI-style conversation (see :mod:`swv.infer.chat`):
        prompt ids with one placeholder per clip, and the clips. ``base_dir`` resolves relative
        audio paths; ``max_duration`` rejects long clips; ``local_audio=False`` accepts only
        ``input_audio`` parts (no file paths); ``limits`` bound the text, the clips, their
        channels and total duration (:class:`RequestLimits`), checked from the clips' headers
        before any clip is decoded or any text tokenized."""
        parsed = self.parse_conversation(messages, base_dir=base_dir, local_audio=local_audio)
        return self.parsed_request(parsed, max_duration=max_duration, limits=limits)

    def parse_conversation(
        self, messages: Any, *, base_dir: str | os.PathLike[str] | None = None, local_audio: bool = True
    ) -> ParsedConversation:
        """The first step of :meth:`chat_request`: the messages checked and rendered, their audio
        parts collected (``input_audio`` bytes decoded from base64; no clip decoded)."""
        return parse_messages(messages, self.processor.audio_token, None if base_dir is None else Path(base_dir),
                              local_audio=local_audio)

    def check_conversation(
        self, parsed: ParsedConversation, *, max_duration: float | None = None, limits: RequestLimits | None = None
    ) -> int:
        """The second step: ``limits`` checked from the clips' headers (:meth:`RequestLimits.check`);
        returns the samples decoding the clips will produce (frames x channels over the clips)."""
        return (limits or RequestLimits()).check(parsed, self.processor.audio_token, max_duration)

    def checked_request(
        self, parsed: ParsedConversation, *, max_duration: float | None = None, max_channels: int | None = None
    ) -> ChatRequest:
        """The last step, for a conversation :meth:`check_conversation` passed: its clips decoded
        (each header checked again against ``max_duration`` and ``max_channels`` by the decoder)
        and its prompt tokenized."""
        waveforms = [self._load_part(part, max_duration, max_channels) for part in parsed.audio]
        return self.processor.chat_request(parsed.messages, waveforms)

    def parsed_request(
        self, parsed: ParsedConversation, *, max_duration: float | None = None, limits: RequestLimits | None = None
    ) -> ChatRequest:
        """:meth:`chat_request` of an already parsed conversation (its bounds checked from the
        clips' headers first, then the clips decoded)."""
        limits = limits or RequestLimits()
        self.check_conversation(parsed, max_duration=max_duration, limits=limits)
        return self.checked_request(parsed, max_duration=max_duration, max_channels=limits.max_channels)

    def _load_part(self, part: AudioPart, max_duration: float | None, max_channels: int | None) -> Waveform:
        return self.load(part.source, sample_rate=part.sample_rate, name=part.where, max_duration=max_duration,
                         max_channels=max_channels)

    # -- generation -------------------------------------------------------------------------
    def encode_requests(self, requests: Sequence[ChatRequest], window_batch_size: int | None = None) -> Prepared:
        """The processor's batch of the requests (:meth:`SpeechLMProcessor.collate`: left-padded
        prompts, clips) with every clip encoded (windowed) in one :meth:`SpeechLM.encode_audio` call."""
        return encode_requests(self.model, self.processor, requests, window_batch_size)

    def generate_prepared(
        self,
        prepared: Prepared,
        settings: GenerationSettings,
        streamer: BaseStreamer | None = None,
        stop: threading.Event | None = None,
        row_limits: Sequence[int] | None = None,
        criteria: Sequence[StoppingCriteria] = (),
        processors: Sequence[LogitsProcessor] = (),
    ) -> torch.Tensor:
        """:meth:`SpeechLM.generate` on a prepared batch: ``[B, N]`` new token ids. ``stop``
        ends every row once set; ``row_limits`` caps each row's new tokens, and so does the
        length bound (:meth:`row_limits`): a row past its limit is finished and padded, the
        others go on (cut the rows with the same :meth:`row_limits`). ``criteria`` and
        ``processors``: extra per-row stopping criteria and logits processors (see
        :func:`~swv.infer.batching.generate_prepared`). Transcripts are not rescored here: their
        answers may be streamed already (:meth:`rescore` does it; :meth:`generate_requests` and
        ``swv serve``'s non-streamed requests call it)."""
        resolved = self.resolve(settings)
        limits = prepared.row_limits(resolved, self.sample_rate, row_limits)
        return generate_prepared(self.model, prepared, resolved, limits, streamer, stop, criteria, processors)

    def rescore(
        self, prepared: Prepared, new_tokens: torch.Tensor, settings: GenerationSettings, limits: torch.Tensor,
        rows: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``new_tokens [B, N]`` of a prepared batch with the transcripts among ``rows`` (default:
        every row) rescored with the CTC head when the resolved ``ctc_weight`` is above 0
        (:func:`~swv.infer.rescoring.rescore_with_ctc`; ``limits [B]``: the rows' token limits);
        unchanged otherwise."""
        weight = self.resolve(settings).ctc_weight
        if not weight:
            return new_tokens
        return rescore_with_ctc(self.model, prepared, new_tokens, limits, float(weight), rows)

    def generate_requests(self, requests: Sequence[ChatRequest], settings: GenerationSettings) -> list[Result]:
        """One batch (no seeding, no splitting): all ``requests`` are generated together."""
        if not requests:
            raise UsageError("generate_requests: no requests")
        self.check_rescoring(settings)  # before anything is encoded
        clock = TokenClock()
        start = time.perf_counter()
        with torch.inference_mode():
            prepared = self.encode_requests(requests)
            limits = self.row_limits(prepared, settings)
            new_tokens = self.generate_prepared(prepared, settings, clock, row_limits=limits.tolist())
            new_tokens = self.rescore(prepared, new_tokens, settings, limits)
        end = time.perf_counter()
        texts, generated, _ = self.processor.decode_generated(new_tokens, limits)
        stats = prepared.stats(generated, self.sample_rate, start, clock.first_token_time, end)
        return [Result(text, s) for text, s in zip(texts, stats)]

    def generate_batch(
        self, waveforms: Sequence[Waveform], prompts: Sequence[str], settings: GenerationSettings,
        tasks: Sequence[str | None] | None = None,
    ) -> list[Result]:
        """One batch (no seeding, no splitting): all ``waveforms`` are generated together;
        ``tasks`` (one per waveform, ``None`` for unknown) decide which answers render the speech
        (see :meth:`request`)."""
        if len(waveforms) != len(prompts) or not waveforms or (tasks is not None and len(tasks) != len(prompts)):
            raise UsageError(f"generate_batch: got {len(waveforms)} waveform(s) and {len(prompts)} prompt(s)")
        kinds = list(tasks) if tasks is not None else [None] * len(prompts)
        return self.generate_requests([self.request(w, p, t) for w, p, t in zip(waveforms, prompts, kinds)], settings)

    def generate(
        self,
        waveforms: Sequence[Waveform],
        prompts: Sequence[str],
        settings: GenerationSettings,
        *,
        batch_size: int = 8,
    ) -> list[Result]:
        """Decoded waveforms -> results, ``batch_size`` at a time, in input order."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        results: list[Result] = []
        for start in range(0, len(waveforms), batch_size):
            stop = start + batch_size
            results.extend(self.generate_batch(waveforms[start:stop], prompts[start:stop], settings))
        return results

    def __call__(
        self,
        audio: AudioInput | Sequence[AudioInput],
        prompt: str | Sequence[str] | None = None,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        seed: int | None = None,
        no_repeat_ngram_size: int | None = None,
        repetition_penalty: float | None = None,
        length_bound: bool | None = None,
        batch_size: int = 8,
        max_duration: float | None = DEFAULT_MAX_DURATION,
        return_stats: bool = False,
    ) -> str | Result | list[str] | list[Result]:
        """Answer ``prompt`` about ``audio`` (one input or a list; ``prompt`` may be a list of the
        same length; default: the model's ASR instruction). Generation settings left ``None`` take
        the model's saved defaults (see :class:`GenerationSettings`; an answer to the model's
        transcription or translation instruction is capped by the audio's length bound unless
        ``length_bound=False``). Returns the text (or a :class:`Result` with ``return_stats``), or a list
        for a list input. Clips longer than the encoder window are windowed (never truncated);
        clips longer than ``max_duration`` seconds are rejected."""
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty, length_bound=length_bound,
        )
        single = not isinstance(audio, (list, tuple))
        items = [audio] if single else list(audio)
        if not items:
            return []
        if prompt is None:
            prompt = self.default_prompt()
        prompts = [prompt] * len(items) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(items):
            raise UsageError(f"got {len(items)} audio input(s) but {len(prompts)} prompt(s)")
        waveforms = [
            self.load(item, sample_rate=sample_rate, name=input_name(item, None if single else i),
                      max_duration=max_duration)
            for i, item in enumerate(items)
        ]
        results = self.generate(waveforms, prompts, settings, batch_size=batch_size)
        out = results if return_stats else [r.text for r in results]
        return out[0] if single else out

    def stream(
        self,
        audio: AudioInput,
        prompt: str | None = None,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        seed: int | None = None,
        no_repeat_ngram_size: int | None = None,
        repetition_penalty: float | None = None,
        length_bound: bool | None = None,
        max_duration: float | None = DEFAULT_MAX_DURATION,
    ) -> TextStream:
        """Stream the answer for one input: iterate the returned :class:`TextStream` for text
        pieces as they are generated (transformers' ``TextIteratorStreamer``, generation in a
        background thread); afterwards ``.text`` and ``.stats`` hold the whole answer. The
        input is decoded (and checked) right away."""
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty, length_bound=length_bound,
        )
        waveform = self.load(audio, sample_rate=sample_rate, max_duration=max_duration)
        return TextStream(self, self.request(waveform, self.default_prompt() if prompt is None else prompt), settings)

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        seed: int | None = None,
        no_repeat_ngram_size: int | None = None,
        repetition_penalty: float | None = None,
        length_bound: bool | None = None,
        max_duration: float | None = None,
        stream: bool = False,
        return_stats: bool = False,
    ) -> str | Result | TextStream:
        """The assistant's next answer in an OpenAI-style conversation whose user turns mix
        text and audio parts (see :mod:`swv.infer.chat`; several clips, each at its place).

        Returns the text (a :class:`Result` with ``return_stats``), or with ``stream`` a
        :class:`TextStream` to iterate for the pieces. A one-turn conversation
        ``[audio, prompt]`` gives the same answer as ``pipe(audio, prompt)``.
        """
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty, length_bound=length_bound,
        )
        request = self.chat_request(list(messages), max_duration=max_duration)
        if stream:
            return TextStream(self, request, settings)
        if seed is not None:
            torch.manual_seed(seed)
        result = self.generate_requests([request], settings)[0]
        return result if return_stats else result.text


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return torch_dtype(dtype)
    except ValueError as exc:
        raise UsageError(f"dtype: {exc}") from None


def _parse_device(device: str | torch.device) -> torch.device:
    return resolve_device(device)
