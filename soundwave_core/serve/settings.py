"""The limits and decoding controls ``swv serve`` applies to every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from swv.core.errors import UsageError
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings


@dataclass(frozen=True)
class ServeSettings:
    """Server limits. ``max_context`` bounds prompt tokens (text + audio) + ``max_tokens``;
    ``max_audio_seconds`` bounds every clip; ``max_body_bytes`` the request body.
    ``generation``: the decoding controls of every request (length bound, repetition controls;
    ``None`` fields take the model's defaults)."""

    model_id: str
    max_context: int
    max_batch: int = 8
    batch_window_seconds: float = 0.01
    max_audio_seconds: float = 60.0
    default_max_tokens: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise UsageError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.batch_window_seconds < 0:
            raise UsageError(f"batch window must be >= 0, got {self.batch_window_seconds}")
        if self.max_context < 2:
            raise UsageError(f"max_context must be >= 2, got {self.max_context}")


def model_context_length(pipeline: Pipeline) -> int | None:
    """The backbone config's ``max_position_embeddings``, if it declares one."""
    value = pipeline.model.backbone.hf_model.config.to_dict().get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None
