"""The composed model on tiny local checkpoints: every adapter chain, losses, generation,
per-module save/load and the PEFT export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from swv.model.prompts import PromptBuilder
from swv.model.speechlm import SpeechLM

CHAINS = {
    "soundwave": [{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}],
    "conv4": [{"name": "conv", "factor": 4}],
    "stack4": [{"name": "stack", "factor": 4}],
}


def waves(seed: int = 0, seconds: tuple[float, ...] = (1.0, 0.6)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for s in seconds]


def batch(model: SpeechLM, n_audio: int = 2, text_only: bool = True):
    prompts = PromptBuilder(model.tokenizer, "You are helpful.", "<audio_patch>")
    rows = [prompts.training_ids("What is said?", "hello there", True) for _ in range(n_audio)]
    if text_only:
        rows.append(prompts.training_ids("Say hi.", "hi", False))
    longest = max(len(ids) for ids, _ in rows)
    pad = model.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), longest), pad)
    labels = torch.full((len(rows), longest), -100)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    feats, lens = model.encoder.extract_features(waves()[:n_audio])
    ctc = model.tokenizer(["hello there", "hi"][:n_audio], add_special_tokens=False)["input_ids"]
    targets = torch.zeros(n_audio, max(len(c) for c in ctc), dtype=torch.long)
    for i, c in enumerate(ctc):
        targets[i, : len(c)] = torch.tensor(c)
    return dict(
        input_features=feats,
        feature_lengths=lens,
        input_ids=input_ids,
        attention_mask=mask,
        labels=labels,
        ctc_targets=targets,
        ctc_target_lengths=torch.tensor([len(c) for c in ctc]),
    )


@pytest.mark.parametrize("chain", list(CHAINS))
def test_chain_forward_backward_generate(model_config_factory, chain: str) -> None:
    torch.manual_seed(0)
    model = SpeechLM(model_config_factory(CHAINS[chain]))
    assert list(model.adapters) == [a["name"] for a in CHAINS[chain]]
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("backbone.") for n in names)
    assert all(n.split(".")[0] in ("encoder", "adapters", "backbone") for n in names)
    b = batch(model)
    if chain != "soundwave":  # no CTC head in the chain
        b = {k: v for k, v in b.items() if not k.startswith("ctc_")}
    out = model(**b)
    assert out.logits is None  # training: the LM head ran on the labelled positions only
    assert out.lm_loss is not None and torch.isfinite(out.lm_loss)
    assert torch.equal(out.loss, out.lm_loss)  # the Hugging Face meaning: CTC is never in it
    if chain == "soundwave":
        assert out.ctc_loss is not None and out.keep_mask is not None
        assert torch.equal(out.audio_lengths, out.keep_mask.sum(1))
    else:
        assert out.ctc_loss is None
        expected = model.adapters[chain[:-1] if chain != "conv4" else "conv"].output_lengths(model.encoder.output_lengths(b["feature_lengths"]))
        assert torch.equal(out.audio_lengths, expected)
    out.loss.backward()
    adapter_grads = [p.grad for p in model.adapters.parameters() if p.requires_grad]
    assert adapter_grads and all(g is not None for g in adapter_grads)
    assert all(p.grad is None for p in model.encoder.parameters())
    lora = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert lora and all(p.grad is not None for p in lora)
    # generation
    model.eval()
    prompts = PromptBuilder(model.tokenizer, "You are helpful.", "<audio_patch>")
    ids = torch.tensor([prompts.generation_ids("What is said?", True)])
    f, fl = model.encoder.extract_features(waves()[:1])
    new = model.generate(ids, torch.ones_like(ids), f, fl, max_new_tokens=4, do_sample=False)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 4


def test_ctc_only_forward_does_not_run_the_backbone(model_config_factory, monkeypatch) -> None:
    model = SpeechLM(model_config_factory())
    b = batch(model, text_only=False)

    def boom(*args, **kwargs):
        raise AssertionError("backbone ran")

    monkeypatch.setattr(model.backbone, "forward", boom)
    monkeypatch.setattr(model.adapters["shrinking"], "forward", boom)
    out = model(input_features=b["input_features"], feature_lengths=b["feature_lengths"],
                ctc_targets=b["ctc_targets"], ctc_target_lengths=b["ctc_target_lengths"], stop_after_ctc=True)
    assert out.logits is None and out.ctc_loss is not None and out.loss is None and out.lm_loss is None


def test_rows_without_transcript_take_no_ctc_loss(model_config_factory) -> None:
    model = SpeechLM(model_config_factory())
    b = batch(model, text_only=False)
    full = model(input_features=b["input_features"], feature_lengths=b["feature_lengths"],
                 ctc_targets=b["ctc_targets"][:1].expand(2, -1), ctc_target_lengths=torch.tensor([b["ctc_target_lengths"][0], 0]),
                 )
    one = model(input_features=b["input_features"][:1], feature_lengths=b["feature_lengths"][:1],
                ctc_targets=b["ctc_targets"][:1], ctc_target_lengths=b["ctc_target_lengths"][:1])
    assert torch.allclose(full.ctc_loss, one.ctc_loss, atol=1e-5)


def test_batched_generation_matches_single(model_config_factory) -> None:
    torch.manual_seed(1)
    model = SpeechLM(model_config_factory()).eval()
    prompts = PromptBuilder(model.tokenizer, "sys", "<audio_patch>")
    p1 = prompts.generation_ids("What is said?", True)
    p2 = prompts.generation_ids("Describe it please in detail.", True)
    w = waves(3, (0.9, 0.4))
    singles = []
    for p, wav in ((p1, w[0]), (p2, w[1])):
        f, fl = model.encoder.extract_features([wav])
        ids = torch.tensor([p])
        singles.append(model.generate(ids, torch.ones_like(ids), f, fl, max_new_tokens=5, do_sample=False)[0].tolist())
    longest = max(len(p1), len(p2))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in (p1, p2)])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in (p1, p2)])
    f, fl = model.encoder.extract_features(w)
    batched = model.generate(ids, mask, f, fl, max_new_tokens=5, do_sample=False)
    eos = model.tokenizer.eos_token_id
    for row, single in zip(batched.tolist(), singles):
        trimmed = row[: len(single)]
        assert trimmed == single
        assert all(t in (eos, pad) for t in row[len(single):])


def test_save_load_identical_outputs_and_peft_export(model_config_factory, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = SpeechLM(model_config_factory()).eval()
    with torch.no_grad():  # make the LoRA non-trivial
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    b = batch(model)
    ref = model(**b)
    out_dir = model.save_pretrained(tmp_path / "export")
    files = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    assert {"swv_config.json", "adapters/alignment.safetensors", "adapters/shrinking.safetensors",
            "adapter_model.safetensors", "adapter_config.json"} <= files
    assert "encoder.safetensors" not in files and not any(f.startswith("backbone/") for f in files)
    assert not any(".tmp" in f for f in files)
    cfg = json.loads((out_dir / "swv_config.json").read_text())
    assert cfg["adapters"][0]["name"] == "alignment" and "torch" in cfg["versions"]
    loaded = SpeechLM.from_pretrained(out_dir).eval()
    again = loaded(**b)
    assert torch.allclose(ref.logits, again.logits, atol=1e-5)
    assert torch.allclose(ref.loss, again.loss, atol=1e-5)
    # the LoRA loads with plain peft on the plain HF model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model.config.backbone.config.path)
    base.resize_token_embeddings(model.backbone.hf_model.get_input_embeddings().weight.shape[0])
    peft_model = PeftModel.from_pretrained(base, str(out_dir)).eval()
    ids = b["input_ids"][2:3]
    with torch.no_grad():
        expected = model.backbone(inputs_embeds=model.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits
        got = peft_model(input_ids=ids).logits
    # the rows of tokens swv added (initialised from their names) are not in the base checkpoint
    base_vocab = [i for i in range(expected.shape[-1]) if i not in model.backbone.added_token_ids]
    assert torch.allclose(expected[..., base_vocab], got[..., base_vocab], atol=1e-5)


def test_bundle_and_merge_lora_are_self_contained(model_config_factory, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = SpeechLM(model_config_factory()).eval()
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    b = batch(model)
    ref = model(**b)
    out_dir = model.save_pretrained(tmp_path / "bundle", bundle=True, merge_lora=True)
    cfg = json.loads((out_dir / "swv_config.json").read_text())
    assert cfg["encoder"]["path"] == "encoder" and cfg["backbone"]["path"] == "backbone" and cfg["backbone"]["lora"] is None
    assert not (out_dir / "adapter_model.safetensors").exists()
    moved = tmp_path / "moved"
    out_dir.rename(moved)
    loaded = SpeechLM.from_pretrained(moved).eval()
    assert torch.allclose(loaded(**b).logits, ref.logits, atol=1e-4)


def test_chain_errors(model_config_factory, tmp_path: Path) -> None:
    from swv.core.errors import ComponentError, InputError

    with pytest.raises(ComponentError, match="needs CTC logits"):
        SpeechLM(model_config_factory([{"name": "shrinking"}]))
    with pytest.raises(InputError, match="/nonexistent: model directory not found"):
        SpeechLM.from_pretrained(Path("/nonexistent"))
    with pytest.raises(InputError, match="not an swv model directory"):
        SpeechLM.from_pretrained(tmp_path)


def test_seamless_encoder_with_qwen2_backbone(tmp_path: Path) -> None:
    """The other registered encoder and backbone compose the same way (random init, tiny)."""
    from swv.assets import asset_path
    from swv.model.speechlm import SpeechLMConfig

    torch.manual_seed(4)
    config = SpeechLMConfig(
        encoder={"name": "seamless", "random_init": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                      "intermediate_size": 64, "output_hidden_size": 32}},
        adapters=[{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}],
        backbone={"name": "qwen2", "tokenizer": str(asset_path("tiny_tokenizer")),
                  "random_init": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "num_key_value_heads": 2},
                  "lora": {"r": 4, "alpha": 8}},
    )
    model = SpeechLM(config)
    assert type(model.encoder).__name__ == "SeamlessEncoder" and type(model.backbone).__name__ == "Qwen2Backbone"
    b = batch(model)
    out = model(**b)
    assert torch.isfinite(out.loss) and out.ctc_loss is not None
    out.loss.backward()
    model.eval()
    saved = model.save_pretrained(tmp_path / "m")
    loaded = SpeechLM.from_pretrained(saved)
    with torch.no_grad():
        assert torch.allclose(model(**b).logits, loaded(**b).logits, atol=1e-5)
    prompts = PromptBuilder(model.tokenizer, "sys", "<audio_patch>")
    ids = torch.tensor([prompts.generation_ids("What is said?", True)])
    f, fl = model.encoder.extract_features(waves()[:1])
    assert loaded.generate(ids, torch.ones_like(ids), f, fl, max_new_tokens=3, do_sample=False).shape[0] == 1


def test_half_precision_encoder_feeds_float32_adapters(model_config_factory) -> None:
    config = model_config_factory()
    config.encoder = {**config.encoder, "dtype": "bfloat16"}
    model = SpeechLM(config).eval()
    b = batch(model)
    out = model(**b)
    assert out.ctc_logits.hidden.dtype == torch.float32 and torch.isfinite(out.loss)


def test_frozen_adapters_stay_in_eval_mode_when_the_model_trains(model_config_factory) -> None:
    """A stage that freezes the alignment adapter must not run its dropout: the frames the
    shrinking adapter keeps in training are the ones it keeps at inference."""
    model = SpeechLM(model_config_factory([{"name": "alignment", "dropout": 0.1}, {"name": "shrinking"}]))
    alignment, shrinking = model.adapters["alignment"], model.adapters["shrinking"]
    alignment.requires_grad_(False)
    shrinking.requires_grad_(True)
    model.train()
    assert model.training and not alignment.training and shrinking.training
    assert all(not m.training for m in alignment.modules())
    alignment.requires_grad_(True)
    model.train()
    assert alignment.training
    model.eval()
    assert not alignment.training and not shrinking.training
