"""The demo's acoustic-path ablation: the shrinking adapter's gate (and an utterance adapter's
projection) are zeroed in a copy, nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from swv.core.errors import UsageError
from swv.demo.ablation import acoustic_path_ablated
from swv.model.speechlm import SpeechLM


def _saved(model_config_factory, tmp_path: Path, posterior: bool, utterance: bool = False) -> Path:
    adapters = [{"name": "alignment", "dropout": 0.0}, {"name": "shrinking", "posterior_embedding": posterior}]
    if utterance:
        adapters.insert(0, {"name": "utterance"})
    model = SpeechLM(model_config_factory(adapters))
    if posterior:
        with torch.no_grad():
            model.adapters["shrinking"].gate.fill_(0.5)
    return model.save_pretrained(tmp_path / "final")


def test_only_the_gate_is_zeroed(model_config_factory, tmp_path: Path) -> None:
    final = _saved(model_config_factory, tmp_path, posterior=True)
    ablated = SpeechLM.from_pretrained(acoustic_path_ablated(final, tmp_path / "ablated"))
    original = SpeechLM.from_pretrained(final)
    assert torch.count_nonzero(ablated.adapters["shrinking"].gate) == 0
    assert torch.count_nonzero(original.adapters["shrinking"].gate) > 0
    before, after = original.state_dict(), ablated.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["adapters.shrinking.gate"]


def test_needs_the_posterior_embedding(model_config_factory, tmp_path: Path) -> None:
    final = _saved(model_config_factory, tmp_path, posterior=False)
    with pytest.raises(UsageError, match="posterior_embedding"):
        acoustic_path_ablated(final, tmp_path / "ablated")


def test_the_utterance_vector_is_zeroed_too(model_config_factory, tmp_path: Path) -> None:
    final = _saved(model_config_factory, tmp_path, posterior=True, utterance=True)
    ablated = SpeechLM.from_pretrained(acoustic_path_ablated(final, tmp_path / "ablated"))
    before, after = SpeechLM.from_pretrained(final).state_dict(), ablated.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    # the bias starts at zero: unchanged
    assert changed == ["adapters.shrinking.gate", "adapters.utterance.proj.weight"]
    assert torch.count_nonzero(after["adapters.utterance.proj.weight"]) == 0
