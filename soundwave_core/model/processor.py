"""``SpeechLMProcessor``: the one road from audio + text to a model's inputs, and from generated
ids back to text (a transformers processor; ``processing_X.py`` in transformers' layout).

Inputs:

1. audio (a path, encoded file bytes, or a 1-D float numpy array with its explicit
   ``sampling_rate``) is decoded, mixed to mono (:func:`swv.core.audio.read_audio`), checked
   (non-empty, finite, at most ``max_duration`` seconds) and resampled to the encoder's rate
   (:attr:`SpeechLMProcessor.sampling_rate`);
2. the instruction (default: the model's instruction of the task, :mod:`swv.model.defaults`
   with the model's own table over it) is rendered with the model's system prompt and the
   backbone tokenizer's chat template, the audio placeholder at the clip's place
   (:class:`~swv.model.prompts.PromptBuilder`), and tokenized;
3. a batch of requests is left-padded (``input_ids``, ``attention_mask [B, L]``) and its clips
   listed in placeholder order (``audio``: waveforms at the encoder's rate; ``clip_owner [P]``:
   the request of each clip).

Outputs: generated ids are cut at the model's stop tokens (:mod:`swv.model.stopping`) and
decoded without special tokens (:meth:`SpeechLMProcessor.batch_decode`).

What the processor leaves to the model: encoder feature extraction and the windowing of long
clips. Both belong to the encoder component (``Encoder.extract_features`` depends on its config,
e.g. Whisper's ``pad_to_30s``/``trim`` mode, and windows are cut at its ``max_samples``), whose
object carries the weights, and a processor loaded alone (``AutoProcessor``) has no encoder; so
the processor hands over waveforms at the encoder's rate and
:meth:`swv.model.speechlm.SpeechLM.encode_audio` windows them and extracts the features, windows
encoded ``window_batch_size`` at a time (the streaming path encodes one window at a time).

Saving: ``processor_config.json`` (the fields of :data:`PROCESSOR_FIELDS`) plus the tokenizer
files; :meth:`SpeechLM.save_pretrained <swv.model.speechlm.SpeechLM.save_pretrained>` writes it with
every export, and ``transformers.AutoProcessor.from_pretrained(export_dir)`` returns it (after
``import swv``; registered with the model in :mod:`swv.model.speechlm`). An export written
before processors were saved (no ``processor_config.json``) gets the processor of its model,
loaded from the directory's files.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, BatchFeature, ProcessorMixin

from swv.core.audio import DEFAULT_MAX_DURATION, read_audio, resample, too_long
from swv.core.errors import InputError, UsageError, first_line
from swv.core.hub import resolve_model
from swv.model.prompts import TRANSCRIPT_TASK, PromptBuilder, default_instruction, renders_speech, renders_transcript
from swv.model.stopping import cut_at_stop, left_pad

if TYPE_CHECKING:
    from swv.model.speechlm import SpeechLM

__all__ = [
    "PROCESSOR_FIELDS",
    "PROCESSOR_FILE",
    "Answers",
    "AudioInput",
    "ChatRequest",
    "SpeechLMProcessor",
    "Waveform",
    "check_waveform",
    "decode_audio",
    "input_name",
]

#: transformers' processor file name.
PROCESSOR_FILE = "processor_config.json"
#: What ``processor_config.json`` holds besides ``processor_class`` (the tokenizer has its own files).
PROCESSOR_FIELDS = ("sampling_rate", "audio_token", "pad_token_id", "stop_token_ids", "system_prompt", "instructions")

AudioInput = str | os.PathLike[str] | bytes | bytearray | np.ndarray


@dataclass(frozen=True)
class Waveform:
    """A decoded input: mono float32 ``samples [S]`` at the encoder's rate, and a name for messages."""

    samples: np.ndarray
    name: str


@dataclass(frozen=True)
class ChatRequest:
    """One request ready to batch: its chat-template prompt ids (ending with the assistant
    header; one audio placeholder per clip) and its decoded clips, in placeholder order.
    ``transcription``: the answer renders the speech (a transcript or translation), so the
    audio-derived length bound applies to it. ``transcript``: the answer is a transcript of its
    one clip, so it may be rescored by the clip's CTC posteriors (``ctc_weight``,
    :mod:`swv.infer.rescoring`)."""

    ids: list[int]
    waveforms: list[Waveform]
    transcription: bool = False
    transcript: bool = False

    @property
    def audio_samples(self) -> int:
        """Samples of all its clips together (at the encoder's rate): its audio length, known
        before it is encoded."""
        return sum(len(clip.samples) for clip in self.waveforms)

    @property
    def text_tokens(self) -> int:
        """Its prompt's tokens other than the audio placeholders (one per clip), known before its
        audio is encoded."""
        return len(self.ids) - len(self.waveforms)


class Answers(NamedTuple):
    """Decoded rows of generated ids: ``texts``; ``generated``, the tokens each row generated
    (its stop token included); ``stopped``, whether the row ended at a stop token (else at
    its token limit)."""

    texts: list[str]
    generated: list[int]
    stopped: list[bool]


# ---------------------------------------------------------------------------------------------
# Audio decoding
# ---------------------------------------------------------------------------------------------
def input_name(audio: Any, index: int | None) -> str:
    """How messages name an input: its path, or ``<bytes>``/``<array>`` (numbered in a list)."""
    if isinstance(audio, (str, os.PathLike)):
        return os.fspath(audio)
    kind = "bytes" if isinstance(audio, (bytes, bytearray)) else "array"
    return f"<{kind}>" if index is None else f"<{kind} #{index}>"


def check_waveform(array: Any, name: str) -> np.ndarray:
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
    audio: AudioInput, sample_rate: int | None = None, name: str | None = None, *,
    max_duration: float | None = None, max_channels: int | None = None,
) -> tuple[np.ndarray, int, str]:
    """Decode one input without resampling: ``(samples [S] float32, rate, name)``.

    Paths and bytes go through :func:`swv.core.audio.read_audio` (mono mix; their own rate;
    a header over ``max_duration`` seconds or ``max_channels`` channels is refused before
    decoding); an array needs its ``sample_rate`` (never assumed). Raises :class:`InputError`
    naming the input for a missing, empty, unreadable, too long or non-finite input.
    """
    name = name or input_name(audio, None)
    limits = {"max_seconds": max_duration, "max_channels": max_channels}
    if isinstance(audio, (str, os.PathLike)):
        wav, rate = read_audio(Path(audio), **limits)
        return wav, rate, name
    if isinstance(audio, (bytes, bytearray)):
        if not audio:
            raise InputError(f"{name}: empty audio input")
        stream = io.BytesIO(bytes(audio))
        stream.name = name  # read_audio names streams by their ``name``
        wav, rate = read_audio(stream, **limits)
        return wav, rate, name
    samples = check_waveform(audio, name)
    if sample_rate is None:
        raise UsageError(f"{name}: a numpy waveform needs its sample rate (sample_rate= / sampling_rate=)")
    if int(sample_rate) < 1:
        raise UsageError(f"{name}: sample rate must be a positive number of Hz, got {sample_rate}")
    return samples, int(sample_rate), name


# ---------------------------------------------------------------------------------------------
# The processor
# ---------------------------------------------------------------------------------------------
class SpeechLMProcessor(ProcessorMixin):
    """Audio + instruction -> a :class:`~swv.model.speechlm.SpeechLM`'s inputs, generated ids -> text.

    A ``transformers.ProcessorMixin`` whose one sub-processor is the backbone ``tokenizer``
    (with its chat template and the audio placeholder token). Fields (saved in
    ``processor_config.json``): ``sampling_rate`` (the encoder's, Hz), ``audio_token``,
    ``pad_token_id``, ``stop_token_ids``, ``system_prompt`` (``None`` or ``""``: none) and
    ``instructions`` (the model's own task -> default instruction entries, over
    :data:`~swv.model.defaults.DEFAULT_INSTRUCTIONS`). Build one with :meth:`from_model` or
    :meth:`from_pretrained`.
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str | None = None,
        *,
        sampling_rate: int,
        audio_token: str,
        pad_token_id: int,
        stop_token_ids: Sequence[int],
        system_prompt: str | None = None,
        instructions: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(tokenizer=tokenizer, chat_template=chat_template)
        self.sampling_rate = int(sampling_rate)
        self.audio_token = audio_token
        self.pad_token_id = int(pad_token_id)
        self.stop_token_ids = sorted(int(i) for i in stop_token_ids)
        self.system_prompt = system_prompt
        self.instructions = dict(instructions) if instructions else None
        self.prompts = PromptBuilder(tokenizer, system_prompt or None, audio_token, self.instructions)
        self.stop_ids = torch.tensor(self.stop_token_ids, dtype=torch.long)

    # -- building, saving, loading ------------------------------------------------------------
    @classmethod
    def from_model(cls, model: SpeechLM, system_prompt: str | None = None) -> SpeechLMProcessor:
        """The processor of a loaded model; ``system_prompt`` (``""``: none) overrides its saved one."""
        tokenizer = model.tokenizer
        return cls(
            tokenizer,
            sampling_rate=int(model.encoder.sample_rate),
            audio_token=str(tokenizer.convert_ids_to_tokens(model.audio_token_id)),
            pad_token_id=int(model.backbone.info().pad_token_id),
            stop_token_ids=model.stop_token_ids(),
            system_prompt=model.config.system_prompt if system_prompt is None else system_prompt,
            instructions=model.config.instructions,
        )

    def fields(self) -> dict[str, Any]:
        """The values of :data:`PROCESSOR_FIELDS`."""
        return {name: getattr(self, name) for name in PROCESSOR_FIELDS}

    def with_system_prompt(self, system_prompt: str | None) -> SpeechLMProcessor:
        """This processor with another system prompt (``None``: unchanged; ``""``: none)."""
        if system_prompt is None:
            return self
        return type(self)(self.tokenizer, self.chat_template, **{**self.fields(), "system_prompt": system_prompt})

    def to_dict(self) -> dict[str, Any]:
        """``processor_config.json``'s content: the fields and ``processor_class``."""
        return {**self.fields(), "processor_class": type(self).__name__}

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        model: SpeechLM | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **_: Any,
    ) -> SpeechLMProcessor:
        """The processor saved in a model directory (or Hub id at ``revision``): its
        ``processor_config.json`` and tokenizer files, or ``model``'s tokenizer when the
        caller already loaded the model. A directory without ``processor_config.json`` (an
        export older than processors) gets :meth:`from_model` of its model (``model``, or the
        directory's, loaded with ``trust_remote_code``). Other keyword arguments (those
        transformers' ``AutoProcessor`` and ``pipeline`` pass) are ignored."""
        source = os.fspath(pretrained_model_name_or_path)
        directory = resolve_model(source, None if Path(source).expanduser().is_dir() else revision)
        file = directory / PROCESSOR_FILE
        if not file.is_file():
            return cls.from_model(model if model is not None else _load_model(directory, trust_remote_code))
        fields = _read_fields(file)
        tokenizer = model.tokenizer if model is not None else _load_tokenizer(directory)
        return cls(tokenizer, **fields)

    # -- inputs -------------------------------------------------------------------------------
    def load(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        name: str | None = None,
        max_duration: float | None = DEFAULT_MAX_DURATION,
        max_channels: int | None = None,
    ) -> Waveform:
        """Decode one input (``sample_rate``: the rate of a numpy array, required for one),
        mix it to mono and resample it to :attr:`sampling_rate`; with ``max_duration``
        (seconds; ``None``: no limit) a longer clip raises :class:`InputError` (a file's or
        bytes' before decoding, from its header), as does one of more than ``max_channels``."""
        samples, rate, name = decode_audio(audio, sample_rate, name, max_duration=max_duration,
                                           max_channels=max_channels)
        return self.prepare(samples, rate, name, max_duration=max_duration)

    def prepare(
        self, samples: np.ndarray, rate: int, name: str, *, max_duration: float | None = DEFAULT_MAX_DURATION
    ) -> Waveform:
        """Check an already decoded mono waveform at ``rate`` and resample it."""
        samples = check_waveform(samples, name)
        seconds = samples.shape[0] / rate
        if max_duration is not None and seconds > max_duration:
            raise too_long(name, seconds, max_duration)
        return Waveform(resample(samples, rate, self.sampling_rate), name)

    def default_instruction(self, task: str = TRANSCRIPT_TASK, language: str | None = None) -> str:
        """The model's default instruction for ``task`` (the table training used)."""
        return default_instruction(self.prompts.instructions, task, language)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Chat-template ids of one request: system prompt, user turn (audio + ``prompt``),
        assistant header."""
        if not isinstance(prompt, str):
            raise UsageError(f"prompt must be a string, got {type(prompt).__name__}")
        return self.prompts.generation_ids(prompt, has_audio=True)

    def conversation_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat-template ids of a conversation whose user turns hold :attr:`audio_token` at each
        clip's place (see :meth:`PromptBuilder.conversation_ids`)."""
        return self.prompts.conversation_ids(messages)

    def request(self, waveform: Waveform, prompt: str, task: str | None = None) -> ChatRequest:
        """A one-turn request: ``waveform`` followed by the instruction ``prompt``. Its answer
        renders the speech (length bound) when ``task`` is a transcription-like task, or, without
        ``task``, when ``prompt`` is the model's default instruction of one
        (:func:`~swv.model.prompts.renders_speech`); likewise for a transcript (``asr``,
        :func:`~swv.model.prompts.renders_transcript`: CTC rescoring)."""
        table = self.prompts.instructions
        return ChatRequest(self.prompt_ids(prompt), [waveform], renders_speech(table, prompt, task),
                           renders_transcript(table, prompt, task))

    def chat_request(self, messages: list[dict[str, str]], waveforms: list[Waveform]) -> ChatRequest:
        """A conversation (user turns hold :attr:`audio_token` at each clip's place) with its clips;
        its answer renders the speech when its last turn is a transcription-like instruction."""
        last_turn = messages[-1]["content"].replace(self.audio_token, "")
        transcription = bool(waveforms) and renders_speech(self.prompts.instructions, last_turn)
        transcript = len(waveforms) == 1 and renders_transcript(self.prompts.instructions, last_turn)
        return ChatRequest(self.conversation_ids(messages), waveforms, transcription, transcript)

    def collate(self, requests: Sequence[ChatRequest]) -> BatchFeature:
        """Requests -> the model's inputs: left-padded ``input_ids``/``attention_mask [B, L]``,
        ``audio`` (the clips' waveforms at :attr:`sampling_rate`, in placeholder order) and
        ``clip_owner [P]`` (the request of each clip)."""
        if not requests:
            raise UsageError("no requests to batch")
        ids, mask = left_pad([r.ids for r in requests], self.pad_token_id)
        clips = [w.samples for r in requests for w in r.waveforms]
        owner = torch.tensor([i for i, r in enumerate(requests) for _ in r.waveforms], dtype=torch.long)
        data = {"input_ids": ids, "attention_mask": mask, "audio": clips, "clip_owner": owner}
        return BatchFeature(data, skip_tensor_conversion=["audio"])

    def __call__(  # type: ignore[override]
        self,
        audio: AudioInput | Sequence[AudioInput],
        text: str | Sequence[str] | None = None,
        *,
        sampling_rate: int | None = None,
        max_duration: float | None = DEFAULT_MAX_DURATION,
        **_: Any,
    ) -> BatchFeature:
        """One input or a list (``text``: one instruction or one per input; default: the
        model's ASR instruction) -> :meth:`collate` of their requests. ``sampling_rate`` is
        the rate of numpy arrays (required for them)."""
        single = not isinstance(audio, (list, tuple))
        items = [audio] if single else list(audio)
        prompts = [text] * len(items) if text is None or isinstance(text, str) else list(text)
        if not items or len(prompts) != len(items):
            raise UsageError(f"got {len(items)} audio input(s) but {len(prompts)} instruction(s)")
        requests = []
        for i, (item, prompt) in enumerate(zip(items, prompts)):
            name = input_name(item, None if single else i)
            waveform = self.load(item, sample_rate=sampling_rate, name=name, max_duration=max_duration)
            requests.append(self.request(waveform, self.default_instruction() if prompt is None else prompt))
        return self.collate(requests)

    # -- outputs ------------------------------------------------------------------------------
    def decode_generated(self, new_tokens: torch.Tensor, limits: torch.Tensor | None = None) -> Answers:
        """``[B, N]`` generated ids -> each row's answer (cut at its first stop token, special
        tokens skipped, surrounding spaces stripped), its generated-token count (stop token
        included) and whether it stopped (see :func:`~swv.model.stopping.cut_at_stop`;
        ``limits [B]``: only a row's first ``limits[b]`` tokens count)."""
        kept, generated = cut_at_stop(new_tokens, self.stop_ids, limits)
        texts = [text.strip() for text in self.tokenizer.batch_decode(kept, skip_special_tokens=True)]
        return Answers(texts, generated, [n > len(row) for row, n in zip(kept, generated)])

    def batch_decode(self, sequences: torch.Tensor | Sequence[Sequence[int]], **_: Any) -> list[str]:  # type: ignore[override]
        """Generated ids ``[B, N]`` -> the answers (:meth:`decode_generated`'s texts)."""
        tokens = sequences if isinstance(sequences, torch.Tensor) else _padded(sequences, self.pad_token_id)
        return self.decode_generated(tokens).texts

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **_: Any) -> str:  # type: ignore[override]
        """One row of generated ids -> its answer (cut at the first stop token)."""
        return self.batch_decode(torch.as_tensor(token_ids, dtype=torch.long).reshape(1, -1))[0]


def _padded(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Id lists -> ``[B, N]``, short rows padded at the end."""
    longest = max((len(row) for row in rows), default=0)
    return torch.tensor([list(row) + [pad_id] * (longest - len(row)) for row in rows], dtype=torch.long)


def _read_fields(file: Path) -> dict[str, Any]:
    """The :data:`PROCESSOR_FIELDS` of a ``processor_config.json`` (an :class:`InputError` naming it otherwise)."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: cannot read the processor config ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object, got {type(data).__name__}")
    missing = [name for name in PROCESSOR_FIELDS if name not in data]
    if missing:
        raise InputError(f"{file}: missing field(s) {', '.join(missing)}")
    return {name: data[name] for name in PROCESSOR_FIELDS}


def _load_tokenizer(directory: Path) -> Any:
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}: cannot load the tokenizer ({first_line(exc)})") from None


def _load_model(directory: Path, trust_remote_code: bool) -> SpeechLM:
    """The model of an export without ``processor_config.json``, through transformers'
    ``AutoModel`` (where :mod:`swv.model.speechlm` registers :class:`SpeechLM`; importing it
    here would make the two modules import each other)."""
    return AutoModel.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
