"""Backbone components: tiny random Llama / Qwen2 checkpoints (and a GGUF) built in tmp dirs
and loaded through the same code path as real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from swv.backbones.causal_lm import CausalLMBackbone, CausalLMConfig, LoraSettings
from swv.backbones.llama import LlamaBackbone, LlamaConfig
from swv.backbones.qwen2 import Qwen2Backbone, Qwen2Config
from swv.core.errors import ComponentError, InputError, UsageError

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
SENTENCES = [
    "hello world",
    "the cat sat on the mat",
    "speech models listen to audio",
    "a tiny tokenizer for tests",
]
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
BASE_VOCAB = 300  # tokenizer size before the audio token


# -- fixtures: tiny tokenizer, checkpoints and a GGUF -------------------------------------------------
def _make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE
    )
    assert len(tokenizer) == BASE_VOCAB
    return tokenizer


def _save_checkpoint(directory: Path, hf_config, tokenizer) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _ids(tokenizer) -> dict[str, int]:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    _make_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig as HFLlamaConfig

    tokenizer = _make_tokenizer()
    config = HFLlamaConfig(vocab_size=len(tokenizer), **TINY, **_ids(tokenizer))
    return _save_checkpoint(tmp_path_factory.mktemp("llama"), config, tokenizer)


@pytest.fixture(scope="module")
def llama_padded_dir(tmp_path_factory) -> Path:
    """A Llama whose embedding matrix has spare rows (like Qwen's padded vocabularies)."""
    from transformers import LlamaConfig as HFLlamaConfig

    tokenizer = _make_tokenizer()
    config = HFLlamaConfig(vocab_size=320, **TINY, **_ids(tokenizer))
    return _save_checkpoint(tmp_path_factory.mktemp("llama_padded"), config, tokenizer)


@pytest.fixture(scope="module")
def other_llama_dir(tmp_path_factory) -> Path:
    """A differently sized Llama, for LoRA mismatch errors."""
    from transformers import LlamaConfig as HFLlamaConfig

    tokenizer = _make_tokenizer()
    config = HFLlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_ids(tokenizer),
    )
    return _save_checkpoint(tmp_path_factory.mktemp("llama_other"), config, tokenizer)


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    from transformers import Qwen2Config as HFQwen2Config

    tokenizer = _make_tokenizer()
    config = HFQwen2Config(vocab_size=len(tokenizer), **TINY, **_ids(tokenizer))
    return _save_checkpoint(tmp_path_factory.mktemp("qwen2"), config, tokenizer)


def _permute_for_gguf(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows with the rotary halves interleaved per head."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(checkpoint: Path, target: Path) -> Path:
    """Write a float32 GGUF of a tiny HF Llama checkpoint (weights, config and BPE tokenizer)."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    cfg = model.config
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name("swv-tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        module, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(module)
        assert gguf_name is not None, hf_name
        weight = tensor.detach().float().numpy()
        if module.endswith("q_proj"):
            weight = _permute_for_gguf(weight, cfg.num_attention_heads)
        elif module.endswith("k_proj"):
            weight = _permute_for_gguf(weight, cfg.num_key_value_heads)
        writer.add_tensor(f"{gguf_name}.{suffix}", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.fixture(scope="module")
def llama_gguf(llama_dir, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gguf")
    return write_llama_gguf(llama_dir, directory / "tiny-f32.gguf")


# -- helpers ----------------------------------------------------------------------------------------
def _hf_model(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory).eval()


def _input_ids(backbone, text: str = "the cat sat on the mat") -> torch.Tensor:
    return backbone.tokenizer(text, return_tensors="pt")["input_ids"]


@torch.no_grad()
def _logits(backbone, input_ids: torch.Tensor) -> torch.Tensor:
    backbone.eval()
    mask = torch.ones_like(input_ids)
    return backbone(backbone.embed_tokens(input_ids), mask).logits


def _perturb_lora(backbone, seed: int = 1) -> None:
    """LoRA B starts at zero (a no-op); give it values so LoRA changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def _lora_backbone(llama_dir: Path) -> LlamaBackbone:
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir), lora=LoraSettings()))
    _perturb_lora(backbone)
    return backbone.eval()


# -- tests ------------------------------------------------------------------------------------------
def test_audio_token_registered_and_embeddings_resized(llama_dir):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir)))
    tok = backbone.tokenizer
    assert backbone.audio_token_id == BASE_VOCAB  # appended after the 300 base tokens
    assert backbone.audio_token_id not in {tok.bos_token_id, tok.eos_token_id}
    assert tok("x <audio_patch> x", add_special_tokens=False)["input_ids"].count(backbone.audio_token_id) == 1
    assert backbone.pad_token_id == tok.eos_token_id  # the tokenizer has no pad token
    emb = backbone.hf_model.get_input_embeddings().weight
    assert emb.shape == (BASE_VOCAB + 1, 32)
    # the new row is the mean embedding of the words of its name, "audio patch"
    words = tok("audio patch", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(emb[BASE_VOCAB], emb[words].mean(0))
    head = backbone.hf_model.get_output_embeddings().weight
    torch.testing.assert_close(head[BASE_VOCAB], head[words].mean(0))
    info = backbone.info()
    assert (info.hidden_size, info.num_attention_heads, info.vocab_size) == (32, 4, BASE_VOCAB + 1)
    assert (info.audio_token_id, info.pad_token_id) == (backbone.audio_token_id, backbone.pad_token_id)
    assert info.output_embedding is not None and info.output_embedding().shape == (BASE_VOCAB + 1, 32)
    torch.testing.assert_close(info.output_embedding(), head)


def test_special_tokens_are_single_tokens_with_name_rows(llama_dir):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir), special_tokens=["<cough>", "<throat_clearing>"]))
    tok = backbone.tokenizer
    assert backbone.special_token_ids == [BASE_VOCAB + 1, BASE_VOCAB + 2]  # after the audio token, in order
    ids = tok("a <cough> b <throat_clearing>", add_special_tokens=False)["input_ids"]
    assert ids.count(BASE_VOCAB + 1) == 1 and ids[-1] == BASE_VOCAB + 2
    emb = backbone.hf_model.get_input_embeddings().weight
    assert emb.shape == (BASE_VOCAB + 3, 32) and backbone.info().vocab_size == BASE_VOCAB + 3
    torch.testing.assert_close(emb[BASE_VOCAB + 2], emb[tok("throat clearing", add_special_tokens=False)["input_ids"]].mean(0))
    # the same config gives the same model (export/reload relies on it)
    again = LlamaBackbone(LlamaConfig(path=str(llama_dir), special_tokens=["<cough>", "<throat_clearing>"]))
    torch.testing.assert_close(again.hf_model.get_output_embeddings().weight, backbone.hf_model.get_output_embeddings().weight)


@pytest.mark.parametrize("tokens", [["<a b>"], ["<x>", "<x>"], [""], ["<audio_patch>"]])
def test_special_tokens_validation(llama_dir, tokens):
    with pytest.raises(ValueError, match="special_tokens"):
        LlamaConfig(path=str(llama_dir), special_tokens=tokens)


def test_embeddings_not_resized_when_audio_id_fits(llama_padded_dir):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_padded_dir), audio_token="<speech>"))
    assert backbone.audio_token_id == BASE_VOCAB
    assert backbone.hf_model.get_input_embeddings().weight.shape[0] == 320
    assert backbone.info().vocab_size == 320
    assert backbone.tokenizer.convert_ids_to_tokens(backbone.audio_token_id) == "<speech>"
    # the spare row the new token lands on is initialised from its name too, not left untrained
    emb = backbone.hf_model.get_input_embeddings().weight
    words = backbone.tokenizer("speech", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(emb[BASE_VOCAB], emb[words].mean(0))


def test_new_token_rows_distinct_deterministic_and_fallback(llama_dir):
    tokens = ["<cough>", "<laugh>", "<___>"]  # the last name has no words: mean of the old rows
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir), special_tokens=tokens))
    assert backbone.new_token_ids == backbone.added_token_ids == [BASE_VOCAB + i for i in range(4)]
    assert backbone.info().added_token_ids == tuple(backbone.added_token_ids)
    for weight in (backbone.hf_model.get_input_embeddings().weight, backbone.hf_model.get_output_embeddings().weight):
        rows = weight[BASE_VOCAB:]
        assert torch.cdist(rows, rows)[~torch.eye(4, dtype=torch.bool)].min() > 1e-4  # pairwise distinct
        torch.testing.assert_close(rows[3], weight[:BASE_VOCAB].mean(0))
    again = LlamaBackbone(LlamaConfig(path=str(llama_dir), special_tokens=tokens))
    for a, b in zip(again.hf_model.state_dict().values(), backbone.hf_model.state_dict().values()):
        assert torch.equal(a, b)


def test_rows_of_tokens_the_tokenizer_already_has_are_left_as_saved(llama_dir, tmp_path):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir), special_tokens=["<cough>"]))
    with torch.no_grad():  # as if trained: rows unlike any name initialisation
        backbone.hf_model.get_input_embeddings().weight[BASE_VOCAB:] = 7.0
        backbone.hf_model.get_output_embeddings().weight[BASE_VOCAB:] = -7.0
    backbone.save_base(tmp_path / "bundled")
    reloaded = LlamaBackbone(LlamaConfig(path=str(tmp_path / "bundled"), special_tokens=["<cough>", "<laugh>"]))
    assert reloaded.added_token_ids == [BASE_VOCAB, BASE_VOCAB + 1, BASE_VOCAB + 2]
    assert reloaded.new_token_ids == [BASE_VOCAB + 2]  # only <laugh> is new
    emb = reloaded.hf_model.get_input_embeddings().weight
    head = reloaded.hf_model.get_output_embeddings().weight
    assert bool((emb[BASE_VOCAB:BASE_VOCAB + 2] == 7.0).all()) and bool((head[BASE_VOCAB:BASE_VOCAB + 2] == -7.0).all())
    words = reloaded.tokenizer("laugh", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(emb[BASE_VOCAB + 2], emb[words].mean(0))


@pytest.mark.parametrize("tied", [False, True])
def test_train_added_tokens_rows_only_and_lora_round_trip(tok_dir, tmp_path, tied):
    """With lora.train_added_tokens the added rows (input and output) get gradients, the other
    rows stay frozen, and save_lora/load_lora restore them exactly."""
    kwargs = dict(special_tokens=["<cough>", "<laugh>"], lora=LoraSettings(r=4, train_added_tokens=True))
    torch.manual_seed(0)
    backbone = Qwen2Backbone(Qwen2Config(random_init={**TINY, "tie_word_embeddings": tied}, tokenizer=str(tok_dir), **kwargs))
    backbone.save_base(tmp_path / "base")
    rows = {n: p for n, p in backbone.named_parameters() if ".trainable_tokens_delta." in n}
    assert len(rows) == (1 if tied else 2) and all(p.shape == (3, 32) and p.requires_grad for p in rows.values())
    assert all(".lora_" in n or n in rows for n, p in backbone.named_parameters() if p.requires_grad)
    input_ids = torch.tensor([[3, BASE_VOCAB + 1, 5, BASE_VOCAB + 2, 9]])
    out = backbone(backbone.embed_tokens(input_ids), torch.ones_like(input_ids), labels=input_ids)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rows.values())
    with torch.no_grad():
        for p in rows.values():
            p.add_(torch.randn_like(p))
    backbone.eval()
    expected = _logits(backbone, input_ids)
    assert backbone.save_lora(tmp_path / "lora")
    reloaded = Qwen2Backbone(Qwen2Config(path=str(tmp_path / "base"), **kwargs)).eval()
    assert not torch.allclose(_logits(reloaded, input_ids), expected)
    reloaded.load_lora(tmp_path / "lora", trainable=True)
    torch.testing.assert_close(_logits(reloaded, input_ids), expected)
    assert any(p.requires_grad for n, p in reloaded.named_parameters() if ".trainable_tokens_delta." in n)
    # the merged export carries the trained rows
    backbone.save_base(tmp_path / "merged", merged=True)
    merged = Qwen2Backbone(Qwen2Config(path=str(tmp_path / "merged"), special_tokens=["<cough>", "<laugh>"])).eval()
    torch.testing.assert_close(_logits(merged, input_ids), expected)
    # rows trained for other added tokens are refused
    other = Qwen2Backbone(Qwen2Config(path=str(tmp_path / "base"), special_tokens=["<cough>"], lora=LoraSettings(r=4)))
    with pytest.raises(InputError, match="token ids"):
        other.load_lora(tmp_path / "lora")


def test_base_frozen_and_lora_trainable(llama_dir):
    plain = LlamaBackbone(LlamaConfig(path=str(llama_dir)))
    assert plain.trainable_parameter_count() == 0
    assert not plain.has_lora and plain.save_lora(llama_dir / "never") is False
    assert not (llama_dir / "never").exists()

    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir), lora=LoraSettings()))
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    targeted = {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    peft_config = backbone.model.peft_config["default"]
    assert (peft_config.r, peft_config.lora_alpha, peft_config.lora_dropout) == (64, 16, 0.05)
    # r * (in + out) per projection: q, o are 32 -> 32; k, v are 32 -> 16 (2 kv heads of 8)
    per_layer = 64 * ((32 + 32) * 2 + (32 + 16) * 2)
    assert backbone.trainable_parameter_count() == 2 * per_layer
    assert all(not p.requires_grad for name, p in backbone.named_parameters() if ".lora_" not in name)


def test_forward_on_embeddings_matches_hf_forward_on_ids(llama_dir):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir))).eval()
    hf = _hf_model(llama_dir)
    input_ids = _input_ids(backbone)
    with torch.no_grad():
        expected = hf(input_ids=input_ids).logits
    embeds = backbone.embed_tokens(input_ids)
    assert embeds.shape == (1, input_ids.shape[1], 32)
    logits = _logits(backbone, input_ids)
    assert logits.shape == (1, input_ids.shape[1], BASE_VOCAB + 1)
    torch.testing.assert_close(logits[..., :BASE_VOCAB], expected, rtol=1e-5, atol=1e-5)

    # incremental decoding with the KV cache gives the same last-step logits
    with torch.no_grad():
        mask = torch.ones_like(input_ids)
        prefix = backbone(embeds[:, :-1], mask[:, :-1], use_cache=True)
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (output and argument)
        name = "cache" if getattr(prefix, "cache", None) is not None else "past_key_values"
        step = backbone(embeds[:, -1:], mask, use_cache=True, **{name: getattr(prefix, name)})
    torch.testing.assert_close(step.logits[:, -1], logits[:, -1], rtol=1e-5, atol=1e-5)


def test_generate_returns_new_tokens_and_left_padded_batch_matches_single(llama_dir):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir))).eval()
    hf = _hf_model(llama_dir)
    prompts = [_input_ids(backbone, "hello world"), _input_ids(backbone, "speech models listen to audio")]
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    singles = []
    for ids in prompts:
        out = backbone.generate(backbone.embed_tokens(ids), torch.ones_like(ids), **gen)
        assert out.shape == (1, 5)
        reference = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=backbone.pad_token_id, **gen)
        assert torch.equal(out, reference[:, ids.shape[1] :])  # new tokens only, same as HF on ids
        singles.append(out)

    length = max(ids.shape[1] for ids in prompts)
    pad_embed = backbone.embed_tokens(torch.tensor([[backbone.pad_token_id]]))[0, 0]
    embeds = pad_embed.expand(len(prompts), length, -1).clone()
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, ids in enumerate(prompts):
        embeds[row, length - ids.shape[1] :] = backbone.embed_tokens(ids)[0]
        mask[row, length - ids.shape[1] :] = 1
    batch = backbone.generate(embeds, mask, **gen)
    assert torch.equal(batch, torch.cat(singles))

    with pytest.raises(UsageError, match="input_ids"):
        backbone.generate(embeds, mask, input_ids=prompts[0])


def test_save_lora_loads_in_plain_peft_with_same_logits(llama_dir, tmp_path):
    from peft import PeftModel

    backbone = _lora_backbone(llama_dir)
    input_ids = _input_ids(backbone)
    lora_logits = _logits(backbone, input_ids)
    base_logits = _logits(LlamaBackbone(LlamaConfig(path=str(llama_dir))), input_ids)
    assert not torch.allclose(lora_logits, base_logits, atol=1e-3)  # the LoRA does something

    assert backbone.save_lora(tmp_path / "lora") is True
    assert sorted(p.name for p in (tmp_path / "lora").iterdir() if p.suffix != ".md") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not list(tmp_path.glob(".lora*"))  # no temporary leftovers
    peft_model = PeftModel.from_pretrained(_hf_model(llama_dir), tmp_path / "lora").eval()
    with torch.no_grad():
        plain = peft_model(input_ids=input_ids).logits
    torch.testing.assert_close(plain, lora_logits[..., :BASE_VOCAB], rtol=1e-5, atol=1e-5)


def test_load_lora_round_trip_and_replace(llama_dir, tmp_path):
    source = _lora_backbone(llama_dir)
    input_ids = _input_ids(source)
    expected = _logits(source, input_ids)
    source.save_lora(tmp_path / "lora")

    fresh = LlamaBackbone(LlamaConfig(path=str(llama_dir)))  # no LoRA yet: load_lora creates it
    fresh.load_lora(tmp_path / "lora")
    assert fresh.has_lora and fresh.trainable_parameter_count() == 0
    torch.testing.assert_close(_logits(fresh, input_ids), expected, rtol=1e-5, atol=1e-5)

    other = LlamaBackbone(LlamaConfig(path=str(llama_dir), lora=LoraSettings(r=8, alpha=8)))  # replaced
    other.load_lora(tmp_path / "lora", trainable=True)
    torch.testing.assert_close(_logits(other, input_ids), expected, rtol=1e-5, atol=1e-5)
    assert other.trainable_parameter_count() == source.trainable_parameter_count()
    assert other.model.peft_config["default"].r == 64


def test_load_lora_rejects_lora_of_another_model(llama_dir, other_llama_dir, tmp_path):
    _lora_backbone(llama_dir).save_lora(tmp_path / "lora")
    other = LlamaBackbone(LlamaConfig(path=str(other_llama_dir), lora=LoraSettings(r=4)))
    with pytest.raises(InputError, match="trained for another backbone"):
        other.load_lora(tmp_path / "lora")
    assert other.model.peft_config["default"].r == 4  # the current LoRA is kept
    with pytest.raises(InputError, match="not a LoRA directory"):
        other.load_lora(tmp_path)


def test_merged_model_and_save_base(llama_dir, tmp_path):
    from peft import PeftModel

    backbone = _lora_backbone(llama_dir)
    input_ids = _input_ids(backbone)
    lora_logits = _logits(backbone, input_ids)
    merged = backbone.merged_model().eval()
    assert not isinstance(merged, PeftModel) and not any("lora_" in n for n, _ in merged.named_parameters())
    assert isinstance(backbone.model, PeftModel)  # merged_model() is a copy
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=input_ids).logits, lora_logits, rtol=1e-4, atol=1e-4)
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=backbone.pad_token_id)
    mask = torch.ones_like(input_ids)
    generated = backbone.generate(backbone.embed_tokens(input_ids), mask, **gen)  # through PEFT
    assert torch.equal(generated, merged.generate(input_ids, attention_mask=mask, **gen)[:, input_ids.shape[1] :])

    backbone.save_base(tmp_path / "merged", merged=True)
    reloaded = LlamaBackbone(LlamaConfig(path=str(tmp_path / "merged")))
    assert reloaded.audio_token_id == backbone.audio_token_id  # bundled tokenizer keeps the token
    assert reloaded.hf_model.get_input_embeddings().weight.shape[0] == BASE_VOCAB + 1
    torch.testing.assert_close(_logits(reloaded, input_ids), lora_logits, rtol=1e-4, atol=1e-4)

    backbone.save_base(tmp_path / "base")  # base weights only, LoRA left out
    base = LlamaBackbone(LlamaConfig(path=str(tmp_path / "base")))
    original = LlamaBackbone(LlamaConfig(path=str(llama_dir)))
    torch.testing.assert_close(_logits(base, input_ids), _logits(original, input_ids))
    assert base.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "user: hi\n"


def test_training_step_and_tied_embeddings(tok_dir, tmp_path):
    """Gradients reach the input embeddings (the adapters) and the LoRA only, with checkpointing."""
    torch.manual_seed(0)
    config = Qwen2Config(
        random_init={**TINY, "tie_word_embeddings": True},
        tokenizer=str(tok_dir),
        lora=LoraSettings(r=4),
        gradient_checkpointing=True,
    )
    backbone = Qwen2Backbone(config).train()
    head = backbone.hf_model.get_output_embeddings().weight
    assert head is backbone.hf_model.get_input_embeddings().weight
    input_ids = _input_ids(backbone)
    embeds = backbone.embed_tokens(input_ids).detach().requires_grad_(True)
    out = backbone(embeds, torch.ones_like(input_ids), labels=input_ids)
    out.loss.backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    grads = {name: p.grad for name, p in backbone.named_parameters()}
    assert all(g is not None for name, g in grads.items() if ".lora_B." in name)
    assert all(g is None for name, g in grads.items() if ".lora_" not in name)

    _perturb_lora(backbone)
    backbone.eval()
    with torch.no_grad(), backbone.model.disable_adapter():
        base_logits = _logits(backbone, input_ids)
    backbone.save_base(tmp_path / "base")
    reloaded = Qwen2Backbone(Qwen2Config(path=str(tmp_path / "base")))
    assert reloaded.hf_model.config.tie_word_embeddings
    torch.testing.assert_close(_logits(reloaded, input_ids), base_logits)


def test_wrong_model_type_is_refused(qwen2_dir, llama_dir):
    with pytest.raises(ComponentError, match=r"'qwen2' model but this backbone expects model_type 'llama'") as err:
        LlamaBackbone(LlamaConfig(path=str(qwen2_dir)))
    assert str(qwen2_dir) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ComponentError, match="expects model_type 'qwen2'"):
        Qwen2Backbone(Qwen2Config(path=str(llama_dir)))


def test_qwen2_preset_matches_hf(qwen2_dir):
    backbone = Qwen2Backbone(Qwen2Config(path=str(qwen2_dir), lora=LoraSettings(r=8)))
    assert backbone.hf_model.config.model_type == "qwen2"
    # transformers picks Qwen2Tokenizer, which adds '<|endoftext|>' (as unk and pad) before the audio token
    assert backbone.tokenizer.pad_token == "<|endoftext|>"
    assert backbone.audio_token_id == len(backbone.tokenizer) - 1 != backbone.pad_token_id
    assert backbone.info().vocab_size == len(backbone.tokenizer)
    input_ids = _input_ids(backbone)
    with torch.no_grad():
        expected = _hf_model(qwen2_dir)(input_ids=input_ids).logits
    # a fresh LoRA (B = 0) does not change the model
    torch.testing.assert_close(_logits(backbone, input_ids)[..., :BASE_VOCAB], expected, rtol=1e-5, atol=1e-5)


def test_random_init_with_tokenizer_and_bundle(tok_dir, tmp_path):
    config = LlamaConfig(random_init=dict(TINY), tokenizer=str(tok_dir), chat_template="{{ messages[0]['content'] }}!")
    torch.manual_seed(0)
    backbone = LlamaBackbone(config)
    hf_config = backbone.hf_model.config
    assert hf_config.model_type == "llama" and hf_config.hidden_size == 32
    assert hf_config.vocab_size == BASE_VOCAB + 1  # the tokenizer's size, audio token included
    assert hf_config.eos_token_id == backbone.tokenizer.eos_token_id
    assert backbone.trainable_parameter_count() == 0
    assert backbone.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi!"

    input_ids = _input_ids(backbone)
    expected = _logits(backbone, input_ids)
    backbone.save_base(tmp_path / "bundle")
    reloaded = LlamaBackbone(LlamaConfig(path=str(tmp_path / "bundle")))
    torch.testing.assert_close(_logits(reloaded, input_ids), expected)
    assert reloaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi!"


def test_random_init_errors(tok_dir):
    with pytest.raises(ComponentError, match="unknown LlamaConfig field"):
        LlamaBackbone(LlamaConfig(random_init={**TINY, "hiden_size": 8}, tokenizer=str(tok_dir)))
    with pytest.raises(ComponentError, match="random_init"):
        LlamaBackbone(LlamaConfig(random_init={**TINY, "hidden_size": 30}, tokenizer=str(tok_dir)))
    with pytest.raises(ComponentError, match="model_type"):
        CausalLMBackbone(CausalLMConfig(random_init=dict(TINY), tokenizer=str(tok_dir)))
    generic = CausalLMBackbone(CausalLMConfig(random_init={**TINY, "model_type": "qwen2"}, tokenizer=str(tok_dir)))
    assert generic.hf_model.config.model_type == "qwen2"


def test_config_validation(llama_dir):
    with pytest.raises(ValidationError, match="not both"):
        LlamaConfig(path=str(llama_dir), random_init=dict(TINY), tokenizer=str(llama_dir))
    with pytest.raises(ValidationError, match="one of 'path'"):
        LlamaConfig()
    with pytest.raises(ValidationError, match="needs 'tokenizer'"):
        LlamaConfig(random_init=dict(TINY))
    with pytest.raises(ValidationError, match="extra"):
        LlamaConfig(path=str(llama_dir), pth="x")
    with pytest.raises(ValidationError, match="extra"):
        LlamaConfig(path=str(llama_dir), lora={"rank": 8})
    with pytest.raises(ValidationError, match="dtype"):
        LlamaConfig(path=str(llama_dir), dtype="float64")
    with pytest.raises(ValidationError, match=".gguf"):
        LlamaConfig(path=str(llama_dir), gguf_file="model.bin")
    defaults = LlamaConfig(path=str(llama_dir), lora={})
    expected_lora = LoraSettings(r=64, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    assert defaults.lora == expected_lora
    assert (defaults.dtype, defaults.trust_remote_code, defaults.audio_token) == ("float32", False, "<audio_patch>")


def test_load_errors_are_one_line(tmp_path, llama_dir):
    with pytest.raises(InputError, match="does not exist") as err:
        LlamaBackbone(LlamaConfig(path=str(tmp_path / "missing")))
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="backbone.path"):
        LlamaBackbone(LlamaConfig(path=str(tmp_path / "empty"), tokenizer=str(llama_dir)))
    with pytest.raises(ComponentError, match="target_modules: 'qkv_proj'"):
        LlamaBackbone(LlamaConfig(path=str(llama_dir), lora=LoraSettings(target_modules=["qkv_proj"])))
    with pytest.raises(ComponentError, match="audio_token"):
        LlamaBackbone(LlamaConfig(path=str(llama_dir), audio_token="</s>"))


def test_bfloat16_dtype(llama_dir):
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_dir), dtype="bfloat16", lora=LoraSettings(r=4)))
    assert backbone.hf_model.get_input_embeddings().weight.dtype == torch.bfloat16
    logits = _logits(backbone, _input_ids(backbone))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_gguf_checkpoint(llama_gguf, llama_dir):
    reference = LlamaBackbone(LlamaConfig(path=str(llama_dir)))
    backbone = LlamaBackbone(LlamaConfig(path=str(llama_gguf.parent), gguf_file=llama_gguf.name))
    absolute = LlamaBackbone(LlamaConfig(gguf_file=str(llama_gguf), lora=LoraSettings(r=4)))
    input_ids = _input_ids(reference)
    assert torch.equal(_input_ids(backbone), input_ids)  # the tokenizer comes from the GGUF metadata
    assert backbone.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "user: hi\n"
    expected = _logits(reference, input_ids)[..., :BASE_VOCAB]
    for model in (backbone, absolute):
        assert model.audio_token_id not in (model.pad_token_id, model.tokenizer.eos_token_id)
        torch.testing.assert_close(_logits(model, input_ids)[..., :BASE_VOCAB], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="gguf_file"):
        LlamaBackbone(LlamaConfig(path=str(llama_gguf.parent), gguf_file="absent.gguf"))


def test_registry_builds_presets(llama_dir):
    from swv.plugins.builtin import swv_register_components
    from swv.registry.components import Registry

    registry = Registry()
    swv_register_components(registry)
    backbone = registry.build("backbone", {"name": "llama", "path": str(llama_dir), "lora": {"r": 4}})
    assert isinstance(backbone, LlamaBackbone) and backbone.model.peft_config["default"].r == 4
    component = registry.resolve("backbone", {"name": "qwen2", "path": "Qwen/Qwen2.5-0.5B"})
    assert component.spec.load_class() is Qwen2Backbone and isinstance(component.config, Qwen2Config)
