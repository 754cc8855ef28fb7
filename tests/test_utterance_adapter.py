"""The utterance adapter: pooled frame statistics -> one more audio token per clip."""

from __future__ import annotations

import numpy as np
import torch

from swv.adapters.utterance import UtteranceAdapter, pooled_statistics
from swv.model.speechlm import SpeechLM

CHAIN = [{"name": "utterance"}, {"name": "alignment", "dropout": 0.0}, {"name": "shrinking", "posterior_embedding": True}]


def waves(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 12000)]


def test_pooled_statistics_read_only_the_masked_frames() -> None:
    embeds = torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    stats = pooled_statistics(embeds.masked_fill(~mask[..., None], 1e6), mask)
    for row, n in enumerate((3, 5)):
        frames = embeds[row, :n]
        torch.testing.assert_close(stats[row, :3], frames.mean(dim=0))
        torch.testing.assert_close(stats[row, 3:], frames.std(dim=0, unbiased=False))


def test_the_vector_is_the_first_audio_token_after_the_chain(model_config_factory) -> None:
    """The chain's output is the chain without it behind one more token: the vector (its bias
    when the projection is zeroed); a CTC-only chain, which ends before the LLM, does not get it."""
    torch.manual_seed(0)
    model = SpeechLM(model_config_factory(CHAIN)).eval()
    utterance = model.adapters["utterance"]
    assert isinstance(utterance, UtteranceAdapter) and utterance.output_dim == model.encoder.output_dim
    with torch.no_grad():
        utterance.proj.weight.zero_()
        utterance.proj.bias.fill_(0.5)
        out = model.encode_audio(waveforms=waves())
        ctc_only = model.encode_audio(waveforms=waves(), stop_after_ctc=True)
        del model.adapters["utterance"]
        without = model.encode_audio(waveforms=waves())
        without_ctc_only = model.encode_audio(waveforms=waves(), stop_after_ctc=True)
    assert torch.equal(out.lengths, without.lengths + 1)
    for row, n in enumerate(without.lengths.tolist()):
        torch.testing.assert_close(out.embeds[row, 0], torch.full_like(out.embeds[row, 0], 0.5))
        torch.testing.assert_close(out.embeds[row, 1 : n + 1], without.embeds[row, :n])
    assert out.utterance_embeds is None  # consumed: one token
    assert ctc_only.utterance_embeds is not None
    torch.testing.assert_close(ctc_only.embeds, without_ctc_only.embeds)


def test_the_vector_depends_on_the_clip_and_is_saved_with_its_statistics(model_config_factory, tmp_path) -> None:
    """Training updates the running statistics (also from a batch of one clip without failing);
    the export carries them: the reloaded model gives the same tokens."""
    torch.manual_seed(0)
    model = SpeechLM(model_config_factory(CHAIN))
    model.train()
    model.adapters["utterance"].proj.weight.requires_grad_(True)
    model.encode_audio(waveforms=waves(1))
    model.encode_audio(waveforms=waves(2)[:1])
    assert int(model.adapters["utterance"].norm.num_batches_tracked) == 1
    model.eval()
    with torch.no_grad():
        vectors = model.encode_audio(waveforms=waves(), stop_after_ctc=True).utterance_embeds
        before = model.encode_audio(waveforms=waves())
    assert not torch.allclose(vectors[0], vectors[1])
    model.save_pretrained(tmp_path / "export")
    again = SpeechLM.from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(again.adapters["utterance"].norm.running_var, model.adapters["utterance"].norm.running_var)
    with torch.no_grad():
        after = again.encode_audio(waveforms=waves())
    torch.testing.assert_close(after.embeds, before.embeds)

