"""Checks on the packaged tiny assets (built by scripts/make_tiny_assets.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from swv.assets import asset_path

ASR_MANIFESTS = ("train_asr.jsonl", "dev_asr.jsonl")
SFT_MANIFESTS = ("train_sft.jsonl", "dev_sft.jsonl")
AUDIO_MANIFESTS = ASR_MANIFESTS + SFT_MANIFESTS
ALL_MANIFESTS = AUDIO_MANIFESTS + ("text_qa.jsonl",)
SPECIALS = ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>")
TRANSCRIPT_RE = re.compile(r"^[a-z]+( [a-z]+)*$")  # lowercase words, single spaces, no punctuation


def speech_dir() -> Path:
    return asset_path("tiny_speech")


def read_manifest(name: str) -> list[dict]:
    path = speech_dir() / name
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            assert line.strip(), f"{name}:{lineno}: blank line"
            row = json.loads(line)
            assert isinstance(row, dict), f"{name}:{lineno}: not a JSON object"
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(asset_path("tiny_tokenizer")), local_files_only=True)


def test_asset_path_helper():
    assert asset_path().is_dir()
    assert asset_path("tiny_speech/train_asr.jsonl").is_file()
    with pytest.raises(FileNotFoundError):
        asset_path("no_such_asset")
    with pytest.raises(ValueError):
        asset_path("../errors.py")


@pytest.mark.parametrize("name", ALL_MANIFESTS)
def test_manifest_lines_parse_and_have_fields(name):
    rows = read_manifest(name)
    assert rows
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{name}: duplicate ids"
    for r in rows:
        assert r["language"] == "en"
        if name in ASR_MANIFESTS:
            assert r["task"] == "asr"
            assert {"id", "audio", "text", "task", "duration", "language", "speaker"} <= r.keys()
            assert TRANSCRIPT_RE.match(r["text"]), r["text"]
            assert 4 <= len(r["text"].split()) <= 9
        elif name in SFT_MANIFESTS:
            assert r["task"] in {"pitch", "asr_instruct"}
            assert {"id", "audio", "task", "instruction", "response", "duration", "speaker"} <= r.keys()
            assert r["instruction"].strip() and r["response"].strip()
            if r["task"] == "pitch":
                assert r["options"] == ["high", "low"]
                assert r["label"] == r["response"] in ("high", "low")
                # speakers are "<voice>-p<pitch>": -p 20 is low, -p 80 is high
                assert r["speaker"].endswith({"low": "-p20", "high": "-p80"}[r["label"]])
            else:
                assert TRANSCRIPT_RE.match(r["response"]), r["response"]
        else:
            assert r["task"] == "text_qa"
            assert "audio" not in r
            assert r["instruction"].strip() and r["response"].strip()


def test_manifest_counts():
    assert len(read_manifest("train_asr.jsonl")) >= 90
    assert len(read_manifest("dev_asr.jsonl")) >= 20
    assert len(read_manifest("text_qa.jsonl")) >= 20
    for split in ("train", "dev"):
        sft = read_manifest(f"{split}_sft.jsonl")
        assert {r["task"] for r in sft} == {"pitch", "asr_instruct"}
        labels = [r["label"] for r in sft if r["task"] == "pitch"]
        assert abs(labels.count("high") - labels.count("low")) <= 1


def test_audio_files_decode():
    import soundfile as sf

    base = speech_dir()
    seen: dict[str, float] = {}
    for name in AUDIO_MANIFESTS:
        for r in read_manifest(name):
            rel = r["audio"]
            assert not Path(rel).is_absolute()
            path = base / rel
            assert path.is_file(), f"{name}: {rel} missing"
            if rel not in seen:
                data, sr = sf.read(str(path), dtype="float32", always_2d=True)
                assert sr == 16000, f"{rel}: sample rate {sr}"
                assert data.shape[1] == 1, f"{rel}: {data.shape[1]} channels"
                assert sf.info(str(path)).subtype == "PCM_16"
                seen[rel] = data.shape[0] / sr
                assert 0.5 <= seen[rel] <= 8.0, f"{rel}: duration {seen[rel]:.2f}s"
                assert float(abs(data).max()) > 0.01, f"{rel}: silent"
            assert abs(r["duration"] - seen[rel]) < 0.01, f"{name}: {r['id']} duration field disagrees"
    assert len(seen) == len(read_manifest("train_asr.jsonl")) + len(read_manifest("dev_asr.jsonl"))


def test_no_train_dev_overlap():
    train = {r["text"] for r in read_manifest("train_asr.jsonl")}
    dev = {r["text"] for r in read_manifest("dev_asr.jsonl")}
    assert not train & dev
    train_audio = {r["audio"] for r in read_manifest("train_asr.jsonl") + read_manifest("train_sft.jsonl")}
    dev_audio = {r["audio"] for r in read_manifest("dev_asr.jsonl") + read_manifest("dev_sft.jsonl")}
    assert not train_audio & dev_audio
    # SFT items reuse exactly the ASR audio of the same split
    for split in ("train", "dev"):
        asr = {r["audio"]: r["text"] for r in read_manifest(f"{split}_asr.jsonl")}
        for r in read_manifest(f"{split}_sft.jsonl"):
            assert r["audio"] in asr
            if r["task"] == "asr_instruct":
                assert r["response"] == asr[r["audio"]]


def test_package_size_is_small():
    total = sum(p.stat().st_size for p in asset_path().rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 5_000_000, f"packaged assets are {total / 1e6:.1f} MB"


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token == "<|pad|>"
    ids = tokenizer.convert_tokens_to_ids(list(SPECIALS))
    assert ids == [0, 1, 2, 3, 4]
    assert set(SPECIALS) <= set(tokenizer.all_special_tokens)
    # each special token is a single id when it appears in text
    for tok in SPECIALS:
        assert tokenizer(tok, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(tok)]


def test_tokenizer_round_trip(tokenizer):
    texts = [r["text"] for r in read_manifest("dev_asr.jsonl")]
    texts += [r["instruction"] + " " + r["response"] for r in read_manifest("text_qa.jsonl")]
    texts += ["Unseen words: Zebras, 1234 quickly!\n\n\tcafé ü 你好"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert max(ids) < len(tokenizer)
        assert tokenizer.decode(ids) == text
        with_bos = tokenizer(text)["input_ids"]
        assert with_bos[0] == tokenizer.bos_token_id and with_bos[1:] == ids
        assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_chat_template(tokenizer):
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What colour is grass?"},
        {"role": "assistant", "content": "Grass is green."},
    ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is grass?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nGrass is green.<|eot_id|>"
    )
    prompt = tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == text[: text.rindex("Grass is green.")]
    # list-of-parts content renders like a plain string
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in msgs]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == text
    ids = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.convert_tokens_to_ids("<|start_header_id|>")) == 3
    assert ids.count(tokenizer.convert_tokens_to_ids("<|end_header_id|>")) == 3


def test_tiny_llama_with_tokenizer(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    batch = tokenizer(["the dog runs in the park", "a cat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    assert out.logits.shape[-1] == len(tokenizer) + 8
    assert torch.isfinite(out.loss)
