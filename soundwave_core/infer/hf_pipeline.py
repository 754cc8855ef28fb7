"""The ``audio-text-to-text`` task of ``transformers.pipeline`` for swv models.

Importing this module registers the task; ``import swv`` imports it as soon as
``transformers.pipelines`` is imported (:mod:`swv.model.hf_auto`), so that::

    pipe = transformers.pipeline("audio-text-to-text", model="path/to/export")
    pipe("clip.wav", prompt="Transcribe the speech.")          # {"generated_text": "..."}
    pipe("clip.wav", text="Transcribe the speech.")            # the same (``text=`` as in image-text-to-text)
    pipe({"array": samples, "sampling_rate": 16000, "prompt": "What is the speaker's emotion?"})
    pipe(["a.wav", "b.wav"], batch_size=2, generate_kwargs={"max_new_tokens": 32})
    pipe(text=[{"role": "user", "content": [{"type": "audio", "path": "clip.wav"},
                                             {"type": "text", "text": "What is said?"}]}])
    # {"input_text": [...], "generated_text": [..., {"role": "assistant", "content": "..."}]}

answers with swv's own generation path (:class:`swv.infer.pipeline.Pipeline`: chat template,
windowing of long clips, stop tokens). Inputs: a path, encoded file bytes, a 1-D float numpy
array (with its ``sampling_rate``, required), or a dict with ``array`` (or ``raw``),
``sampling_rate`` and optionally ``prompt``/``text``; a list of them gives a list of answers,
generated ``batch_size`` at a time (one ``generate`` call per batch). ``text=`` is the
instruction (a string, or one string per input of a list), or a chat: OpenAI/transformers-style
messages (one conversation, or a list of them) whose user turns hold the audio as content parts
(``{"type": "audio", "path": ...}``, ``{"type": "audio", "audio": array, "sample_rate": 16000}``
or OpenAI's ``input_audio``; see :mod:`swv.infer.chat`; URLs are not fetched). A chat's answer
is, as in transformers' chat pipelines, the conversation with the assistant's message appended
(``return_full_text=False``: the answer's text only), next to the ``input_text`` messages.

Call arguments: ``prompt`` (default: the model's ASR instruction), ``sampling_rate``,
``max_duration``, ``return_full_text``, and the generation settings (``max_new_tokens``,
``do_sample``, ``temperature``, ``top_p``, ``no_repeat_ngram_size``, ``repetition_penalty``,
``length_bound``) either directly or in ``generate_kwargs`` (the same names; any other
``generate`` argument is refused: swv decodes greedily or by sampling, with its own stopping and
length bound). Arguments given when the pipeline is built are defaults for every call. Inputs
and answers go through the export's :class:`~swv.model.processor.SpeechLMProcessor`, which
transformers loads with ``AutoProcessor`` (or the model's own when the pipeline is built from a
model object without one).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from transformers import AutoModel
from transformers import Pipeline as HFPipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils.chat_template_utils import Chat, is_valid_message

from swv.core.errors import UsageError
from swv.infer.batching import Result
from swv.infer.pipeline import Pipeline
from swv.infer.settings import GenerationSettings
from swv.model.hf_auto import PIPELINE_TASK
from swv.model.processor import SpeechLMProcessor
from swv.model.speechlm import SpeechLM

#: Generation arguments the task takes at call time or in ``generate_kwargs`` (:class:`GenerationSettings` fields).
_GENERATION_ARGS = ("max_new_tokens", "do_sample", "temperature", "top_p", "no_repeat_ngram_size", "repetition_penalty",
                    "length_bound")
#: Keys of a dict input holding the samples, and the instruction.
_SAMPLE_KEYS = ("array", "raw")
_PROMPT_KEYS = ("prompt", "text")


@dataclass(frozen=True)
class _Prompted:
    """One audio input with its own instruction (``text=`` a list of strings)."""

    audio: Any
    prompt: str


def _is_chat(value: Any) -> bool:
    """Chat messages (dicts with ``role`` and ``content``) or a list of such conversations."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    return is_valid_message(first) or (isinstance(first, (list, tuple)) and bool(first) and is_valid_message(first[0]))


def _generation(generation: dict[str, Any], generate_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The generation settings of a call: its direct arguments and ``generate_kwargs`` (one
    name given in both is refused, as transformers does for ``max_new_tokens``)."""
    unknown = sorted(set(generation) - set(_GENERATION_ARGS))
    if unknown:
        raise UsageError(
            f"{PIPELINE_TASK}: unknown argument(s) {', '.join(unknown)} (expected prompt, text, sampling_rate, "
            f"max_duration, return_full_text, generate_kwargs, {', '.join(_GENERATION_ARGS)})"
        )
    if generate_kwargs is None:
        return generation
    if not isinstance(generate_kwargs, dict):
        raise UsageError(f"{PIPELINE_TASK}: generate_kwargs must be a dict, got {type(generate_kwargs).__name__}")
    unsupported = sorted(set(generate_kwargs) - set(_GENERATION_ARGS))
    if unsupported:
        raise UsageError(f"{PIPELINE_TASK}: generate_kwargs: unsupported {', '.join(unsupported)} (swv's generation "
                         f"takes {', '.join(_GENERATION_ARGS)})")
    twice = sorted(set(generate_kwargs) & set(generation))
    if twice:
        raise UsageError(f"{PIPELINE_TASK}: {', '.join(twice)} given twice, in generate_kwargs and as an argument; "
                         "use one")
    return {**generate_kwargs, **generation}


def _collate(items: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    """Preprocessed inputs (each a batch of one) -> one batch."""
    return {key: [value for item in items for value in item[key]] for key in items[0]}


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
            raise UsageError(f"the {PIPELINE_TASK} task needs an swv model, got {type(model).__name__}")
        super().__init__(model, *args, **kwargs)
        processor = self.processor if isinstance(self.processor, SpeechLMProcessor) else None
        self.swv = Pipeline(self.model, system_prompt=system_prompt, processor=processor)
        self.processor = self.swv.processor
        self.tokenizer = self.swv.tokenizer

    def __call__(self, inputs: Any = None, text: Any = None, **kwargs: Any) -> Any:
        """Answer about ``inputs`` (audio, a list of them, or chat messages), ``text`` being the
        instruction (a string, or one per input) or the chat (see the module docstring)."""
        chat = text if _is_chat(text) else inputs if text is None and _is_chat(inputs) else None
        if chat is not None:
            if chat is text and inputs is not None:
                raise UsageError(f"{PIPELINE_TASK}: with a chat in text=, put the audio in the messages' content "
                                 "({'type': 'audio', 'path': ...}), not in inputs")
            if "prompt" in kwargs or "sampling_rate" in kwargs:
                raise UsageError(f"{PIPELINE_TASK}: a chat carries its instruction, and each array part its "
                                 "'sample_rate', in its messages; prompt= and sampling_rate= apply to audio inputs")
            return super().__call__(Chat(chat) if is_valid_message(chat[0]) else [Chat(c) for c in chat], **kwargs)
        if inputs is None:
            raise UsageError(f"{PIPELINE_TASK}: give audio (a path, bytes, an array, a dict or a list of them) "
                             "or chat messages")
        inputs = list(inputs) if isinstance(inputs, tuple) else inputs
        if text is None:
            return super().__call__(inputs, **kwargs)
        if "prompt" in kwargs:
            raise UsageError(f"{PIPELINE_TASK}: give the instruction as prompt= or text=, not both")
        if isinstance(text, str):
            return super().__call__(inputs, prompt=text, **kwargs)
        texts = list(text) if isinstance(text, (list, tuple)) else None
        if texts is None or not isinstance(inputs, list) or len(texts) != len(inputs) or not all(
                isinstance(t, str) for t in texts):
            raise UsageError(f"{PIPELINE_TASK}: text= must be a string, one string per input of a list, or chat messages")
        return super().__call__([_Prompted(audio, t) for audio, t in zip(inputs, texts)], **kwargs)

    def _sanitize_parameters(
        self,
        prompt: str | None = None,
        sampling_rate: int | None = None,
        max_duration: float | None = None,
        return_full_text: bool | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        **generation: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Only the arguments given, so that those of the call add to those of the construction."""
        settings = _generation(generation, generate_kwargs)
        preprocess = {"prompt": prompt, "sampling_rate": sampling_rate, "max_duration": max_duration}
        return ({k: v for k, v in preprocess.items() if v is not None},
                {k: v for k, v in settings.items() if v is not None},
                {} if return_full_text is None else {"return_full_text": return_full_text})

    def preprocess(
        self,
        inputs: Any,
        prompt: str | None = None,
        sampling_rate: int | None = None,
        max_duration: float | None = None,
    ) -> dict[str, list[Any]]:
        """One input -> a batch of one: ``{"requests": [ChatRequest], "chats": [messages or None]}``
        (audio decoded, mono, resampled; prompt rendered with the chat template)."""
        if isinstance(inputs, Chat):  # prompt and sampling_rate (construction defaults) are for audio inputs
            messages = list(inputs.messages)
            return {"requests": [self.swv.chat_request(messages, max_duration=max_duration)], "chats": [messages]}
        if isinstance(inputs, _Prompted):
            inputs, prompt = inputs.audio, inputs.prompt
        if isinstance(inputs, dict):
            samples = next((inputs[k] for k in _SAMPLE_KEYS if k in inputs), None)
            if samples is None:
                raise UsageError(f"{PIPELINE_TASK}: a dict input needs one of {', '.join(_SAMPLE_KEYS)}")
            prompt = next((inputs[k] for k in _PROMPT_KEYS if k in inputs), prompt)
            sampling_rate = inputs.get("sampling_rate", sampling_rate)
            inputs = np.asarray(samples)
        waveform = self.swv.load(inputs, sample_rate=sampling_rate, max_duration=max_duration)
        request = self.swv.request(waveform, self.swv.default_prompt() if prompt is None else prompt)
        return {"requests": [request], "chats": [None]}

    def _forward(self, model_inputs: dict[str, list[Any]], **settings: Any) -> dict[str, list[Any]]:
        """A batch of requests generated together (one :meth:`Pipeline.generate_requests`)."""
        results = self.swv.generate_requests(model_inputs["requests"], GenerationSettings(**settings))
        return {"results": results, "chats": model_inputs["chats"]}

    def postprocess(self, model_outputs: dict[str, Any], return_full_text: bool = True) -> dict[str, Any]:
        result: Result | list[Result] = model_outputs["results"]
        chat = model_outputs["chats"]
        if isinstance(result, list):  # a batch of one (a single input, or batch_size 1), not unbatched by transformers
            result, chat = result[0], chat[0]
        if chat is None:
            return {"generated_text": result.text}
        answer = [*chat, {"role": "assistant", "content": result.text}] if return_full_text else result.text
        return {"input_text": chat, "generated_text": answer}

    def get_iterator(self, inputs: Any, num_workers: int, batch_size: int, preprocess_params: dict[str, Any],
                     forward_params: dict[str, Any], postprocess_params: dict[str, Any]) -> PipelineIterator:
        """transformers' iterator over a list, dataset or generator of inputs, batched by swv:
        ``batch_size`` preprocessed inputs are generated together (transformers' own collation
        pads tensors, while a batch here is a list of requests that the processor pads)."""
        if isinstance(inputs, Sized):
            dataset: Any = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset, num_workers = PipelineIterator(inputs, self.preprocess, preprocess_params), min(num_workers, 1)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


# transformers.pipeline(PIPELINE_TASK, model=...) builds this pipeline (see swv.model.hf_auto)
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=AudioTextToTextPipeline, pt_model=AutoModel, type="multimodal"
)
