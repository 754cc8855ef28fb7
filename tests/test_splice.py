"""The vectorized audio splice against a simple per-row reference."""

from __future__ import annotations

import pytest
import torch

from swv.core.errors import InputError
from swv.model.splice import IGNORE_INDEX, splice_audio

AUDIO = 7


def reference(token_embeds, input_ids, attention_mask, audio, audio_lengths, labels, padding_side):
    rows = []
    a = 0
    for b in range(input_ids.shape[0]):
        emb, lab, is_audio = [], [], []
        for t in range(input_ids.shape[1]):
            if not attention_mask[b, t]:
                continue
            if input_ids[b, t] == AUDIO:
                n = int(audio_lengths[a])
                emb += list(audio[a, :n])
                lab += [IGNORE_INDEX] * n
                is_audio += [True] * n
                a += 1
            else:
                emb.append(token_embeds[b, t])
                lab.append(int(labels[b, t]))
                is_audio.append(False)
        rows.append((emb, lab, is_audio))
    total = max(len(r[0]) for r in rows)
    dim = token_embeds.shape[-1]
    out = torch.zeros(len(rows), total, dim)
    mask = torch.zeros(len(rows), total, dtype=torch.long)
    out_labels = torch.full((len(rows), total), IGNORE_INDEX)
    pos = torch.zeros(len(rows), total, dtype=torch.bool)
    for b, (emb, lab, is_audio) in enumerate(rows):
        start = total - len(emb) if padding_side == "left" else 0
        for i, (e, l, ia) in enumerate(zip(emb, lab, is_audio)):
            out[b, start + i] = e
            mask[b, start + i] = 1
            out_labels[b, start + i] = l
            pos[b, start + i] = ia
    return out, mask, out_labels, pos


def random_batch(gen: torch.Generator, in_side: str):
    batch, seq_len, dim = 5, 9, 4
    input_ids = torch.randint(10, 50, (batch, seq_len), generator=gen)
    attention_mask = torch.zeros(batch, seq_len, dtype=torch.long)
    lengths = torch.randint(2, seq_len + 1, (batch,), generator=gen)
    has_audio = torch.rand(batch, generator=gen) < 0.7
    has_audio[0] = True
    for b in range(batch):
        n = int(lengths[b])
        sl = slice(seq_len - n, seq_len) if in_side == "left" else slice(0, n)
        attention_mask[b, sl] = 1
        if has_audio[b]:
            # one to three placeholders per audio row, anywhere among the real tokens
            picks = torch.randint(0, n, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen)
            for pick in picks.tolist():
                input_ids[b, list(range(seq_len))[sl][pick]] = AUDIO
    n_audio = int(((input_ids == AUDIO) & attention_mask.bool()).sum())
    audio_lengths = torch.randint(0, 6, (n_audio,), generator=gen)
    audio = torch.randn(n_audio, 6, dim, generator=gen)
    token_embeds = torch.randn(batch, seq_len, dim, generator=gen)
    labels = torch.randint(0, 100, (batch, seq_len), generator=gen)
    return token_embeds, input_ids, attention_mask, audio, audio_lengths, labels


@pytest.mark.parametrize("in_side", ["left", "right"])
@pytest.mark.parametrize("out_side", ["left", "right"])
def test_splice_matches_per_row_reference(in_side: str, out_side: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        te, ids, mask, audio, alen, labels = random_batch(gen, in_side)
        got = splice_audio(te, ids, mask, audio, alen, AUDIO, labels=labels, padding_side=out_side)
        ref_out, ref_mask, ref_labels, ref_pos = reference(te, ids, mask, audio, alen, labels, out_side)
        assert torch.equal(got.attention_mask, ref_mask)
        assert torch.allclose(got.inputs_embeds, ref_out)
        assert torch.equal(got.labels, ref_labels)
        assert torch.equal(got.audio_positions, ref_pos)
        expected_pos = (ref_mask.cumsum(1) - 1).clamp(min=0)
        assert torch.equal(got.position_ids, expected_pos)


def test_text_only_rows_and_count_checks() -> None:
    te = torch.randn(2, 3, 2)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.ones(2, 3, dtype=torch.long)
    out = splice_audio(te, ids, mask, torch.zeros(0, 0, 2), torch.zeros(0, dtype=torch.long), AUDIO)
    assert torch.equal(out.inputs_embeds, te)
    with pytest.raises(InputError, match="1 audio inputs"):
        splice_audio(te, ids, mask, torch.zeros(1, 2, 2), torch.ones(1, dtype=torch.long), AUDIO)
    ids2 = torch.tensor([[AUDIO, 2, AUDIO], [4, 5, 6]])
    with pytest.raises(InputError, match="2 audio placeholder"):
        splice_audio(te, ids2, mask, torch.zeros(1, 2, 2), torch.ones(1, dtype=torch.long), AUDIO)


def test_several_placeholders_in_one_row_take_the_audio_in_order() -> None:
    te = torch.zeros(2, 4, 1)
    ids = torch.tensor([[AUDIO, 3, AUDIO, 4], [0, AUDIO, 5, 6]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    audio = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [3.0, 3.0, 3.0]])[..., None]
    out = splice_audio(te, ids, mask, audio, torch.tensor([2, 1, 3]), AUDIO, padding_side="left")
    # row 0: audio(2) 3 audio(1) 4; row 1: audio(3) 5 6 (text embeddings are zeros)
    assert out.inputs_embeds[..., 0].tolist() == [[1, 1, 0, 2, 0], [3, 3, 3, 0, 0]]
    assert out.audio_positions.tolist() == [[True, True, False, True, False], [True, True, True, False, False]]
    assert out.attention_mask.tolist() == [[1] * 5, [1] * 5]


def test_splice_is_differentiable_wrt_audio() -> None:
    te = torch.randn(1, 3, 2)
    audio = torch.randn(1, 4, 2, requires_grad=True)
    out = splice_audio(te, torch.tensor([[1, AUDIO, 2]]), torch.ones(1, 3, dtype=torch.long), audio, torch.tensor([3]), AUDIO)
    out.inputs_embeds.sum().backward()
    assert audio.grad is not None
    assert torch.equal(audio.grad[0, :3], torch.ones(3, 2)) and torch.equal(audio.grad[0, 3], torch.zeros(2))
