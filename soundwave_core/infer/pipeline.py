"""Inference: ``Pipeline`` turns audio + an instruction into text with a saved swv model.

>>> pipe = Pipeline.from_pretrained("runs/soundwave/final")          # doctest: +SKIP
>>> pipe("clip.wav", prompt="Transcribe the speech.")                # doctest: +SKIP
>>> pipe(["a.wav", "b.flac"], batch_size=8, return_stats=True)       # doctest: +SKIP
>>> for piece in pipe.stream("clip.wav", prompt="What is the speaker's emotion?"):  # doctest: +SKIP
...     print(piece, end="", flush=True)

Audio inputs are file paths, encoded file bytes, or 1-D float numpy arrays at ``sample_rate``
(default: the encoder's rate); everything is mixed to mono and resampled to the encoder's rate.

Long audio: a clip longer than the encoder's window (:attr:`Pipeline.window_seconds`, 30 s for
Whisper) is split into consecutive windows whose encoder outputs are joined along time before
the adapter chain (see :mod:`swv.infer.windowing`), so nothing is truncated; attention in the
adapters stays within a window, so memory grows linearly with the duration. Clips longer than
``max_duration`` (default :data:`DEFAULT_MAX_DURATION`, 10 minutes; ``None`` for no limit) are
rejected with an :class:`~swv.errors.InputError`.

Batches: inputs are grouped ``batch_size`` at a time (in input order), the audio goes through
:meth:`SpeechLM.encode_audio`, prompts are left-padded and :meth:`SpeechLM.generate` splices the
audio in and lets the backbone generate with its KV cache. Each row is cut at its first stop
token (:mod:`swv.model.stopping`: the tokenizer's eos, the generation config's eos ids and the
chat template's end-of-turn token) and decoded with ``skip_special_tokens``. With greedy
decoding a batch gives the same text as one input at a time.

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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from swv.audio import read_audio, resample
from swv.dtypes import DTYPE_NAMES, torch_dtype
from swv.errors import InputError, SwvError, UsageError, first_line
from swv.model.prompts import PromptBuilder
from swv.model.speechlm import SpeechLM
from swv.model.state import AudioState
from swv.model.stopping import cut_at_stop, decode_answers, left_pad
from swv.recipes.schema import ASR_INSTRUCTION, DEFAULT_MAX_DURATION

__all__ = [
    "DEFAULT_MAX_DURATION",
    "DEFAULT_PROMPT",
    "GenerationSettings",
    "Pipeline",
    "Result",
    "Stats",
    "TextStream",
    "Waveform",
]

#: Instruction used when none is given.
DEFAULT_PROMPT = ASR_INSTRUCTION

AudioInput = str | os.PathLike[str] | bytes | bytearray | np.ndarray


# ---------------------------------------------------------------------------------------------
# Settings and results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. Greedy by default; ``temperature`` and ``top_p`` apply only with
    ``do_sample`` (other sampling knobs come from the backbone's generation config). ``seed``
    seeds torch's RNG once at the start of each call."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate``."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stats:
    """Per-request measurements (see the module docstring for the definitions)."""

    audio_seconds: float
    num_windows: int
    encoder_frames: int
    audio_tokens: int
    compression_ratio: float
    time_to_first_token: float | None
    new_tokens: int
    total_seconds: float
    tokens_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """One human-readable line."""
        ttft = "-" if self.time_to_first_token is None else f"{self.time_to_first_token:.3f} s"
        return (
            f"audio {self.audio_seconds:.2f} s ({self.num_windows} window(s)), encoder frames {self.encoder_frames}, "
            f"audio tokens {self.audio_tokens}, compression {self.compression_ratio:.3f}, TTFT {ttft}, "
            f"{self.new_tokens} new token(s) at {self.tokens_per_second:.1f} tok/s"
        )


@dataclass(frozen=True)
class Result:
    """One answer and its :class:`Stats`."""

    text: str
    stats: Stats


@dataclass(frozen=True)
class Waveform:
    """A decoded input: mono float32 ``samples [S]`` at the encoder's rate, and a name for messages."""

    samples: np.ndarray
    name: str


# ---------------------------------------------------------------------------------------------
# Audio inputs
# ---------------------------------------------------------------------------------------------
def _input_name(audio: Any, index: int | None) -> str:
    if isinstance(audio, (str, os.PathLike)):
        return os.fspath(audio)
    kind = "bytes" if isinstance(audio, (bytes, bytearray)) else "array"
    return f"<{kind}>" if index is None else f"<{kind} #{index}>"


def _check_array(array: Any, name: str) -> np.ndarray:
    """A 1-D, non-empty, finite float waveform as float32."""
    if not isinstance(array, np.ndarray):
        raise UsageError(
            f"{name}: unsupported audio input of type {type(array).__name__} "
            "(expected a path, file bytes or a 1-D numpy array)"
        )
    if array.ndim != 1:
        raise InputError(f"{name}: expected a 1-D mono waveform, got an array of shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name}: expected float samples in [-1, 1], got dtype {array.dtype}")
    if array.size == 0:
        raise InputError(f"{name}: audio has zero samples")
    if not np.isfinite(array).all():
        raise InputError(f"{name}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(array, dtype=np.float32)


def decode_audio(
    audio: AudioInput, sample_rate: int | None = None, name: str | None = None
) -> tuple[np.ndarray, int, str]:
    """Decode one input without resampling: ``(samples [S] float32, rate, name)``.

    Paths and bytes go through :func:`swv.audio.read_audio` (mono mix); arrays need
    ``sample_rate``. Raises :class:`InputError` naming the input for a missing, empty,
    unreadable or non-finite input.
    """
    name = name or _input_name(audio, None)
    if isinstance(audio, (str, os.PathLike)):
        wav, rate = read_audio(Path(audio))
        return wav, rate, name
    if isinstance(audio, (bytes, bytearray)):
        if not audio:
            raise InputError(f"{name}: empty audio input")
        import io

        stream = io.BytesIO(bytes(audio))
        stream.name = name  # read_audio names streams by their ``name``
        wav, rate = read_audio(stream)
        return wav, rate, name
    if sample_rate is None:
        raise UsageError(f"{name}: a numpy waveform needs its sample_rate")
    return _check_array(audio, name), int(sample_rate), name


# ---------------------------------------------------------------------------------------------
# Generation helpers
# ---------------------------------------------------------------------------------------------
class _TokenClock(BaseStreamer):
    """Records when generate() hands over its first new tokens (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_time: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_time = time.perf_counter()

    def end(self) -> None:
        return None


class _TimedTextStreamer(TextIteratorStreamer):
    """``TextIteratorStreamer`` (prompt skipped) that also records the first-token time and drops
    stop tokens, so a stop token that is not a special token never reaches the text."""

    def __init__(self, tokenizer: Any, stop_ids: torch.Tensor) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_ids = stop_ids
        self.clock = _TokenClock()

    def put(self, value: torch.Tensor) -> None:
        self.clock.put(value)
        if self.clock.calls == 1:
            super().put(value)  # the (empty) prompt: skipped by skip_prompt
            return
        tokens = value.reshape(-1)
        tokens = tokens[~torch.isin(tokens, self.stop_ids)]
        if tokens.numel():
            super().put(tokens)


class _StopFlag(StoppingCriteria):
    """Stops every row once ``event`` is set (a stream whose consumer went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A batch ready to generate: left-padded prompts and the audio's adapter-chain output
    (``encoder_lengths``/``num_windows`` feed the stats)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    state: AudioState


class Pipeline:
    """Speech + instruction -> text with a :class:`~swv.model.speechlm.SpeechLM`.

    Build with :meth:`from_pretrained` (a saved model directory) or ``Pipeline(model)``. The
    model is put in eval mode. ``system_prompt=None`` uses the model's saved system prompt (the
    paper's by default); ``""`` uses none.
    """

    def __init__(self, model: SpeechLM, system_prompt: str | None = None) -> None:
        self.model = model.eval()
        self.system_prompt = model.config.system_prompt if system_prompt is None else system_prompt
        self.tokenizer = model.tokenizer
        audio_token = self.tokenizer.convert_ids_to_tokens(model.audio_token_id)
        self.prompts = PromptBuilder(self.tokenizer, self.system_prompt or None, audio_token)
        self.stop_ids = torch.tensor(model.stop_token_ids(), dtype=torch.long)
        self.pad_id = int(model.backbone.info().pad_token_id)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        system_prompt: str | None = None,
        trust_remote_code: bool = False,
    ) -> Pipeline:
        """Load a directory written by ``SpeechLM.save_pretrained`` onto ``device``, optionally
        cast to ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"`` or a torch dtype).
        ``trust_remote_code`` lets a component that asks for it run the Python code its
        directory ships (see :meth:`SpeechLM.from_pretrained`)."""
        torch_device = _parse_device(device)
        weights_dtype = _parse_dtype(dtype)
        path = Path(model_dir)
        if not path.is_dir():
            raise InputError(f"{path}: model directory not found" if not path.exists() else f"{path}: not a directory")
        try:
            model = SpeechLM.from_pretrained(path, trust_remote_code=trust_remote_code)
        except SwvError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # e.g. truncated safetensors
            raise InputError(f"{path}: cannot load the model ({first_line(exc)})") from None
        try:
            model.to(device=torch_device, dtype=weights_dtype)
        except (RuntimeError, AssertionError) as exc:
            raise UsageError(f"device {device}: not usable here ({first_line(exc)})") from None
        return cls(model, system_prompt=system_prompt)

    # -- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Sample rate (Hz) the encoder expects; inputs are resampled to it."""
        return int(self.model.encoder.sample_rate)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def window_seconds(self) -> float | None:
        """Length of one encoder window in seconds (Whisper: 30); ``None`` if unbounded."""
        samples = self.model.audio_window_samples
        return None if samples is None else samples / self.sample_rate

    # -- inputs -----------------------------------------------------------------------------
    def load(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        name: str | None = None,
        max_duration: float | None = DEFAULT_MAX_DURATION,
    ) -> Waveform:
        """Decode, mix to mono and resample one input to :attr:`sample_rate`.

        ``sample_rate`` is the rate of a numpy array (default: :attr:`sample_rate`). With
        ``max_duration`` (seconds; ``None``: no limit), a longer clip raises :class:`InputError`.
        """
        rate = self.sample_rate if sample_rate is None else sample_rate
        wav, rate, name = decode_audio(audio, rate, name)
        return self.prepare(wav, rate, name, max_duration=max_duration)

    def prepare(self, samples: np.ndarray, rate: int, name: str, *, max_duration: float | None = DEFAULT_MAX_DURATION) -> Waveform:
        """Check an already decoded mono waveform at ``rate`` and resample it."""
        samples = _check_array(samples, name)
        seconds = samples.shape[0] / rate
        if max_duration is not None and seconds > max_duration:
            raise InputError(
                f"{name}: {seconds:.2f} s of audio exceeds the maximum duration of {max_duration:g} s "
                "(raise it with --max-duration / max_duration=)"
            )
        return Waveform(resample(samples, rate, self.sample_rate), name)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Chat-template ids of one request: system prompt, user turn (audio + ``prompt``),
        assistant header."""
        if not isinstance(prompt, str):
            raise UsageError(f"prompt must be a string, got {type(prompt).__name__}")
        return self.prompts.generation_ids(prompt, has_audio=True)

    # -- generation -------------------------------------------------------------------------
    def _prepare(self, waveforms: Sequence[Waveform], prompts: Sequence[str], window_batch_size: int) -> _Prepared:
        """Encode the audio (windowed) through :meth:`SpeechLM.encode_audio` and left-pad the prompts."""
        ids, mask = left_pad([self.prompt_ids(p) for p in prompts], self.pad_id)
        state = self.model.encode_audio(waveforms=[w.samples for w in waveforms], window_batch_size=window_batch_size)
        return _Prepared(ids, mask, state)

    def _generate(
        self,
        prepared: _Prepared,
        settings: GenerationSettings,
        streamer: BaseStreamer,
        stop: threading.Event | None = None,
    ) -> torch.Tensor:
        """:meth:`SpeechLM.generate` on a prepared batch: ``[B, N]`` new token ids."""
        kwargs = settings.generate_kwargs()
        if stop is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopFlag(stop)])
        return self.model.generate(
            prepared.input_ids,
            prepared.attention_mask,
            audio_state=prepared.state,
            streamer=streamer,
            **kwargs,
        )

    def _stats(
        self, prepared: _Prepared, waveforms: Sequence[Waveform], generated: Sequence[int], start: float,
        first_token: float | None, end: float,
    ) -> list[Stats]:
        total = max(end - start, 1e-9)
        ttft = None if first_token is None else first_token - start
        state = prepared.state
        assert state.encoder_lengths is not None and state.num_windows is not None  # set by encode_audio
        frames = state.encoder_lengths.tolist()
        tokens = state.lengths.tolist()
        windows = state.num_windows.tolist()
        return [
            Stats(
                audio_seconds=len(w.samples) / self.sample_rate,
                num_windows=int(n_win),
                encoder_frames=int(n_frames),
                audio_tokens=int(n_tokens),
                compression_ratio=n_tokens / n_frames if n_frames else 0.0,
                time_to_first_token=ttft,
                new_tokens=int(n_new),
                total_seconds=total,
                tokens_per_second=n_new / total,
            )
            for w, n_win, n_frames, n_tokens, n_new in zip(waveforms, windows, frames, tokens, generated)
        ]

    def generate_batch(
        self, waveforms: Sequence[Waveform], prompts: Sequence[str], settings: GenerationSettings
    ) -> list[Result]:
        """One batch (no seeding, no splitting): all ``waveforms`` are generated together."""
        if len(waveforms) != len(prompts) or not waveforms:
            raise UsageError(f"generate_batch: got {len(waveforms)} waveform(s) and {len(prompts)} prompt(s)")
        clock = _TokenClock()
        start = time.perf_counter()
        with torch.inference_mode():
            prepared = self._prepare(waveforms, prompts, window_batch_size=len(waveforms))
            new_tokens = self._generate(prepared, settings, clock)
        end = time.perf_counter()
        texts, generated = decode_answers(self.tokenizer, new_tokens, self.stop_ids)
        stats = self._stats(prepared, waveforms, generated, start, clock.first_token_time, end)
        return [Result(text, s) for text, s in zip(texts, stats)]

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
        prompt: str | Sequence[str] = DEFAULT_PROMPT,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = False,
        seed: int | None = None,
        batch_size: int = 8,
        max_duration: float | None = DEFAULT_MAX_DURATION,
        return_stats: bool = False,
    ) -> str | Result | list[str] | list[Result]:
        """Answer ``prompt`` about ``audio`` (one input or a list; ``prompt`` may be a list of the
        same length). Returns the text (or a :class:`Result` with ``return_stats``), or a list
        for a list input. Clips longer than the encoder window are windowed (never truncated);
        clips longer than ``max_duration`` seconds are rejected."""
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed
        )
        single = not isinstance(audio, (list, tuple))
        items = [audio] if single else list(audio)
        if not items:
            return []
        prompts = [prompt] * len(items) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(items):
            raise UsageError(f"got {len(items)} audio input(s) but {len(prompts)} prompt(s)")
        waveforms = [
            self.load(item, sample_rate=sample_rate, name=_input_name(item, None if single else i),
                      max_duration=max_duration)
            for i, item in enumerate(items)
        ]
        results = self.generate(waveforms, prompts, settings, batch_size=batch_size)
        out = results if return_stats else [r.text for r in results]
        return out[0] if single else out

    def stream(
        self,
        audio: AudioInput,
        prompt: str = DEFAULT_PROMPT,
        *,
        sample_rate: int | None = None,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = False,
        seed: int | None = None,
        max_duration: float | None = DEFAULT_MAX_DURATION,
    ) -> TextStream:
        """Stream the answer for one input: iterate the returned :class:`TextStream` for text
        pieces as they are generated (transformers' ``TextIteratorStreamer``, generation in a
        background thread); afterwards ``.text`` and ``.stats`` hold the whole answer. The
        input is decoded (and checked) right away."""
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed
        )
        waveform = self.load(audio, sample_rate=sample_rate, max_duration=max_duration)
        return TextStream(self, waveform, prompt, settings)


class TextStream:
    """Iterate once for the text pieces of one answer; then ``text`` (stripped, equal to what
    :class:`Pipeline` returns for the same greedy request) and ``stats`` are set. Leaving the
    loop early stops the generation."""

    def __init__(self, pipeline: Pipeline, waveform: Waveform, prompt: str, settings: GenerationSettings) -> None:
        self._pipeline = pipeline
        self._waveform = waveform
        self._prompt = prompt
        self._settings = settings
        self._started = False
        self._error: BaseException | None = None
        self._outcome: tuple[_Prepared, torch.Tensor, float, float] | None = None
        self.text: str | None = None
        self.stats: Stats | None = None

    def _work(self, streamer: _TimedTextStreamer, stop: threading.Event) -> None:
        pipe = self._pipeline
        try:
            if self._settings.seed is not None:
                torch.manual_seed(self._settings.seed)
            start = time.perf_counter()
            with torch.inference_mode():  # thread-local: entered in this thread
                prepared = pipe._prepare([self._waveform], [self._prompt], window_batch_size=1)
                new_tokens = pipe._generate(prepared, self._settings, streamer, stop)
            self._outcome = (prepared, new_tokens, start, time.perf_counter())
        except BaseException as exc:  # re-raised in the consuming thread
            self._error = exc
            streamer.text_queue.put(streamer.stop_signal)

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise UsageError("a TextStream can be iterated only once")
        self._started = True
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        pipe = self._pipeline
        streamer = _TimedTextStreamer(pipe.tokenizer, pipe.stop_ids)
        stop = threading.Event()
        worker = threading.Thread(target=self._work, args=(streamer, stop), daemon=True)
        worker.start()
        pieces: list[str] = []
        try:
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:
            stop.set()
            worker.join()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        prepared, new_tokens, start, end = self._outcome
        _, generated = cut_at_stop(new_tokens, pipe.stop_ids)
        self.text = "".join(pieces).strip()
        self.stats = pipe._stats(prepared, [self._waveform], generated, start, streamer.clock.first_token_time, end)[0]


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise UsageError(f"dtype: unknown dtype {dtype!r}, expected one of {', '.join(DTYPE_NAMES)}")
    return torch_dtype(dtype)


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device: invalid device {device!r} ({first_line(exc)})") from None
