"""One batch of requests on its way through the model: :class:`Prepared` (the processor's
left-padded prompts and the clips' encoded audio, :func:`encode_requests`), the per-row token
limits (:meth:`Prepared.row_limits`: the budget, lowered to the audio's length bound for an
answer that renders the speech), :func:`generate_prepared` (``SpeechLM.generate`` with per-row
limits and a stop flag) and the per-request :class:`Stats` (see :mod:`swv.infer.pipeline` for
their definitions)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from swv.infer.settings import GenerationSettings
from swv.model.processor import ChatRequest, SpeechLMProcessor
from swv.model.speechlm import SpeechLM
from swv.model.stopping import length_bound
from swv.nn.state import AudioState

__all__ = ["Prepared", "Result", "Stats", "encode_requests", "generate_prepared", "token_budget"]


@dataclass(frozen=True)
class Stats:
    """Per-request measurements (see :mod:`swv.infer.pipeline` for the definitions)."""

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


def token_budget(resolved: GenerationSettings, state: AudioState | None) -> int:
    """Most new tokens for a batch: ``max_new_tokens`` of the ``resolved`` settings, plus the audio
    tokens of the longest clip (``state.lengths``) when the answer starts with a transcript."""
    assert resolved.max_new_tokens is not None
    extra = int(state.lengths.max()) if resolved.transcript_first and state is not None and state.lengths.numel() else 0
    return resolved.max_new_tokens + extra


@dataclass
class Prepared:
    """A batch ready to generate: left-padded prompts ``input_ids``/``attention_mask [B, L]``,
    the clips' adapter-chain output (``None`` when no request has audio;
    ``encoder_lengths``/``num_windows`` feed the stats) and ``clip_owner [P]`` (the request of
    each clip)."""

    requests: list[ChatRequest]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    state: AudioState | None
    clip_owner: torch.Tensor

    def per_request(self, values: torch.Tensor | None) -> list[int]:
        """Sum a per-clip ``[P]`` quantity over each request's clips."""
        out = torch.zeros(len(self.requests), dtype=torch.long)
        if values is not None and self.clip_owner.numel():
            out.index_add_(0, self.clip_owner, values.detach().cpu().long())
        return out.tolist()

    def select(self, rows: Sequence[int]) -> Prepared:
        """The batch of the requests ``rows`` (indices, in that order) alone, nothing encoded again:
        their prompts (without the leading columns none of them attends, as
        :meth:`SpeechLMProcessor.collate` pads them) and their clips' rows of :attr:`state`."""
        index = torch.tensor(list(rows), dtype=torch.long)
        mask = self.attention_mask.index_select(0, index)
        start = int(mask.any(dim=0).long().argmax())
        owners = self.clip_owner.tolist()
        clips = [(new, clip) for new, row in enumerate(rows) for clip, owner in enumerate(owners) if owner == row]
        state = None
        if self.state is not None and clips:
            state = self.state.select(torch.tensor([clip for _, clip in clips], dtype=torch.long))
        return Prepared([self.requests[row] for row in rows], self.input_ids.index_select(0, index)[:, start:],
                        mask[:, start:], state, torch.tensor([new for new, _ in clips], dtype=torch.long))

    def seconds(self, sample_rate: int) -> list[float]:
        """Audio seconds of each request (its clips summed)."""
        return [r.audio_samples / sample_rate for r in self.requests]

    @property
    def prompt_tokens(self) -> list[int]:
        """Sequence length the LLM sees per request: text tokens plus audio embeddings."""
        audio = self.per_request(None if self.state is None else self.state.lengths)
        return [r.text_tokens + n for r, n in zip(self.requests, audio)]

    def row_limits(
        self, resolved: GenerationSettings, sample_rate: int, requested: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Most new tokens of each row, ``[B]``: ``requested[b]`` (default: :func:`token_budget`),
        and for a request whose answer renders its speech (``ChatRequest.transcription``, with
        audio) at most the :func:`~swv.model.stopping.length_bound` of its audio, unless the
        ``resolved`` settings' ``length_bound`` is off or the answer starts with a transcript
        (``transcript_first``)."""
        rows = len(self.requests)
        default = token_budget(resolved, self.state) if requested is None else 0
        limits = torch.tensor(list(requested) if requested is not None else [default] * rows, dtype=torch.long)
        if not resolved.length_bound or resolved.transcript_first or self.state is None:
            return limits
        bounded = torch.tensor([r.transcription and bool(r.waveforms) for r in self.requests], dtype=torch.bool)
        bound = length_bound(
            torch.tensor(self.seconds(sample_rate), dtype=torch.float64),
            torch.tensor(self.per_request(self.state.lengths)),
            limits,
            tokens_per_second=float(resolved.length_bound_tokens_per_second),  # type: ignore[arg-type]
            min_tokens_per_second=float(resolved.length_bound_min_tokens_per_second),  # type: ignore[arg-type]
            per_audio_token=float(resolved.length_bound_per_audio_token),  # type: ignore[arg-type]
            margin=int(resolved.length_bound_margin),  # type: ignore[arg-type]
        )
        return torch.where(bounded, bound, limits)

    def stats(
        self, generated: Sequence[int], sample_rate: int, start: float, first_token: float | None, end: float
    ) -> list[Stats]:
        """Per-request stats of a batch timed from ``start`` to ``end``; a request's clips are summed."""
        total = max(end - start, 1e-9)
        ttft = None if first_token is None else first_token - start
        state = self.state
        frames = self.per_request(None if state is None else state.encoder_lengths)
        tokens = self.per_request(None if state is None else state.lengths)
        windows = self.per_request(None if state is None else state.num_windows)
        return [
            Stats(
                audio_seconds=secs,
                num_windows=int(n_win),
                encoder_frames=int(n_frames),
                audio_tokens=int(n_tokens),
                compression_ratio=n_tokens / n_frames if n_frames else 0.0,
                time_to_first_token=ttft,
                new_tokens=int(n_new),
                total_seconds=total,
                tokens_per_second=n_new / total,
            )
            for secs, n_win, n_frames, n_tokens, n_new in zip(self.seconds(sample_rate), windows, frames, tokens, generated)
        ]


def encode_requests(
    model: SpeechLM, processor: SpeechLMProcessor, requests: Sequence[ChatRequest], window_batch_size: int | None = None
) -> Prepared:
    """The processor's batch of the requests (:meth:`SpeechLMProcessor.collate`: left-padded
    prompts, clips) with every clip encoded (windowed) in one :meth:`SpeechLM.encode_audio` call."""
    requests = list(requests)
    inputs = processor.collate(requests)
    clips = inputs["audio"]
    state = None
    if clips:
        state = model.encode_audio(waveforms=clips, window_batch_size=window_batch_size or len(clips))
    return Prepared(requests, inputs["input_ids"], inputs["attention_mask"], state, inputs["clip_owner"])


class RowLimits(StoppingCriteria):
    """Finishes each row once it has generated its own ``limits[b]`` tokens (generation from
    embeddings: ``input_ids`` holds only the new tokens)."""

    def __init__(self, limits: Sequence[int]) -> None:
        self.limits = torch.tensor(list(limits), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return input_ids.shape[1] >= self.limits.to(input_ids.device)


class StopFlag(StoppingCriteria):
    """Stops every row once ``event`` is set (a stream whose consumer went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def generate_prepared(
    model: SpeechLM,
    prepared: Prepared,
    resolved: GenerationSettings,
    limits: torch.Tensor,
    streamer: BaseStreamer | None = None,
    stop: threading.Event | None = None,
    criteria: Sequence[StoppingCriteria] = (),
    processors: Sequence[LogitsProcessor] = (),
) -> torch.Tensor:
    """:meth:`SpeechLM.generate` on a prepared batch with ``resolved`` settings: ``[B, N]`` new
    token ids. A row past its ``limits[b]`` is finished and padded, the others go on; ``stop``
    ends every row once set. ``criteria`` (per-row stopping criteria) and ``processors`` (logits
    processors, run after the repetition controls and before the sampling warpers) are added to
    generation's own."""
    kwargs = resolved.generate_kwargs()
    kwargs["max_new_tokens"] = int(limits.max())
    kwargs["logits_processor"].extend(processors)
    criteria = [RowLimits(limits.tolist()), *criteria]
    if stop is not None:
        criteria.append(StopFlag(stop))
    kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    return model.generate(
        prepared.input_ids,
        prepared.attention_mask,
        audio_state=prepared.state,
        streamer=streamer,
        **kwargs,
    )
