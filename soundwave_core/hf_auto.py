"""swv models in transformers' Auto classes and ``transformers.pipeline``.

``import swv`` calls :func:`install_hooks`, which registers, through post-import hooks (wrapt),
what runs as soon as transformers is imported (at once if it already is), so that importing swv
itself stays free of torch and transformers:

* :func:`register_auto_classes` when ``transformers`` is imported: ``AutoConfig`` knows the
  ``model_type`` ``swv_speechlm`` of an export's ``config.json`` (:class:`SpeechLMConfig`) and
  ``AutoModel`` builds a :class:`SpeechLM` for it, so ``AutoModel.from_pretrained(export_dir)``
  works without ``trust_remote_code`` (no code is read from the model directory);
* :func:`register_pipeline_task` when ``transformers.pipelines`` is imported: the
  ``audio-text-to-text`` task (:class:`swv.infer.hf_pipeline.AudioTextToTextPipeline`).
"""

from __future__ import annotations

from types import ModuleType

import wrapt

#: The transformers pipeline task swv registers.
PIPELINE_TASK = "audio-text-to-text"


def register_auto_classes(_transformers: ModuleType) -> None:
    """``AutoConfig``/``AutoModel`` learn :class:`SpeechLMConfig`/:class:`SpeechLM`."""
    from transformers import AutoConfig, AutoModel

    from swv.model.speechlm import SpeechLM, SpeechLMConfig

    AutoConfig.register(SpeechLMConfig.model_type, SpeechLMConfig, exist_ok=True)
    AutoModel.register(SpeechLMConfig, SpeechLM, exist_ok=True)


def register_pipeline_task(pipelines: ModuleType) -> None:
    """``transformers.pipeline("audio-text-to-text", model=...)`` answers with an swv model."""
    from transformers import AutoModel

    from swv.infer.hf_pipeline import AudioTextToTextPipeline

    pipelines.PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=AudioTextToTextPipeline, pt_model=AutoModel, type="multimodal"
    )


def install_hooks() -> None:
    """Run the registrations when (or now, if already) transformers is imported."""
    wrapt.register_post_import_hook(register_auto_classes, "transformers")
    wrapt.register_post_import_hook(register_pipeline_task, "transformers.pipelines")
