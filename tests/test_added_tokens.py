"""Added tokens (audio placeholder = CTC blank, sound tags): a tiny model whose only trainable
rows of the vocabulary are the added ones learns to tell two sound tags apart, through its
CTC head and through the LLM, and keeps them through export and reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from swv.model.prompts import PromptBuilder
from swv.model.speechlm import SpeechLM, SpeechLMConfig
from swv.train.trainable import apply_trainable

TAGS = ["<cough>", "<laugh>"]
QUESTION = "Which sound is this?"


def sound_frames(kinds: list[str], dim: int, frames: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder outputs ``[B, frames, dim]`` (and lengths ``[B]``) of two kinds of synthetic sound:
    each kind a fixed random spectral pattern, here a ``cough`` pulsing and a ``laugh`` steady, plus
    noise. They stand in for encoder frames: a tiny random-init encoder barely separates real
    clips, and the adapters and LLM are what is under test."""
    rng = np.random.default_rng(seed)
    patterns = {kind: rng.standard_normal(dim) for kind in ("cough", "laugh")}
    pulse = {"cough": (np.arange(frames) % 6 < 2).astype(np.float64), "laugh": np.ones(frames)}
    clips = [pulse[k][:, None] * patterns[k][None, :] + 0.3 * rng.standard_normal((frames, dim)) for k in kinds]
    return torch.tensor(np.stack(clips), dtype=torch.float32), torch.full((len(kinds),), frames)


def make_model(tiny_whisper_dir: Path, tiny_llama_dir: Path) -> SpeechLM:
    torch.manual_seed(0)
    return SpeechLM(
        SpeechLMConfig(
            encoder={"name": "whisper", "path": str(tiny_whisper_dir), "mode": "trim"},
            adapters=[{"name": "alignment", "dropout": 0.0, "ctc_added_rows_trainable": True}, {"name": "shrinking"}],
            backbone={
                "name": "llama",
                "path": str(tiny_llama_dir),
                "special_tokens": TAGS,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "train_added_tokens": True},
            },
        )
    )


def ctc_tag_choice(logits: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[int]:
    """Per clip, the non-blank token the CTC head scores highest over its valid frames
    (``logits [B, T, V]`` summed as log-probabilities): the label a greedy decoder emits once
    the blank stops dominating, which a few dozen CPU steps do not reach."""
    log_probs = logits.log_softmax(-1)
    log_probs[..., blank] = float("-inf")
    mask = (torch.arange(logits.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
    return log_probs.masked_fill(~mask, 0.0).sum(1).argmax(-1).tolist()


def test_tiny_model_learns_two_distinct_tags(tiny_whisper_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = make_model(tiny_whisper_dir, tiny_llama_dir)
    tok = model.tokenizer
    tag_ids = tok.convert_tokens_to_ids(TAGS)
    blank = model.audio_token_id
    kinds = ["cough", "laugh"] * 2
    embeds, lengths = sound_frames(kinds, model.encoder.output_dim)
    targets = torch.tensor([[tag_ids[i % 2]] for i in range(len(kinds))])

    # before training the two tags already differ: distinct rows in the CTC head and LM head
    model.eval()
    with torch.no_grad():
        ctc = model.encode_audio(None, None, encoder_embeds=embeds, encoder_lengths=lengths, stop_after_ctc=True)
    logits = ctc.ctc_logits.materialise()
    assert not torch.allclose(logits[..., tag_ids[0]], logits[..., tag_ids[1]])

    prompts = PromptBuilder(tok, None, model.backbone.config.audio_token)
    rows = [prompts.training_ids(QUESTION, TAGS[i % 2], True) for i in range(len(kinds))]
    input_ids = torch.tensor([ids for ids, _ in rows])  # same length: one-token answers
    labels = torch.tensor([lab for _, lab in rows])
    counts = apply_trainable(model, ["adapters.alignment", "adapters.shrinking", "lora"], "test")
    assert model.adapters["alignment"].ctc_added_rows.requires_grad
    assert not model.adapters["alignment"].ctc_head.weight.requires_grad
    rows_params = [p for n, p in model.backbone.named_parameters() if ".trainable_tokens_delta." in n]
    assert len(rows_params) == 2 and all(p.requires_grad for p in rows_params)  # untied: input and output rows
    assert counts["backbone.lora"][0] > 0
    frozen_emb = model.backbone.hf_model.get_input_embeddings().weight.detach().clone()

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(40):
        out = model(
            encoder_embeds=embeds,
            encoder_lengths=lengths,
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            labels=labels,
            ctc_targets=targets,
            ctc_target_lengths=torch.ones(len(kinds), dtype=torch.long),
        )
        optimizer.zero_grad()
        (out.lm_loss + out.ctc_loss).backward()
        optimizer.step()
    model.eval()

    # only the added rows of the embeddings moved
    trained_emb = model.backbone.hf_model.get_input_embeddings().weight.detach()
    others = torch.ones(trained_emb.shape[0], dtype=torch.bool)
    others[model.backbone.added_token_ids] = False
    assert torch.equal(trained_emb[others], frozen_emb[others])
    assert not torch.equal(trained_emb[tag_ids], frozen_emb[tag_ids])

    def emitted(m: SpeechLM) -> tuple[list[int], list[int]]:
        with torch.no_grad():
            state = m.encode_audio(None, None, encoder_embeds=embeds, encoder_lengths=lengths)
            prompt = torch.tensor([prompts.generation_ids(QUESTION, True)] * len(kinds))
            spliced = m.splice(state, prompt, torch.ones_like(prompt), padding_side="left")
            new = m.backbone.generate(spliced.inputs_embeds, spliced.attention_mask, max_new_tokens=1, do_sample=False)
        return ctc_tag_choice(state.ctc_logits.materialise(), state.ctc_lengths, blank), new[:, 0].tolist()

    expected = [tag_ids[i % 2] for i in range(len(kinds))]
    ctc_out, generated = emitted(model)
    assert ctc_out == expected
    assert generated == expected

    # the export keeps the trained rows (CTC correction in the adapter, embedding rows in the LoRA)
    loaded = SpeechLM.from_pretrained(model.save_pretrained(tmp_path / "export"))
    assert emitted(loaded) == (ctc_out, generated)
