"""The acoustic-path ablation of the demo (issue 23): is it the shrinking adapter's acoustic path
that carries what is beyond the words?

With ``posterior_embedding`` the shrinking adapter hands the LLM, at each kept frame, the CTC
posterior's expected token embedding (the words) plus ``gate * LayerNorm(kept + attention)`` (the
adapter's own output: the acoustic path, its cross-attention over all frames). Zeroing ``gate``
leaves the words and removes the acoustic path. The ablated copy is measured like the final
model: if pitch, sex and rate fall to chance while the held-out WER barely moves, the labels
travel through the acoustic path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from swv.adapters.shrinking import ShrinkingAdapter
from swv.core.errors import UsageError
from swv.model.speechlm import SpeechLM


def acoustic_path_ablated(final: Path, out: Path) -> Path:
    """A copy of the model directory ``final`` with its shrinking adapter's acoustic path zeroed
    (written to ``out``). The adapter must run with ``posterior_embedding`` (otherwise its output
    is all acoustic and there is nothing to separate)."""
    model = SpeechLM.from_pretrained(final)
    shrinking = [a for a in model.adapters.values() if isinstance(a, ShrinkingAdapter)]
    if len(shrinking) != 1 or not shrinking[0].config.posterior_embedding:
        raise UsageError(f"{final}: the ablation needs one shrinking adapter with posterior_embedding: true")
    with torch.no_grad():
        shrinking[0].gate.zero_()
    model.save_pretrained(out)
    return out
