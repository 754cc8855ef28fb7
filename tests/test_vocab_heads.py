"""Vocabulary-sized heads without [B, T, V] tensors: the factored CTC and LM losses give the same
values and gradients as the losses on materialised logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from swv.model.losses import ctc_loss, lm_loss
from swv.nn import vocab_logits
from swv.nn.vocab_logits import VocabLogits

RTOL = 1e-5


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks much smaller than the test shapes, so every sweep crosses row and column blocks."""
    monkeypatch.setattr(vocab_logits, "VOCAB_CHUNK", 7)
    monkeypatch.setattr(vocab_logits, "BLOCK_ELEMENTS", 40)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * max(scale, 1e-30))


def reference_ctc(hidden, weight, lengths, targets, target_lengths, blank):
    """The loss before this change: torch's CTC on the full log-softmax."""
    log_probs = F.linear(hidden, weight).float().log_softmax(-1).transpose(0, 1)
    return F.ctc_loss(log_probs, targets.clamp(min=0), lengths, target_lengths, blank=blank,
                      reduction="mean", zero_infinity=True)


def ctc_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 6, (1,), generator=gen))
    time = int(torch.randint(1, 12, (1,), generator=gen))
    vocab = int(torch.randint(3, 40, (1,), generator=gen))
    dim = int(torch.randint(1, 9, (1,), generator=gen))
    blank = int(torch.randint(0, vocab, (1,), generator=gen))
    hidden = torch.randn(batch, time, dim, generator=gen) * 2
    weight = torch.randn(vocab, dim, generator=gen)
    lengths = torch.randint(1, time + 1, (batch,), generator=gen)
    max_target = int(torch.randint(0, time + 3, (1,), generator=gen))  # may exceed the frames
    target_lengths = torch.randint(0, max_target + 1, (batch,), generator=gen)
    # few distinct ids, so repeats (which need a blank between them) are frequent
    choices = torch.tensor([i for i in range(min(vocab, 4)) if i != blank] or [(blank + 1) % vocab])
    targets = choices[torch.randint(0, len(choices), (batch, max_target), generator=gen)]
    for row, n in enumerate(target_lengths.tolist()):
        targets[row, n:] = -1  # padding, as the collator pads
    return hidden, weight, lengths, targets, target_lengths, blank


@pytest.mark.parametrize("seed", range(40))
def test_ctc_loss_and_gradients_match_torch_on_full_logits(seed: int) -> None:
    hidden, weight, lengths, targets, target_lengths, blank = ctc_case(seed)
    ours_h, ours_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref_h, ref_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ours = ctc_loss(VocabLogits(ours_h, ours_w), lengths, targets, target_lengths, blank)
    ref = reference_ctc(ref_h, ref_w, lengths, targets, target_lengths, blank)
    assert_close(ours, ref)
    ours.backward()
    ref.backward()
    assert_close(ours_h.grad, ref_h.grad)
    assert_close(ours_w.grad, ref_w.grad)


def test_ctc_cases_cover_empty_repeated_and_impossible_targets() -> None:
    """The random cases above include every special case, one of them zeroed by zero_infinity."""
    empty = repeated = impossible = 0
    for seed in range(40):
        hidden, weight, lengths, targets, target_lengths, blank = ctc_case(seed)
        for row in range(hidden.shape[0]):
            n = int(target_lengths[row])
            target = targets[row, :n]
            repeats = int((target[1:] == target[:-1]).sum()) if n > 1 else 0
            empty += n == 0
            repeated += repeats > 0
            impossible += n + repeats > int(lengths[row])
    assert empty and repeated and impossible


def test_ctc_impossible_row_is_zeroed_and_takes_no_gradient() -> None:
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(6, 4)
    targets = torch.tensor([[1, 1, 1], [2, 3, -1]])  # row 0 needs 5 frames, has 3
    loss = ctc_loss(VocabLogits(hidden, weight), torch.tensor([3, 3]), targets, torch.tensor([3, 2]), 0)
    assert_close(loss, reference_ctc(hidden, weight, torch.tensor([3, 3]), targets, torch.tensor([3, 2]), 0))
    loss.backward()
    assert torch.all(hidden.grad[0] == 0) and torch.any(hidden.grad[1] != 0)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("with_bias", [False, True])
def test_lm_loss_and_gradients_match_cross_entropy_on_full_logits(seed: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch, length, vocab, dim = 3, int(torch.randint(2, 10, (1,), generator=gen)), 37, 5
    hidden = torch.randn(batch, length, dim, generator=gen)
    weight = torch.randn(vocab, dim, generator=gen)
    bias = torch.randn(vocab, generator=gen) if with_bias else None
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[torch.rand(batch, length, generator=gen) < 0.4] = -100
    labels[0] = -100  # a row without any label
    labels[1, 1] = 3  # at least one label
    params = [hidden, weight] + ([bias] if bias is not None else [])
    ours_p = [p.clone().requires_grad_() for p in params]
    ref_p = [p.clone().requires_grad_() for p in params]
    ours = lm_loss(VocabLogits(*ours_p), labels)
    ref = lm_loss(F.linear(*ref_p), labels)
    assert_close(ours, ref)
    ours.backward()
    ref.backward()
    for a, b in zip(ours_p, ref_p):
        assert_close(a.grad, b.grad)


@pytest.mark.parametrize("factored", [False, True])
def test_lm_loss_row_reduction_weighs_each_row_alike(factored: bool) -> None:
    """``row``: the mean over rows of each row's token mean; a row without labels is left out."""
    gen = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(3, 7, 4, generator=gen), torch.randn(19, 4, generator=gen)
    labels = torch.full((3, 7), -100)
    labels[0, 1:7] = torch.tensor([1, 2, 3, 4, 5, 6])  # a long answer: 6 predicted tokens
    labels[2, 6] = 9  # a one-token answer
    full = F.linear(hidden, weight)
    per_row = [F.cross_entropy(full[b, :-1], labels[b, 1:], ignore_index=-100) for b in (0, 2)]
    logits = VocabLogits(hidden, weight) if factored else full
    assert_close(lm_loss(logits, labels, "row"), (per_row[0] + per_row[1]) / 2)
    token_mean = (per_row[0] * 6 + per_row[1]) / 7
    assert_close(lm_loss(logits, labels, "token"), token_mean)
    assert not torch.allclose(token_mean, (per_row[0] + per_row[1]) / 2)
    with pytest.raises(ValueError, match="reduction must be one of"):
        lm_loss(logits, labels, "sum")


def test_lm_loss_without_labels_is_zero_and_keeps_the_graph() -> None:
    hidden = torch.randn(2, 4, 3, requires_grad=True)
    loss = lm_loss(VocabLogits(hidden, torch.randn(11, 3)), torch.full((2, 4), -100))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.all(hidden.grad == 0)


def test_argmax_positions_and_materialise_match_the_full_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    # small integers: exact products, so the duplicated head rows make exact ties
    hidden = torch.randint(-3, 4, (3, 9, 4), generator=gen).float()
    weight = torch.randint(-3, 4, (50, 4), generator=gen).float()
    weight[30:40] = weight[:10]
    bias = torch.randint(-2, 3, (50,), generator=gen).float()
    bias[30:40] = bias[:10]
    logits = VocabLogits(hidden, weight, bias)
    full = F.linear(hidden, weight, bias)
    assert logits.shape == full.shape and torch.equal(logits.materialise(), full)
    assert torch.equal(logits.argmax(), full.argmax(-1))
    rows = torch.tensor([True, False, True])
    assert torch.equal(logits.select_rows(rows).materialise(), full[rows])


def test_log_normaliser_without_hidden_gradient_and_with_trained_head() -> None:
    hidden = torch.randn(2, 5, 3)
    weight = torch.randn(23, 3, requires_grad=True)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    lse = VocabLogits(hidden, weight).log_normaliser(valid)
    expected = F.linear(hidden, weight).logsumexp(-1) * valid
    assert_close(lse, expected)
    (lse * 0.7).sum().backward()
    grad = weight.grad.clone()
    weight.grad = None
    (expected * 0.7).sum().backward()
    assert_close(grad, weight.grad)



def speech_batch(model) -> dict:
    """Two rows with audio and an answer, a CTC transcript each."""
    import numpy as np

    from swv.model.prompts import PromptBuilder

    prompts = PromptBuilder(model.tokenizer, "You are helpful.", "<audio_patch>")
    rows = [prompts.training_ids("What is said?", answer, True) for answer in ("hello there", "hi")]
    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((2, longest), model.tokenizer.pad_token_id)
    labels = torch.full((2, longest), -100)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)], labels[i, : len(lab)], mask[i, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9600)]
    feats, lens = model.encoder.extract_features(waves)
    targets = torch.tensor([[5, 6, 6], [7, 0, 0]])
    return dict(input_features=feats, feature_lengths=lens, input_ids=input_ids, attention_mask=mask, labels=labels,
                ctc_targets=targets, ctc_target_lengths=torch.tensor([3, 1]))


def test_training_forward_never_runs_a_head_over_every_position(model_config_factory) -> None:
    """Training (labels, model.train()) gives the same losses and gradients as evaluation, which
    materialises the LM logits, without calling the LM head or CTC head modules."""
    from swv.model.speechlm import SpeechLM

    torch.manual_seed(0)
    model = SpeechLM(model_config_factory())  # no dropout anywhere in this config
    model.adapters["alignment"].ctc_head.weight.requires_grad_(True)  # a trained CTC head too
    b = speech_batch(model)
    trained = [p for p in model.parameters() if p.requires_grad]

    def run():
        out = model(**b)
        grads = torch.autograd.grad(out.lm_loss + 0.3 * out.ctc_loss, trained, allow_unused=True)
        return out, [torch.zeros_like(p) if g is None else g for p, g in zip(trained, grads)]

    lm_calls, ctc_calls = [], []
    hooks = [
        model.backbone.hf_model.get_output_embeddings().register_forward_hook(lambda *_: lm_calls.append(1)),
        model.adapters["alignment"].ctc_head.register_forward_hook(lambda *_: ctc_calls.append(1)),
    ]
    train_out, train_grads = run()
    assert not lm_calls and train_out.logits is None
    model.eval()
    eval_out, eval_grads = run()
    for hook in hooks:
        hook.remove()
    assert lm_calls and eval_out.logits is not None and not ctc_calls  # evaluation: full LM logits, as before
    assert_close(train_out.lm_loss, eval_out.lm_loss)
    assert_close(train_out.ctc_loss, eval_out.ctc_loss)
    assert len(train_grads) > 10
    for ours, ref in zip(train_grads, eval_grads):
        assert_close(ours, ref)


def test_lm_loss_under_bf16_autocast_matches_the_materialised_logits() -> None:
    """A confident head under bf16 autocast: the factored loss rounds its picked logits as its
    normaliser's blocks (and the materialised head) do, so it is not below zero and agrees with
    the cross-entropy of the autocast logits."""
    torch.manual_seed(0)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (2, 6))
    hidden = weight[targets] * 4.0 + 0.05 * torch.randn(2, 6, 16)  # logits ~ 60: bf16 steps of 0.25
    labels = torch.cat([torch.full((2, 1), -100), targets[:, :-1]], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        factored = lm_loss(VocabLogits(hidden, weight), labels)
        full = lm_loss(F.linear(hidden, weight), labels)
    assert float(factored) >= 0.0
    torch.testing.assert_close(factored, full, atol=2e-2, rtol=0)


def test_trained_float32_head_backward_after_bf16_autocast_forward() -> None:
    """Under bf16 autocast a trained float32 head meets bf16 hidden states; its backward pass
    (outside autocast) recomputes the block logits in the hidden states' dtype, as the forward
    did, and gives the materialised head's gradient."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8).to(torch.bfloat16)
    weight = torch.randn(23, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lse = VocabLogits(hidden, weight).log_normaliser(torch.ones(2, 5, dtype=torch.bool))
    lse.sum().backward()
    grad = weight.grad.clone()
    weight.grad = None
    F.linear(hidden, weight.to(torch.bfloat16)).float().logsumexp(-1).sum().backward()
    torch.testing.assert_close(grad, weight.grad, atol=2e-2, rtol=2e-2)
