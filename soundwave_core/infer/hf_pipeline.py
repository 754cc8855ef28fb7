"""The ``audio-text-to-text`` task of ``transformers.pipeline`` for swv models.

Importing this module registers the task; ``import swv`` imports it as soon as
``transformers.pipelines`` is imported (:mod:`swv.model.hf_auto`), so that::

    pipe = transformers.pipeline("audio-text-to-text", model="path/to/export")
    pipe("clip.wav", prompt="Transcribe the speech.")          # {"generated_text": "..."}
    pipe({"array": samples, "sampling_rate": 16000, "prompt": "What is the speaker's emotion?"})

answers with swv's own generation path (:class:`swv.infer.pipeline.Pipeline`: chat template,
windowing of long clips, stop tokens). Inputs: a path, encoded file bytes, a 1-D float numpy
array (with its ``sampling_rate``, required), or a dict with ``array`` (or ``raw``),
``sampling_rate`` and optionally ``prompt``/``text``; a list of them gives a list of answers.
Call arguments: ``prompt`` (default: the model's ASR instruction), ``sampling_rate``,
``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``, ``max_duration``. Inputs and
answers go through the export's :class:`~swv.model.processor.SpeechLMProcessor`, which
transformers loads with ``AutoProcessor`` (or the model's own when the pipeline is built from a
model object without one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import AutoModel
from transformers import Pipeline as HFPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from swv.core.errors import UsageError
from swv.infer.batching import Result
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings
from swv.model.hf_auto import PIPELINE_TASK
from swv.model.processor import SpeechLMProcessor, Waveform
from swv.model.speechlm import SpeechLM

#: Generation arguments the task takes at call time (:class:`GenerationSettings` fields).
_GENERATION_ARGS = ("max_new_tokens", "do_sample", "temperature", "top_p", "no_repeat_ngram_size", "repetition_penalty",
                    "length_bound")
#: Keys of a dict input holding the samples, and the instruction.
_SAMPLE_KEYS = ("array", "raw")
_PROMPT_KEYS = ("prompt", "text")


class AudioTextToTextPipeline(HFPipeline):
    """transformers ``Pipeline`` answering an instruction about audio with a :class:`SpeechLM`
    (``model``) and its processor; ``system_prompt`` at construction overrides the saved one."""

    _load_processor = None  # AutoProcessor for a model directory; a model object brings its own
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, model: SpeechLM, *args: Any, system_prompt: str | None = None, **kwargs: Any) -> None:
        if not isinstance(model, SpeechLM):
            raise UsageError(f"the audio-text-to-text task needs an swv model, got {type(model).__name__}")
        super().__init__(model, *args, **kwargs)
        processor = self.processor if isinstance(self.processor, SpeechLMProcessor) else None
        self.swv = Pipeline(self.model, system_prompt=system_prompt, processor=processor)
        self.processor = self.swv.processor
        self.tokenizer = self.swv.tokenizer

    def _sanitize_parameters(
        self,
        prompt: str | None = None,
        sampling_rate: int | None = None,
        max_duration: float | None = None,
        **generation: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        unknown = sorted(set(generation) - set(_GENERATION_ARGS))
        if unknown:
            raise UsageError(
                f"audio-text-to-text: unknown argument(s) {', '.join(unknown)} "
                f"(expected prompt, sampling_rate, max_duration, {', '.join(_GENERATION_ARGS)})"
            )
        preprocess = {"prompt": prompt, "sampling_rate": sampling_rate, "max_duration": max_duration}
        return preprocess, {"settings": generation}, {}

    def preprocess(
        self,
        inputs: Any,
        prompt: str | None = None,
        sampling_rate: int | None = None,
        max_duration: float | None = None,
    ) -> dict[str, Any]:
        """One input -> ``{"waveform": Waveform, "prompt": str}`` (decoded, mono, resampled)."""
        if isinstance(inputs, dict):
            samples = next((inputs[k] for k in _SAMPLE_KEYS if k in inputs), None)
            if samples is None:
                raise UsageError(f"audio-text-to-text: a dict input needs one of {', '.join(_SAMPLE_KEYS)}")
            prompt = next((inputs[k] for k in _PROMPT_KEYS if k in inputs), prompt)
            sampling_rate = inputs.get("sampling_rate", sampling_rate)
            inputs = np.asarray(samples)
        waveform = self.swv.load(inputs, sample_rate=sampling_rate, max_duration=max_duration)
        return {"waveform": waveform, "prompt": self.swv.default_prompt() if prompt is None else prompt}

    def _forward(self, model_inputs: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
        waveform: Waveform = model_inputs["waveform"]
        generation = GenerationSettings(**(settings or {}))
        result = self.swv.generate_batch([waveform], [model_inputs["prompt"]], generation)[0]
        return {"result": result}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        result: Result = model_outputs["result"]
        return {"generated_text": result.text}


# transformers.pipeline(PIPELINE_TASK, model=...) builds this pipeline (see swv.model.hf_auto)
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=AudioTextToTextPipeline, pt_model=AutoModel, type="multimodal"
)
