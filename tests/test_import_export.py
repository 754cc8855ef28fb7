"""``swv import soundwave`` and ``swv export``.

A tiny checkpoint in the released Soundwave layout (the key prefixes of swv.convert.import_soundwave)
is built here, imported and loaded with ``SpeechLM.from_pretrained``; its outputs are compared
with a plain-torch reference of the released behaviour written in this file (30 s padded Whisper,
pair concatenation, projector, the Transformer layer on each frame alone, out_norm, CTC head,
argmax-run shrinking over all 750 frames, cross-attention onto the kept frames, splice, Llama,
loss = token-mean CE + 0.3 x CTC). Export: merged and bundled exports of a model with a random
LoRA reload elsewhere with the same logits; run directories resolve to the right stage.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from swv.assets import asset_path
from swv.cli import model_cmd
from swv.cli.errors import report
from swv.core.errors import InputError, SwvError, UsageError
from swv.model.prompts import PromptBuilder
from swv.model.speechlm import SpeechLM

AUDIO = "<audio_patch>"
WHISPER = dict(d_model=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=256, num_mel_bins=80,
               max_source_positions=1500)
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048)
HEADS = LLAMA["num_attention_heads"]
EPS = 1e-5  # LayerNorm eps of every torch / Whisper LayerNorm
ATOL = 1e-4


# ----------------------------------------------------------------------------------------------
# A tiny released checkpoint
# ----------------------------------------------------------------------------------------------
def _randomised(module: torch.nn.Module, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """The module's state dict with noise added to every tensor (so norms are not identities)."""
    return {k: v + scale * torch.randn_like(v) for k, v in module.state_dict().items()}


def released_parts(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict, object]:
    """(state dict with released key names, config.json dict, tokenizer with <audio_patch>)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    tok = AutoTokenizer.from_pretrained(str(asset_path("tiny_tokenizer")))
    tok.add_special_tokens({"extra_special_tokens": [AUDIO]}, replace_extra_special_tokens=False)
    audio_id = tok.convert_tokens_to_ids(AUDIO)
    torch.manual_seed(seed)
    llama_cfg = LlamaConfig(vocab_size=len(tok) + 3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, **LLAMA)
    state = dict(LlamaForCausalLM(llama_cfg).state_dict())
    whisper = WhisperEncoder(WhisperConfig(**WHISPER))
    state.update({f"model.audio_tower.{k}": v for k, v in _randomised(whisper, 0.02).items()})
    hidden, vocab = LLAMA["hidden_size"], llama_cfg.vocab_size
    proj = torch.nn.Linear(2 * WHISPER["d_model"], hidden)
    layer = torch.nn.TransformerEncoderLayer(hidden, HEADS, 2 * hidden, dropout=0.1, norm_first=True)
    cross = torch.nn.MultiheadAttention(hidden, HEADS)
    state.update({f"model.mm_projector1.{k}": v for k, v in _randomised(proj).items()})
    state.update({f"model.asr_transformer_encoder.layers.0.{k}": v for k, v in _randomised(layer).items()})
    state.update({f"model.out_norm.{k}": v for k, v in _randomised(torch.nn.LayerNorm(hidden)).items()})
    state.update({f"model.lbm.encoder_attn.{k}": v for k, v in _randomised(cross).items()})
    state.update({f"model.lbm.atten_layer_norm.{k}": v for k, v in _randomised(torch.nn.LayerNorm(hidden)).items()})
    # A "peaky" CTC head: the blank and two tokens dominate, so the argmax has runs (blank runs too).
    head = 0.02 * torch.randn(vocab, hidden)
    for token in (audio_id, 100, 200):
        head[token] = torch.randn(hidden)
    state["model.audio_feature_head.weight"] = head
    config = llama_cfg.to_dict()
    config.update(model_type="Soundwave", architectures=["SoundwaveForCausalLM"], audio_tower="openai/whisper-large-v3",
                  adapter_size=WHISPER["d_model"], audio_patch_size=1, audio_patch_token=audio_id,
                  llm_pad_token_id=tok.pad_token_id)
    return state, config, tok


def write_released(directory: Path, state: dict[str, torch.Tensor], config: dict, tok, sharded: bool = True) -> Path:
    """Save in the released layout: two safetensors shards + index (or one model.safetensors),
    config.json, tokenizer."""
    directory.mkdir(parents=True)
    keys = sorted(state)
    if not sharded:
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    else:
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
        weight_map = {}
        for name, part in shards.items():
            save_file({k: state[k].contiguous() for k in part}, str(directory / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory):
    state, config, tok = released_parts()
    src = write_released(tmp_path_factory.mktemp("released") / "ckpt", state, config, tok)
    return src, state, config, tok


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from swv.convert.import_soundwave import import_soundwave

    dest = tmp_path_factory.mktemp("imported") / "swv"
    summary = import_soundwave(released[0], dest)
    assert summary.dest == dest and summary.audio_token_id == released[2]["audio_patch_token"]
    return dest


# ----------------------------------------------------------------------------------------------
# The reference: the released behaviour in plain torch
# ----------------------------------------------------------------------------------------------
def _ln(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], EPS)


def _lin(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.linear(x, state[prefix + "weight"], state.get(prefix + "bias"))


def ref_frames(state: dict, features: torch.Tensor) -> torch.Tensor:
    """30 s features ``[1, M, 3000]`` -> aligned frames ``[750, D]``."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    encoder = WhisperEncoder(WhisperConfig(**WHISPER)).eval()
    prefix = "model.audio_tower."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    with torch.no_grad():
        hidden = encoder(features).last_hidden_state[0]  # [1500, D_enc]
    x = _lin(hidden.reshape(750, -1), state, "model.mm_projector1.")  # pairs concatenated -> [750, D]
    layer = "model.asr_transformer_encoder.layers.0."
    # Each frame is a length-1 sequence: softmax over one key is 1, attention = out_proj(V).
    hidden_dim = x.shape[-1]
    w_v = state[layer + "self_attn.in_proj_weight"][2 * hidden_dim :]
    b_v = state[layer + "self_attn.in_proj_bias"][2 * hidden_dim :]
    x = x + _lin(F.linear(_ln(x, state, layer + "norm1."), w_v, b_v), state, layer + "self_attn.out_proj.")
    x = x + _lin(F.relu(_lin(_ln(x, state, layer + "norm2."), state, layer + "linear1.")), state, layer + "linear2.")
    return _ln(x, state, "model.out_norm.")


def ref_shrink(state: dict, frames: torch.Tensor, ctc_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep t = 0 and every frame whose argmax differs from the previous one; kept frames attend
    to the kept frames (the others are masked as keys); LayerNorm(kept + attention)."""
    tokens = ctc_logits.argmax(-1)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[1:] = tokens[1:] != tokens[:-1]
    kept = frames[keep]
    n, t, d = kept.shape[0], frames.shape[0], frames.shape[1]
    hd = d // HEADS
    w_q, w_k, w_v = state["model.lbm.encoder_attn.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = state["model.lbm.encoder_attn.in_proj_bias"].chunk(3)
    q = F.linear(kept, w_q, b_q).view(n, HEADS, hd).transpose(0, 1)
    k = F.linear(frames, w_k, b_k).view(t, HEADS, hd).transpose(0, 1)
    v = F.linear(frames, w_v, b_v).view(t, HEADS, hd).transpose(0, 1)
    scores = (q @ k.transpose(1, 2)) / math.sqrt(hd)
    scores = scores.masked_fill(~keep[None, None, :], float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, d)
    attended = _lin(attended, state, "model.lbm.encoder_attn.out_proj.")
    return _ln(kept + attended, state, "model.lbm.atten_layer_norm."), keep


def ref_llama(state: dict, config: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "audio_tower", "adapter_size",
                                                             "audio_patch_size", "audio_patch_token", "llm_pad_token_id")}
    llama = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    llama.load_state_dict({k: v for k, v in state.items() if k.startswith(("model.embed_tokens", "model.layers",
                                                                           "model.norm", "lm_head"))})
    return llama


def ref_splice(embed: torch.Tensor, ids: list[int], audio: torch.Tensor, audio_id: int) -> torch.Tensor:
    at = ids.index(audio_id)
    tokens = embed[torch.tensor(ids)]
    return torch.cat([tokens[:at], audio, tokens[at + 1 :]])


def one_second(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------
def test_import_layout_and_config(imported: Path, released) -> None:
    _, state, config, _ = released
    cfg = json.loads((imported / "swv_config.json").read_text())
    assert cfg["encoder"] == {**cfg["encoder"], "name": "whisper", "path": "encoder", "mode": "pad_to_30s"}
    align, shrink = cfg["adapters"]
    assert align == {"name": "alignment", "compat": "released", "stack": 2, "dropout": 0.1, "num_heads": HEADS,
                     "ffn_multiplier": 2.0, "activation": "relu"}
    assert shrink == {"name": "shrinking", "compat": "released", "keep_blank_runs": True, "num_heads": HEADS,
                      "dropout": 0.1}  # the released nn.MultiheadAttention's dropout
    assert cfg["backbone"]["name"] == "llama" and cfg["backbone"]["path"] == "backbone"
    assert "lora" not in cfg["backbone"] or cfg["backbone"]["lora"] is None
    assert cfg["system_prompt"].startswith("You are a helpful language and speech assistant.")
    backbone_cfg = json.loads((imported / "backbone" / "config.json").read_text())
    assert backbone_cfg["model_type"] == "llama" and "audio_tower" not in backbone_cfg
    assert (imported / "backbone" / "model.safetensors.index.json").is_file()  # two source shards -> two
    encoder_cfg = json.loads((imported / "encoder" / "config.json").read_text())
    assert {k: encoder_cfg[k] for k in WHISPER} == WHISPER  # heads = d_model / 64
    assert json.loads((imported / "encoder" / "preprocessor_config.json").read_text())["feature_size"] == 80
    from safetensors.torch import load_file

    shrinking = load_file(str(imported / "adapters" / "shrinking.safetensors"))
    assert torch.equal(shrinking["cross_attn.in_proj_weight"], state["model.lbm.encoder_attn.in_proj_weight"])
    alignment = load_file(str(imported / "adapters" / "alignment.safetensors"))
    assert torch.equal(alignment["ctc_head.weight"], state["model.audio_feature_head.weight"])
    assert torch.equal(alignment["layer.linear1.weight"], state["model.asr_transformer_encoder.layers.0.linear1.weight"])


def test_imported_model_is_hf_native(imported: Path) -> None:
    """The import writes the same config.json and model card as an export."""
    from transformers import AutoConfig

    assert json.loads((imported / "config.json").read_text()) == json.loads((imported / "swv_config.json").read_text())
    assert type(AutoConfig.from_pretrained(str(imported))).__name__ == "SpeechLMConfig"
    assert "Not recorded" in (imported / "README.md").read_text()


def test_imported_model_matches_released_reference(imported: Path, released) -> None:
    from transformers import WhisperFeatureExtractor

    _, state, config, _ = released
    audio_id = config["audio_patch_token"]
    model = SpeechLM.from_pretrained(imported).eval()
    assert model.audio_token_id == audio_id
    assert model.adapters["shrinking"].cross_attn.dropout == 0.1 == model.adapters["alignment"].config.dropout
    wave = one_second()
    feats, lens = model.encoder.extract_features([wave])
    ref_feats = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 3000) and torch.allclose(feats, ref_feats, atol=1e-5)

    prompts = PromptBuilder(model.tokenizer, model.config.system_prompt, AUDIO)
    ids, labels = prompts.training_ids("Transcribe the speech.", "hello world", True)
    target = model.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(input_features=feats, feature_lengths=lens, input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long), labels=torch.tensor([labels]),
                    ctc_targets=torch.tensor([target]), ctc_target_lengths=torch.tensor([len(target)]))

        frames = ref_frames(state, ref_feats)
        ctc_logits = F.linear(frames, state["model.audio_feature_head.weight"])
        shrunk, keep = ref_shrink(state, frames, ctc_logits)
        llama = ref_llama(state, config)
        embed = state["model.embed_tokens.weight"]
        logits = llama(inputs_embeds=ref_splice(embed, ids, shrunk, audio_id)[None]).logits[0]
        at = ids.index(audio_id)
        spliced_labels = torch.tensor(labels[:at] + [-100] * len(shrunk) + labels[at + 1 :])
        ce = F.cross_entropy(logits[:-1], spliced_labels[1:], ignore_index=-100)
        ctc = F.ctc_loss(ctc_logits.log_softmax(-1)[:, None], torch.tensor([target]), torch.tensor([750]),
                         torch.tensor([len(target)]), blank=audio_id, reduction="none", zero_infinity=True) / len(target)
        loss = ce + 0.3 * ctc.mean()

    assert out.ctc_logits.shape == (1, 750, config["vocab_size"])
    torch.testing.assert_close(out.ctc_logits.materialise()[0], ctc_logits, atol=ATOL, rtol=0)
    assert torch.equal(out.keep_mask[0], keep)
    kept_tokens = ctc_logits.argmax(-1)[keep]
    assert 1 < int(keep.sum()) < 750 and bool((kept_tokens == audio_id).any())  # runs, incl. blank runs
    torch.testing.assert_close(out.audio_embeds[0], shrunk, atol=ATOL, rtol=0)
    assert out.logits.shape[1] == len(ids) - 1 + int(keep.sum())
    torch.testing.assert_close(out.logits[0], logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.lm_loss, ce, atol=ATOL, rtol=0)
    # the CTC loss sums 750 frames (~630 here): float32 summation order shows at 1e-7 relative
    torch.testing.assert_close(out.ctc_loss, ctc.mean(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(out.loss, ce, atol=ATOL, rtol=0)  # loss is the LM loss, as in transformers
    torch.testing.assert_close(out.lm_loss + 0.3 * out.ctc_loss, loss, atol=ATOL, rtol=1e-5)

    # Greedy decoding: the reference recomputes the whole sequence at every step.
    gen_ids = prompts.generation_ids("Transcribe the speech.", True)
    steps = 5
    new = model.generate(torch.tensor([gen_ids]), torch.ones(1, len(gen_ids), dtype=torch.long), feats, lens,
                         max_new_tokens=steps, do_sample=False)[0].tolist()
    sequence, expected = ref_splice(embed, gen_ids, shrunk, audio_id), []
    with torch.no_grad():
        for _ in range(steps):
            token = int(llama(inputs_embeds=sequence[None]).logits[0, -1].argmax())
            expected.append(token)
            if token == config["eos_token_id"]:
                break
            sequence = torch.cat([sequence, embed[token][None]])
    assert new[: len(expected)] == expected


def _import_error(tmp_path: Path, state: dict, config: dict, tok) -> SwvError:
    from swv.convert.import_soundwave import import_soundwave

    src = write_released(tmp_path / "bad", state, config, tok)
    with pytest.raises(SwvError) as info:
        import_soundwave(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert "\n" not in str(info.value)
    return info.value


def test_import_errors(tmp_path: Path, released) -> None:
    _, state, config, tok = released
    error = _import_error(tmp_path / "a", state, {**config, "model_type": "llama"}, tok)
    assert isinstance(error, InputError) and "not a Soundwave checkpoint" in str(error)
    missing = {k: v for k, v in state.items() if k != "model.out_norm.bias"}
    assert "missing weight model.out_norm.bias" in str(_import_error(tmp_path / "b", missing, config, tok))
    unknown = {**state, "model.vision_tower.proj.weight": torch.zeros(2, 2)}
    assert "unknown weight model.vision_tower.proj.weight" in str(_import_error(tmp_path / "c", unknown, config, tok))
    extra_layer = {**state, "model.asr_transformer_encoder.layers.1.linear1.weight": torch.zeros(128, 64)}
    assert "unknown weight model.asr_transformer_encoder.layers.1" in str(_import_error(tmp_path / "d", extra_layer, config, tok))
    shape = {**state, "model.lbm.atten_layer_norm.weight": torch.ones(32)}
    assert "model.lbm.atten_layer_norm.weight has shape [32]" in str(_import_error(tmp_path / "e", shape, config, tok))
    wrong_id = {**config, "audio_patch_token": config["audio_patch_token"] - 1}
    error = _import_error(tmp_path / "f", state, wrong_id, tok)
    assert "audio_patch_token" in str(error) and str(config["audio_patch_token"]) in str(error)
    with pytest.raises(UsageError, match="not divisible"):
        from swv.convert.import_soundwave import import_soundwave

        import_soundwave(released[0], tmp_path / "g", shrinking_heads=3)


def cli() -> typer.Typer:
    """The commands mounted as in cli/main.py."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.add_typer(model_cmd.import_app, name="import")
    app.command("export")(model_cmd.export)
    return app


def test_import_cli(tmp_path: Path, released) -> None:
    _, state, config, tok = released
    src = write_released(tmp_path / "single", state, config, tok, sharded=False)
    result = CliRunner().invoke(cli(), ["import", "soundwave", str(src), str(tmp_path / "m"), "--shrinking-heads", "2",
                                        "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert "audio token / CTC blank id" in result.output and "adapters/" in result.output
    cfg = json.loads((tmp_path / "m" / "swv_config.json").read_text())
    assert cfg["adapters"][1]["num_heads"] == 2 and cfg["backbone"]["dtype"] == "float16"
    assert (tmp_path / "m" / "backbone" / "model.safetensors").is_file()  # one source file -> one
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "adapters" / "alignment.safetensors"), "pt") as handle:
        assert handle.get_tensor("proj.weight").dtype == torch.float16
    result = CliRunner().invoke(cli(), ["import", "soundwave", str(src), str(tmp_path / "m")])
    assert isinstance(result.exception, UsageError) and "--overwrite" in str(result.exception)
    result = CliRunner().invoke(cli(), ["import", "soundwave", str(tmp_path / "nothing"), str(tmp_path / "n")])
    assert isinstance(result.exception, InputError)
    assert report(result.exception) == 1


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def _logits(model: SpeechLM) -> torch.Tensor:
    model.eval()
    prompts = PromptBuilder(model.tokenizer, "You are helpful.", AUDIO)
    ids = torch.tensor([prompts.generation_ids("What is said?", True)])
    feats, lens = model.encoder.extract_features([one_second(1)[:12000]])
    with torch.no_grad():
        return model(input_features=feats, feature_lengths=lens, input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.fixture(scope="module")
def trained_run(model_config_factory, tmp_path_factory: pytest.TempPathFactory):
    """A run directory with stages 'align' (LoRA B = 0) and 'sft' (random LoRA B) and run.json."""
    torch.manual_seed(3)
    model = SpeechLM(model_config_factory([{"name": "alignment", "dropout": 0.0}, {"name": "shrinking"}]))
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "align" / "export")
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    model.save_pretrained(run / "sft" / "export")
    (run / "sft" / "checkpoint-1").mkdir()  # not a stage export
    (run / "run.json").write_text(json.dumps({"stages": ["align", "sft", "eval"]}))
    newer = os.stat(run / "sft" / "export" / "swv_config.json").st_mtime + 10
    os.utime(run / "align" / "export" / "swv_config.json", (newer, newer))
    return run, _logits(model)


def test_resolve_model_dir(trained_run, tmp_path: Path) -> None:
    run, _ = trained_run
    assert model_cmd.resolve_model_dir(run / "align" / "export")[0] == run / "align" / "export"
    path, how = model_cmd.resolve_model_dir(run)
    assert path == run / "sft" / "export" and "run.json" in how  # run.json order beats modification time
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "run.json").unlink()
    os.utime(copy / "align" / "export" / "swv_config.json", (2e9, 2e9))
    assert model_cmd.resolve_model_dir(copy)[0] == copy / "align" / "export"  # newest export without run.json
    with pytest.raises(InputError, match="neither an swv model directory"):
        model_cmd.resolve_model_dir(run / "sft")
    (copy / "run.json").write_text(json.dumps({"stages": ["other"]}))
    with pytest.raises(InputError, match="none of the stages"):
        model_cmd.resolve_model_dir(copy)


@pytest.mark.parametrize("merge", [True, False])
def test_export_bundle_reloads_elsewhere(trained_run, tmp_path: Path, merge: bool) -> None:
    run, expected = trained_run
    args = ["export", str(run), str(tmp_path / "out"), "--bundle"] + (["--merge-lora"] if merge else [])
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "stage 'sft'" in result.output and "backbone/" in result.output and "encoder/" in result.output
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "out"), moved)
    cfg = json.loads((moved / "swv_config.json").read_text())
    assert cfg["encoder"]["path"] == "encoder" and cfg["backbone"]["path"] == "backbone"
    assert (moved / "adapter_config.json").is_file() is (not merge)
    assert (cfg["backbone"].get("lora") is None) is merge
    reloaded = SpeechLM.from_pretrained(moved)
    assert reloaded.backbone.has_lora is (not merge)
    torch.testing.assert_close(_logits(reloaded), expected, atol=1e-4, rtol=0)


def test_export_errors(trained_run, tmp_path: Path) -> None:
    run, _ = trained_run
    result = CliRunner().invoke(cli(), ["export", str(run), str(run / "sft" / "export" / "inner")])
    assert isinstance(result.exception, UsageError) and "overlaps" in str(result.exception)
    result = CliRunner().invoke(cli(), ["export", str(tmp_path), str(tmp_path / "x")])
    assert isinstance(result.exception, InputError) and "neither an swv model directory" in str(result.exception)


# ----------------------------------------------------------------------------------------------
# Import: the audio tower's config, the released prompt and sampling defaults
# ----------------------------------------------------------------------------------------------
def released_prompt_ids(tok, system: str, prompt: str) -> list[int]:
    """The released inference's hand-built prompt: header ids joined with separately tokenized
    pieces (each gets the tokenizer's own <|begin_of_text|>)."""
    vocab = tok.get_vocab()
    bos, sh, eh, eot = (vocab[t] for t in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    nl = tok("\n").input_ids
    ids = [bos, sh] + tok("system").input_ids + [eh] + nl + tok(system).input_ids + [eot]
    ids += [sh] + tok("user").input_ids + [eh] + tok("\n" + AUDIO).input_ids + tok(prompt).input_ids + [eot]
    return ids + [sh] + tok("assistant").input_ids + [eh] + nl


def test_import_writes_the_released_prompt_and_sampling_defaults(imported: Path, released) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    from swv.convert.import_soundwave import RELEASED_SYSTEM_PROMPT

    tok = released[3]
    assert tok("a").input_ids[0] == tok.bos_token_id  # this tokenizer adds <|begin_of_text|> to every piece
    model = SpeechLM.from_pretrained(imported)
    assert model.config.system_prompt == RELEASED_SYSTEM_PROMPT and "provides, and assist" in RELEASED_SYSTEM_PROMPT
    prompts = PromptBuilder(model.tokenizer, model.config.system_prompt, AUDIO)
    for instruction in ("Transcribe the speech.", "What is the emotion of the speaker? Answer in one word."):
        expected = released_prompt_ids(tok, RELEASED_SYSTEM_PROMPT, instruction)
        assert prompts.generation_ids(instruction, True) == expected
    # the template is the imported tokenizer's own (also in the top-level tokenizer files)
    top = AutoTokenizer.from_pretrained(str(imported))
    ids = top.apply_chat_template([{"role": "system", "content": RELEASED_SYSTEM_PROMPT},
                                   {"role": "user", "content": f"{AUDIO}\nWhat is said?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert list(ids) == released_prompt_ids(tok, RELEASED_SYSTEM_PROMPT, "What is said?")
    ids, labels = prompts.training_ids("Transcribe the speech.", "hello", True)  # training still masks the answer
    assert labels.count(-100) == len(released_prompt_ids(tok, RELEASED_SYSTEM_PROMPT, "Transcribe the speech."))
    expected = {"do_sample": True, "top_p": 0.9, "temperature": 0.2, "max_new_tokens": 512}
    for directory in (imported, imported / "backbone"):
        config = GenerationConfig.from_pretrained(str(directory))
        assert {k: getattr(config, k) for k in expected} == expected
    # and none of swv's runaway controls: the released decoding as it was
    assert model.generation_defaults().model_dump().items() >= {
        **expected, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0, "length_bound": False}.items()


def test_import_reads_the_audio_tower_config(tmp_path: Path, released) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from swv.convert.import_soundwave import import_soundwave

    _, state, config, tok = released
    tower = tmp_path / "whisper-tower"
    WhisperConfig(**{**WHISPER, "encoder_attention_heads": 4}).save_pretrained(str(tower))  # head size 32, not 64
    src = write_released(tmp_path / "ckpt", state, {**config, "audio_tower": str(tower)}, tok)
    summary = import_soundwave(src, tmp_path / "swv")
    assert summary.encoder["heads"] == 4 and str(tower / "config.json") in summary.encoder_config_source
    model = SpeechLM.from_pretrained(tmp_path / "swv")
    reference = WhisperEncoder(WhisperConfig(**{**WHISPER, "encoder_attention_heads": 4})).eval()
    reference.load_state_dict({k[len("model.audio_tower."):]: v for k, v in state.items() if k.startswith("model.audio_tower.")})
    feats = WhisperFeatureExtractor(feature_size=80)(one_second(), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.encode(feats, torch.tensor([3000])), reference(feats).last_hidden_state)
    # relative to the checkpoint directory works too; a tower whose sizes contradict the weights is an error
    relative = write_released(tmp_path / "rel", state, {**config, "audio_tower": "tower"}, tok)
    shutil.copytree(tower, relative / "tower")
    assert import_soundwave(relative, tmp_path / "swv2").encoder["heads"] == 4
    wrong = tmp_path / "wrong-tower"
    WhisperConfig(**{**WHISPER, "encoder_layers": 3}).save_pretrained(str(wrong))
    error = _import_error(tmp_path / "w", state, {**config, "audio_tower": str(wrong)}, tok)
    assert "encoder_layers is 3" in str(error)


def test_import_without_audio_tower_config_guesses_and_says_so(imported: Path, released, tmp_path: Path) -> None:
    from swv.convert.import_soundwave import import_soundwave

    _, state, config, tok = released
    src = write_released(tmp_path / "ckpt", state, {**config, "audio_tower": str(tmp_path / "absent")}, tok)
    summary = import_soundwave(src, tmp_path / "swv")
    assert summary.encoder["heads"] == WHISPER["d_model"] // 64
    assert "guessed" in summary.encoder_config_source and "absent" in summary.encoder_config_source
    result = CliRunner().invoke(cli(), ["import", "soundwave", str(src), str(tmp_path / "m")])
    assert result.exit_code == 0 and "encoder config: guessed" in result.output


def test_infer_on_an_import_whose_tokenizer_has_no_chat_template(tmp_path: Path, released) -> None:
    import soundfile as sf

    from swv.cli.main import app
    from swv.convert.import_soundwave import import_soundwave

    _, state, config, tok = released
    src = write_released(tmp_path / "ckpt", state, config, tok)
    for name in ("chat_template.jinja", "chat_template.json"):
        (src / name).unlink(missing_ok=True)
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (src / "tokenizer_config.json").write_text(json.dumps(tok_config))
    from transformers import AutoTokenizer

    assert not AutoTokenizer.from_pretrained(str(src)).chat_template
    import_soundwave(src, tmp_path / "swv")
    wav = tmp_path / "a.wav"
    sf.write(str(wav), one_second(), 16000)
    result = CliRunner().invoke(app, ["infer", str(tmp_path / "swv"), str(wav), "--max-new-tokens", "4", "--seed", "0"])
    assert result.exit_code == 0, result.output
