"""The real Whisper WER path of `swv data filter`, with a tiny random-init Whisper saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from swv.cli.data import app
from swv.dataprep.filters import WhisperTranscriber

SR = 16000


def tiny_whisper(path: Path) -> Path:
    """Random-init Whisper (d_model 16, 1+1 layers) with a byte-level tokenizer and default
    feature extractor, saved as a WhisperForConditionalGeneration + WhisperProcessor folder."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"):
        vocab[special] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(str(path))
    eot = vocab["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=24, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=vocab["<|startoftranscript|>"],
    )
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_whisper(tmp_path_factory.mktemp("whisper"))


def test_whisper_transcriber_returns_one_string_per_clip(whisper_dir: Path) -> None:
    asr = WhisperTranscriber(whisper_dir, device="cpu")
    rng = np.random.default_rng(0)
    hyps = asr([rng.standard_normal(SR * 3).astype(np.float32) * 0.1, np.zeros(SR * 4, dtype=np.float32)])
    assert len(hyps) == 2 and all(isinstance(h, str) for h in hyps)
    assert asr([]) == []


def test_cli_filter_with_random_whisper_rejects_everything(tmp_path: Path, whisper_dir: Path) -> None:
    (tmp_path / "audio").mkdir()
    lines = []
    rng = np.random.default_rng(1)
    for i, seconds in enumerate([3.0, 3.5, 4.0]):
        sf.write(tmp_path / "audio" / f"u{i}.wav", (rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32), SR)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"audio/u{i}.wav", "task": "asr",
                                 "text": "the quick brown fox jumps over the lazy dog"}))
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(lines) + "\n")
    out, rej = tmp_path / "kept.jsonl", tmp_path / "rejected.jsonl"
    result = CliRunner().invoke(app, [
        "filter", str(m), "--out", str(out), "--rejected", str(rej), "--wer-model", str(whisper_dir),
        "--wer-batch-size", "2", "--max-wer", "0.5", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert out.read_text() == ""  # a random model's WER is ~100%: nothing survives
    rejected = [json.loads(line) for line in rej.read_text().splitlines()]
    assert [r["id"] for r in rejected] == ["u0", "u1", "u2"]
    assert {r["reject_reason"] for r in rejected} == {"high_wer"}
    assert "high_wer: 3" in result.stdout and f"Whisper {whisper_dir}" in result.stdout
