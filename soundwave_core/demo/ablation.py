"""The acoustic-path ablation of the demo (issue 23): is it the acoustic path that carries what is
beyond the words?

With ``posterior_embedding`` the shrinking adapter hands the LLM, at each kept frame, the CTC
posterior's expected token embedding (the words) plus ``gate * LayerNorm(kept + attention)`` (the
adapter's own output: its cross-attention over all frames). An utterance adapter puts one token
of pooled frame statistics before the audio tokens. Zeroing ``gate`` and the utterance vector's
projection leaves the words and removes both acoustic paths. The ablated copy is measured like the
final model: if pitch, sex and rate fall to chance while the held-out WER barely moves, the labels
travel through the acoustic paths.
"""

from __future__ import annotations

from pathlib import Path

import torch

from swv.adapters.shrinking import ShrinkingAdapter
from swv.adapters.utterance import UtteranceAdapter
from swv.core.errors import UsageError
from swv.model.speechlm import SpeechLM


def acoustic_path_ablated(final: Path, out: Path) -> Path:
    """A copy of the model directory ``final`` with its acoustic paths zeroed (written to ``out``):
    the shrinking adapter's gate and every utterance adapter's projection. The shrinking adapter
    must run with ``posterior_embedding`` (otherwise its output is all acoustic and there is
    nothing to separate)."""
    model = SpeechLM.from_pretrained(final)
    shrinking = [a for a in model.adapters.values() if isinstance(a, ShrinkingAdapter)]
    if len(shrinking) != 1 or not shrinking[0].config.posterior_embedding:
        raise UsageError(f"{final}: the ablation needs one shrinking adapter with posterior_embedding: true")
    with torch.no_grad():
        shrinking[0].gate.zero_()
        for utterance in model.adapters.values():
            if isinstance(utterance, UtteranceAdapter):
                utterance.silence()
    model.save_pretrained(out)
    return out
