"""Typed component configs: validated once by the recipe loader, handed to the model as they are,
written to ``swv_config.json`` as ``{name, **args}`` and read back from older exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swv.core.errors import ComponentError
from swv.recipes.loader import load_recipe
from swv.registry.components import ComponentSpec
from swv.registry.plugins import default_registry


def test_loaded_components_reach_the_model_without_a_second_validation(tmp_path: Path, monkeypatch) -> None:
    from swv.model.speechlm import SpeechLM
    from swv.train.runner import build_model

    loaded = load_recipe("tiny", [f"output_dir={tmp_path / 'run'}"], default_registry())
    components = loaded.model_components
    assert components.encoder.name == "whisper" and [a.name for a in components.adapters] == ["alignment", "shrinking"]
    assert components.adapters[0].config.stack == 2
    # an asset: path was resolved once, in the loader
    assert Path(components.backbone.config.tokenizer).is_dir()

    def no_validation(self: ComponentSpec) -> None:
        raise AssertionError(f"{self.kind} {self.name!r} validated a second time")

    monkeypatch.setattr(ComponentSpec, "load_config_model", no_validation)
    model = build_model(loaded, None)
    assert model.config.encoder is components.encoder
    assert all(a is b for a, b in zip(model.config.adapters, components.adapters, strict=True))
    assert model.config.backbone.spec is components.backbone.spec
    monkeypatch.undo()

    saved = json.loads((model.save_pretrained(tmp_path / "export") / "swv_config.json").read_text())
    assert saved["adapters"] == [a.to_dict() for a in components.adapters]
    assert saved["encoder"]["name"] == "whisper" and saved["encoder"]["path"] == "encoder"
    assert saved["encoder"]["random_init"] is None and saved["backbone"]["random_init"] is None

    # an older export listed only the arguments it was given: it still loads, with defaults filled in
    saved["adapters"] = [{"name": "alignment", "stack": 2, "ctc_head_trainable": True}, {"name": "shrinking"}]
    (tmp_path / "export" / "swv_config.json").write_text(json.dumps(saved))
    again = SpeechLM.from_pretrained(tmp_path / "export")
    assert [a.to_dict() for a in again.config.adapters] == [a.to_dict() for a in components.adapters]


def test_component_replace_validates_and_rejects_unknown_fields() -> None:
    registry = default_registry()
    adapter = registry.resolve("adapter", {"name": "conv", "factor": 3})
    assert registry.resolve("adapter", adapter) is adapter
    assert adapter.replace(factor=2).config.factor == 2 and adapter.config.factor == 3
    with pytest.raises(ComponentError, match="no field 'factr'"):
        adapter.replace(factr=2)
    with pytest.raises(ComponentError, match="an encoder was expected, got the adapter 'conv'"):
        registry.resolve("encoder", adapter)
