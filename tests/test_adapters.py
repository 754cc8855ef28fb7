"""Adapters on their own, built through the registry with a hand-made BackboneInfo."""

from __future__ import annotations

import pytest
import torch

from swv.adapters.shrinking import gather_kept, run_starts
from swv.core.errors import ComponentError
from swv.nn.context import BackboneInfo
from swv.nn.state import AudioState
from swv.nn.vocab_logits import VocabLogits
from swv.registry.plugins import load_plugins

HIDDEN, HEADS, VOCAB, BLANK = 16, 2, 20, 19


@pytest.fixture(scope="module")
def registry():
    return load_plugins(autoload=False).registry


@pytest.fixture()
def info() -> BackboneInfo:
    lm_head = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(1))
    return BackboneInfo(HIDDEN, HEADS, VOCAB, BLANK, 0, output_embedding=lambda: lm_head)


def build(registry, info, ref, input_dim=8):
    torch.manual_seed(0)
    adapter = registry.build("adapter", ref, input_dim=input_dim, backbone=info)
    return adapter.eval()


def state(batch=3, time=10, dim=8, lengths=(10, 7, 3), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return AudioState(torch.randn(batch, time, dim, generator=gen), torch.tensor(lengths))


def test_alignment_shapes_ctc_head_and_lengths(registry, info) -> None:
    ad = build(registry, info, {"name": "alignment"})
    out = ad(state())
    assert out.embeds.shape == (3, 5, HIDDEN)
    assert out.lengths.tolist() == [5, 3, 1]
    assert out.ctc_logits is not None and out.ctc_logits.shape == (3, 5, VOCAB)
    assert out.ctc_logits.weight is ad.ctc_head.weight and out.ctc_logits.hidden is out.embeds
    torch.testing.assert_close(out.ctc_logits.materialise(), ad.ctc_head(out.embeds))
    head = info.output_embedding()
    assert torch.equal(ad.ctc_head.weight[:BLANK], head[:BLANK]) and torch.equal(ad.ctc_head.weight[BLANK + 1 :], head[BLANK + 1 :])
    assert not ad.ctc_head.weight.requires_grad
    # the blank row is its own direction; with blank_row=lm_head it is the LM head's row
    blank = ad.ctc_head.weight[BLANK]
    assert torch.isclose(blank.norm(), head[:BLANK].norm(dim=1).mean(), rtol=1e-4)
    assert torch.equal(build(registry, info, {"name": "alignment"}).ctc_head.weight[BLANK], blank)  # deterministic
    assert torch.equal(build(registry, info, {"name": "alignment", "blank_row": "lm_head"}).ctc_head.weight, head)
    trainable = build(registry, info, {"name": "alignment", "ctc_head_trainable": True})
    assert trainable.ctc_head.weight.requires_grad


def test_a_blank_that_averages_other_rows_can_never_win(registry) -> None:
    """Why the blank row must be distinct: a new token's LM-head row is a mean of the other rows,
    so its logit is the mean of theirs and never the argmax; the distinct row can win."""
    lm_head = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(1))
    lm_head[BLANK] = lm_head[:BLANK].mean(dim=0)
    info = BackboneInfo(HIDDEN, HEADS, VOCAB, BLANK, 0, output_embedding=lambda: lm_head)
    hidden = torch.randn(500, HIDDEN, generator=torch.Generator().manual_seed(3))
    mean_head = build(registry, info, {"name": "alignment", "blank_row": "lm_head"}).ctc_head
    assert not bool((mean_head(hidden).argmax(-1) == BLANK).any())
    distinct = build(registry, info, {"name": "alignment"}).ctc_head
    toward_blank = distinct.weight[BLANK] / distinct.weight[BLANK].norm() * 10
    assert bool((distinct(toward_blank[None]).argmax(-1) == BLANK).all())


def test_alignment_trains_only_added_ctc_rows(registry, info) -> None:
    import dataclasses

    added = (BLANK, 3, 7)
    info = dataclasses.replace(info, added_token_ids=added)
    ad = build(registry, info, {"name": "alignment", "dropout": 0.0, "ctc_added_rows_trainable": True})
    assert ad.ctc_added_rows.shape == (3, HIDDEN) and ad.ctc_added_rows.requires_grad
    assert not ad.ctc_head.weight.requires_grad and "ctc_head.weight" in ad.state_dict()
    assert "ctc_head.weight" in ad.always_frozen()
    s = state()
    before = ad(s).ctc_logits.materialise()  # zero-initialised correction: the head starts as the LM head
    torch.testing.assert_close(before, ad.ctc_head(ad(s).embeds))
    before.logsumexp(-1).sum().backward()
    assert ad.ctc_added_rows.grad is not None and ad.ctc_added_rows.grad.abs().sum() > 0
    with torch.no_grad():
        ad.ctc_added_rows.normal_()
    after = ad(s).ctc_logits.materialise().detach()
    changed = (after - before.detach()).abs().amax(dim=(0, 1)) > 0
    assert changed.nonzero().flatten().tolist() == sorted(added)
    with pytest.raises(ComponentError, match="redundant"):
        build(registry, info, {"name": "alignment", "ctc_added_rows_trainable": True, "ctc_head_trainable": True})


def test_alignment_paper_mode_ignores_padding(registry, info) -> None:
    ad = build(registry, info, {"name": "alignment", "dropout": 0.0})
    s = state()
    noisy = AudioState(s.embeds.clone(), s.lengths)
    noisy.embeds[1, 7:] = 100.0
    a, b = ad(s), ad(noisy)
    assert torch.allclose(a.embeds[1, :3], b.embeds[1, :3], atol=1e-5)
    # frames of a row attend to each other: changing one valid frame changes the others
    other = AudioState(s.embeds.clone(), s.lengths)
    other.embeds[0, 0] += 1.0
    assert not torch.allclose(ad(other).embeds[0, 4], a.embeds[0, 4])


def test_alignment_released_mode_is_per_frame(registry, info) -> None:
    ad = build(registry, info, {"name": "alignment", "compat": "released"})
    s = state()
    other = AudioState(s.embeds.clone(), s.lengths)
    other.embeds[0, 0] += 1.0
    a, b = ad(s), ad(other)
    assert torch.allclose(a.embeds[0, 1:], b.embeds[0, 1:], atol=1e-6)
    assert not torch.allclose(a.embeds[0, 0], b.embeds[0, 0])
    # per-frame attention reduces to the value and output projections
    layer = ad.layer
    x = ad.proj(torch.cat([s.embeds[0, 0], s.embeds[0, 1]]))[None]
    h = layer.norm1(x)
    v = torch.nn.functional.linear(h, layer.self_attn.in_proj_weight[2 * HIDDEN :], layer.self_attn.in_proj_bias[2 * HIDDEN :])
    x = x + layer.self_attn.out_proj(v)
    x = x + layer.linear2(torch.relu(layer.linear1(layer.norm2(x))))
    assert torch.allclose(ad.norm(x)[0], a.embeds[0, 0], atol=1e-5)


def test_run_starts_and_gather() -> None:
    tokens = torch.tensor([[3, 3, BLANK, BLANK, 4, 4, 3, 0], [BLANK, BLANK, BLANK, 5, 5, 6, 6, 6]])
    lengths = torch.tensor([8, 6])
    keep = run_starts(tokens, lengths, BLANK, keep_blank_runs=True)
    assert keep.tolist() == [
        [True, False, True, False, True, False, True, True],
        [True, False, False, True, False, True, False, False],
    ]
    no_blank = run_starts(tokens, lengths, BLANK, keep_blank_runs=False)
    assert no_blank[0].tolist() == [True, False, False, False, True, False, True, True]
    all_blank = run_starts(torch.full((1, 4), BLANK), torch.tensor([4]), BLANK, False)
    assert all_blank.tolist() == [[True, False, False, False]]
    embeds = torch.arange(16.0).reshape(2, 8, 1)
    kept, kept_len = gather_kept(embeds, keep)
    assert kept_len.tolist() == [5, 3]
    assert kept[0, :, 0].tolist() == [0.0, 2.0, 4.0, 6.0, 7.0]
    assert kept[1, :3, 0].tolist() == [8.0, 11.0, 13.0] and kept[1, 3:].abs().sum() == 0


def _manual_shrink(ad, frames, keep_row, attend_row):
    kept = frames[keep_row]
    mha = ad.cross_attn
    if attend_row.any():
        att, _ = mha(kept[None], frames[attend_row][None], frames[attend_row][None], need_weights=False)
        att = att[0]
    else:
        att = torch.zeros_like(kept)
    return ad.norm(kept + att)


@pytest.mark.parametrize("compat", ["paper", "released"])
def test_shrinking_cross_attention_targets(registry, info, compat: str) -> None:
    align = build(registry, info, {"name": "alignment"})
    shrink = build(registry, info, {"name": "shrinking", "compat": compat}, input_dim=HIDDEN)
    gen = torch.Generator().manual_seed(3)
    frames = torch.randn(2, 6, HIDDEN, generator=gen)
    tokens = torch.tensor([[1, 1, 2, 2, 2, 3], [4, 4, 4, 5, 5, 5]])
    # a head whose argmax is `tokens`: one-hot hidden states times the identity
    one_hot = torch.nn.functional.one_hot(tokens, VOCAB).float() * 5
    s = AudioState(frames, torch.tensor([6, 4]), ctc_logits=VocabLogits(one_hot, torch.eye(VOCAB)))
    out = shrink(s)
    assert out.lengths.tolist() == [3, 2]
    for b in range(2):
        n = int(s.lengths[b])
        keep = out.keep_mask[b, :n]
        attend = keep if compat == "released" else ~keep
        expected = _manual_shrink(shrink, frames[b, :n], keep, attend)
        assert torch.allclose(out.embeds[b, : out.lengths[b]], expected, atol=1e-5)
    assert align is not None


def test_shrinking_requires_ctc_and_matching_width(registry, info) -> None:
    shrink = build(registry, info, {"name": "shrinking"}, input_dim=HIDDEN)
    with pytest.raises(ComponentError, match="CTC logits"):
        shrink(AudioState(torch.randn(1, 3, HIDDEN), torch.tensor([3])))
    with pytest.raises(ComponentError, match="input width"):
        build(registry, info, {"name": "shrinking"}, input_dim=8)


@pytest.mark.parametrize("ref", [{"name": "conv", "factor": 3}, {"name": "conv", "factor": 4, "kind": "pool"}, {"name": "stack", "factor": 4}])
def test_downsampling_baselines_lengths_and_padding_invariance(registry, info, ref) -> None:
    ad = build(registry, info, ref)
    n = ref["factor"]
    s = state(lengths=(10, 7, 3))
    out = ad(s)
    expected = [-(-length // n) for length in (10, 7, 3)]
    assert out.lengths.tolist() == expected
    assert out.embeds.shape == (3, -(-10 // n), HIDDEN)
    single = ad(AudioState(s.embeds[1:2, :7], torch.tensor([7])))
    assert torch.allclose(out.embeds[1, : expected[1]], single.embeds[0], atol=1e-5)
    assert torch.equal(ad.output_lengths(torch.tensor([10, 7, 3])), out.lengths)


def test_unknown_adapter_and_bad_args(registry, info) -> None:
    with pytest.raises(ComponentError, match="did you mean 'shrinking'"):
        registry.build("adapter", {"name": "shrinkng"}, input_dim=8, backbone=info)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        registry.build("adapter", {"name": "conv", "factr": 3}, input_dim=8, backbone=info)


def test_shrinking_posterior_embedding(registry, info) -> None:
    """The LegoSLM-style option: at each kept frame the expected input embedding under the CTC
    posterior, plus the adapter's own output through a zero-initialised gate."""
    table = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(2))
    info = BackboneInfo(HIDDEN, HEADS, VOCAB, BLANK, 0, output_embedding=info.output_embedding, input_embedding=lambda: table)
    ad = build(registry, info, {"name": "shrinking", "posterior_embedding": True, "keep_blank_runs": False}, input_dim=HIDDEN)
    plain = build(registry, info, {"name": "shrinking", "keep_blank_runs": False}, input_dim=HIDDEN)
    assert not hasattr(plain, "gate") and torch.equal(ad.gate, torch.zeros(HIDDEN))
    tokens = torch.tensor([[3, 3, BLANK, 5, 5, 7], [2, BLANK, BLANK, 2, 0, 0]])
    logits = torch.nn.functional.one_hot(tokens, VOCAB).float() * 30.0  # a confident posterior
    eye = torch.eye(VOCAB)  # logits given directly as the hidden states of an identity head
    s = AudioState(torch.randn(2, 6, HIDDEN), torch.tensor([6, 4]), ctc_logits=VocabLogits(logits, eye), ctc_lengths=torch.tensor([6, 4]))
    out = ad(s)
    assert out.lengths.tolist() == [3, 2]
    # with the gate at zero the LLM gets exactly the token embeddings of the CTC tokens
    assert torch.allclose(out.embeds[0], table[[3, 5, 7]], atol=1e-5)
    assert torch.allclose(out.embeds[1, :2], table[[2, 2]], atol=1e-5) and torch.all(out.embeds[1, 2] == 0)
    # a soft posterior mixes the rows; the gate lets the adapter's own output in, and gets gradients
    soft = s.replace(ctc_logits=VocabLogits(torch.zeros_like(logits), eye))
    assert torch.allclose(ad(soft).embeds[0, 0], table.mean(dim=0), atol=1e-5)
    ad.train()
    ad(s).embeds.sum().backward()
    assert ad.gate.grad is not None and ad.gate.grad.abs().sum() > 0
    with pytest.raises(ComponentError, match="input embeddings"):
        build(registry, BackboneInfo(HIDDEN, HEADS, VOCAB, BLANK, 0), {"name": "shrinking", "posterior_embedding": True}, input_dim=HIDDEN)


def test_shrinking_inference_posterior_temperature(registry, info) -> None:
    """``inference_posterior_temperature`` sharpens (or flattens) the posterior only when the
    adapter is not training; training keeps ``posterior_temperature``."""
    table = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(3))
    info = BackboneInfo(HIDDEN, HEADS, VOCAB, BLANK, 0, output_embedding=info.output_embedding, input_embedding=lambda: table)
    args = {"name": "shrinking", "posterior_embedding": True, "keep_blank_runs": False}
    both = build(registry, info, {**args, "inference_posterior_temperature": 0.5}, input_dim=HIDDEN)
    plain = build(registry, info, args, input_dim=HIDDEN)
    logits = torch.zeros(1, 3, VOCAB)
    logits[0, :, 3], logits[0, :, 4] = 2.0, 1.0  # one kept frame (token 3), a soft posterior
    s = AudioState(torch.randn(1, 3, HIDDEN), torch.tensor([3]), ctc_logits=VocabLogits(logits, torch.eye(VOCAB)),
                   ctc_lengths=torch.tensor([3]))
    for mode in (True, False):
        both.train(mode), plain.train(mode)
        expected = (logits[0, 0] / (1.0 if mode else 0.5)).softmax(dim=-1) @ table
        assert both.temperature() == (1.0 if mode else 0.5) and plain.temperature() == 1.0
        torch.testing.assert_close(both(s).embeds[0, 0], expected)
    torch.testing.assert_close(plain(s).embeds[0, 0], logits[0, 0].softmax(dim=-1) @ table)
