"""The rows' shared prompt prefix runs once per training batch, with the same losses and
gradients as running every row in full."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from swv.backbones.shared_prefix import MIN_SHARED_PREFIX, shared_prefix_length


def test_shared_prefix_length_stops_at_the_first_difference_mask_or_position() -> None:
    embeds = torch.randn(3, 10, 4)
    embeds[1:, :6] = embeds[0, :6]
    mask = torch.ones(3, 10, dtype=torch.long)
    positions = torch.arange(10).expand(3, 10).clone()
    assert shared_prefix_length(embeds, mask, positions) == 6
    mask[2, 4:] = 0  # a row that ends early (right padding)
    assert shared_prefix_length(embeds, mask, positions) == 4
    mask[:] = 1
    positions[1] += 1
    assert shared_prefix_length(embeds, mask, positions) == 0
    assert shared_prefix_length(embeds[:1], mask[:1], positions[:1]) == 0  # one row: nothing to share


def prompt_batch(model, answers: list[str]) -> dict:
    """Rows with the same system prompt and instruction, different audio and answers."""
    from swv.model.prompts import PromptBuilder

    prompts = PromptBuilder(model.tokenizer, "You are a helpful assistant that listens to speech.", "<audio_patch>")
    rows = [prompts.training_ids("What is said?", answer, True) for answer in answers]
    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), longest), model.tokenizer.pad_token_id)
    labels = torch.full((len(rows), longest), -100)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)], labels[i, : len(lab)], mask[i, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000 - 2400 * i).astype(np.float32) * 0.1 for i in range(len(rows))]
    feats, lens = model.encoder.extract_features(waves)
    return dict(input_features=feats, feature_lengths=lens, input_ids=input_ids, attention_mask=mask, labels=labels)


def losses_and_grads(model, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trained = [p for p in model.parameters() if p.requires_grad]
    out = model(**batch)
    grads = torch.autograd.grad(out.lm_loss, trained, allow_unused=True)
    return out.lm_loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(trained, grads)]


@pytest.mark.parametrize("answers", [["hello there", "hi", "good morning to you"], ["yes", "yes"]])
def test_training_with_the_shared_prefix_matches_every_row_in_full(model_config_factory, answers) -> None:
    from swv.model.speechlm import SpeechLM

    torch.manual_seed(0)
    model = SpeechLM(model_config_factory())  # LoRA without dropout
    batch = prompt_batch(model, answers)
    layer = model.backbone.hf_model.get_decoder().layers[0]
    seen: list[tuple[int, int]] = []
    hook = layer.register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape[:2])))

    shared_loss, shared_grads = losses_and_grads(model.train(), batch)
    first = seen[0]
    assert first[0] == 1 and MIN_SHARED_PREFIX <= first[1] < batch["input_ids"].shape[1], seen
    assert seen[1][0] == len(answers)  # the rest of every row, against the repeated cache

    seen.clear()
    model.backbone.config.share_prompt_prefix = False
    full_loss, full_grads = losses_and_grads(model, batch)
    hook.remove()
    assert [b for b, _ in seen] == [len(answers)]
    assert_close(shared_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert len(shared_grads) > 5
    for ours, ref in zip(shared_grads, full_grads):
        assert_close(ours, ref, rtol=1e-5, atol=1e-6)
