"""A benchmark preset: its facts are the defaults of a PresetConfig subclass."""

from swv.eval.presets.base import PresetConfig


class ToyDigits(PresetConfig):
    benchmark: str = "Toy digits (test)"
    task: str = "asr"
    metric: str = "WER"
    corpus_format: str = "toy-folder"
    split: str | None = "test"
    normalize: str | None = "basic"
