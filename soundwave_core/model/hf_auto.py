"""swv models in transformers' Auto classes and ``transformers.pipeline``.

``import swv`` calls :func:`install_hooks`: post-import hooks (wrapt) that import the modules
registering swv with transformers as soon as transformers is imported (at once if it already
is), so that importing swv itself stays free of torch and transformers:

* when ``transformers`` is imported, :mod:`swv.model.speechlm`, which registers (at its end)
  :class:`SpeechLMConfig` with ``AutoConfig`` (the ``model_type`` ``swv_speechlm`` of an export's
  ``config.json``) and :class:`SpeechLM` with ``AutoModel``, so that
  ``AutoModel.from_pretrained(export_dir)`` works without ``trust_remote_code`` (no code is
  read from the model directory), and :class:`~swv.model.processor.SpeechLMProcessor` with
  ``AutoProcessor`` (``AutoProcessor.from_pretrained(export_dir)``);
* when ``transformers.pipelines`` is imported, :mod:`swv.infer.hf_pipeline`, which registers the
  ``audio-text-to-text`` task.

The hooks only import those modules; the modules register themselves once fully executed, so a
hook that fires while one of them is still being imported (it is the one importing
transformers) is harmless. A hook that fires while another swv module that the registering
module needs is still being imported (``import swv.model.processor`` as the very first import,
say) cannot import it yet: it leaves the registration to the registering module's own import,
which then happens on first use of :class:`SpeechLM`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import wrapt

#: The transformers pipeline task swv registers.
PIPELINE_TASK = "audio-text-to-text"
#: module whose import triggers the registration -> module that registers
_REGISTERING = {"transformers": "swv.model.speechlm", "transformers.pipelines": "swv.infer.hf_pipeline"}


def _import_registering_module(module: ModuleType) -> None:
    try:
        importlib.import_module(_REGISTERING[module.__name__])
    except ImportError as exc:
        # transformers was imported from inside a module the registering module imports
        if "partially initialized module 'swv." not in str(exc):
            raise


def install_hooks() -> None:
    """Run the registrations when (or now, if already) transformers is imported."""
    for trigger in _REGISTERING:
        wrapt.register_post_import_hook(_import_registering_module, trigger)
