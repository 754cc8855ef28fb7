"""A GGUF checkpoint's tensor shapes, read from its header without loading tensor data (gguf's
``GGUFReader`` maps the file lazily), under the parameter names transformers loads them as
(``transformers.modeling_gguf_pytorch_utils.get_gguf_hf_weights_map``), so that a backbone
built on the meta device can be compared with them (:func:`gguf_shapes`)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import (
    TENSOR_PROCESSORS,
    Gemma2TensorProcessor,
    LlamaTensorProcessor,
    NemotronTensorProcessor,
    TensorProcessor,
    get_gguf_hf_weights_map,
)

from swv.core.errors import InputError, first_line

#: transformers' GGUF tensor processors that keep each tensor's shape (the header's, reversed):
#: only the architectures they serve are shape-checked; the others (MoE experts merged or split,
#: transposed or reshaped tensors) get the parameter budget alone.
SHAPE_PRESERVING = frozenset({TensorProcessor, LlamaTensorProcessor, Gemma2TensorProcessor, NemotronTensorProcessor})


def gguf_shapes(file: Path, model: PreTrainedModel) -> dict[str, tuple[tuple[int, ...], Path]] | None:
    """Each tensor of the GGUF ``file`` that transformers loads into ``model`` -> (its shape in
    PyTorch order, ``file``), keyed by ``model``'s parameter name; ``None`` for an architecture
    whose tensors transformers reshapes on loading (see :data:`SHAPE_PRESERVING`). Reads the
    header only; an unreadable file is an :class:`InputError` naming it."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(file))
        architecture = str(reader.fields["general.architecture"].contents())
        tensors = [(tensor.name, tuple(int(n) for n in reversed(tensor.shape.tolist()))) for tensor in reader.tensors]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise InputError(f"{file}: not a readable GGUF file ({first_line(exc)})") from None
    processor_class = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    if processor_class not in SHAPE_PRESERVING:
        return None
    names = get_gguf_hf_weights_map(model, processor_class())
    return {names[name]: (shape, file) for name, shape in tensors if name in names}
