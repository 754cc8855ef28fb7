"""CTC rescoring of transcripts (``ctc_weight``, :mod:`swv.infer.rescoring`): the CTC
log-likelihood against torch's own CTC on materialised logits, which answers count as
transcripts, and the pipeline's choice against an independent scoring of both candidates."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from swv.infer.pipeline import GenerationSettings, Pipeline
from swv.model.ctc import greedy_ctc_ids
from swv.model.defaults import ASR_INSTRUCTION
from swv.model.losses import ctc_log_likelihood
from swv.model.prompts import instruction_table, renders_transcript
from swv.model.stopping import end_of_turn_ids
from swv.nn.vocab_logits import VocabLogits

SR = 16000


def test_ctc_log_likelihood_matches_torch_on_materialised_logits() -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 6, 8), torch.randn(11, 8)
    blank = 10
    targets = torch.tensor([[1, 1, 2], [3, 0, 0], [4, 5, 6]])
    target_lengths = torch.tensor([3, 0, 3])
    frames = torch.tensor([6, 4, 2])  # row 2: three tokens cannot fit two frames
    got = ctc_log_likelihood(VocabLogits(hidden, weight), frames, targets, target_lengths, blank)
    log_probs = (hidden @ weight.T).log_softmax(-1).transpose(0, 1)
    want = -F.ctc_loss(log_probs, targets, frames, target_lengths, blank=blank, reduction="none")
    assert torch.allclose(got[:2], want[:2], atol=1e-5)
    assert got[2] == float("-inf") and want[2] == float("-inf")
    # the empty target is the all-blank path of its four frames
    assert math.isclose(float(got[1]), float(log_probs[:4, 1, blank].sum()), abs_tol=1e-5)


def test_which_answers_are_transcripts() -> None:
    table = instruction_table()
    assert renders_transcript(table, ASR_INSTRUCTION) and renders_transcript(table, "x", task="asr")
    assert not renders_transcript(table, "Translate the speech into German.")  # a translation is not rescored
    assert not renders_transcript(table, ASR_INSTRUCTION, task="st")
    assert renders_transcript(instruction_table({"asr": "Transcribe."}), "Transcribe.")


@pytest.fixture(scope="module")
def pipe(save_tiny_model) -> Pipeline:
    return Pipeline.from_pretrained(save_tiny_model("rescore", seed=3))


def clip(pipe: Pipeline, seconds: float, seed: int):
    samples = (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 0.1).astype(np.float32)
    return pipe.prepare(samples, SR, f"noise{seed}")


@torch.no_grad()
def reference_scores(pipe: Pipeline, waveform, candidate: list[int]) -> tuple[float, float]:
    """log P_LLM (teacher-forced, full logits) and log P_CTC (torch's CTC) of ``candidate``."""
    model = pipe.model
    request = pipe.request(waveform, ASR_INSTRUCTION, "asr")
    prepared = pipe.encode_requests([request])
    end = answer_end(pipe)
    ids = torch.tensor([request.ids + candidate + [end]])
    spliced = model.splice(prepared.state, ids, torch.ones_like(ids))
    logits = model.backbone(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                            position_ids=spliced.position_ids).logits[0].float().log_softmax(-1)
    answer = candidate + [end]
    start = spliced.inputs_embeds.shape[1] - len(answer)
    llm = sum(float(logits[start - 1 + i, token]) for i, token in enumerate(answer))
    state = prepared.state
    frames = int(state.ctc_lengths[0])
    log_probs = state.ctc_logits.materialise()[0, :frames].float().log_softmax(-1)[:, None]
    if not candidate:
        return llm, float(log_probs[:, 0, model.audio_token_id].sum())
    ctc = -float(F.ctc_loss(log_probs, torch.tensor([candidate]), torch.tensor([frames]), torch.tensor([len(candidate)]),
                            blank=model.audio_token_id, reduction="sum"))
    return llm, ctc


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_the_higher_joint_score_is_the_answer(pipe: Pipeline, weight: float) -> None:
    model, tokenizer = pipe.model, pipe.tokenizer
    # a random CTC head reads 16-32 tokens from these clips: no length bound, room for them
    settings = GenerationSettings(max_new_tokens=40, length_bound=False)
    stops = set(model.stop_token_ids())
    changed = 0
    for k in range(4):
        waveform = clip(pipe, 1.0 + 0.5 * k, k)
        plain = pipe.generate([waveform], [ASR_INSTRUCTION], settings)[0].text
        rescored = pipe.generate([waveform], [ASR_INSTRUCTION], replace(settings, ctc_weight=weight))[0].text
        with torch.inference_mode():
            prepared = pipe.encode_requests([pipe.request(waveform, ASR_INSTRUCTION, "asr")])
            limit = int(pipe.row_limits(prepared, settings)[0])
            generated = pipe.generate_prepared(prepared, settings)[0].tolist()
        answer = next((generated[:i] for i, t in enumerate(generated) if t in stops), generated)
        state = prepared.state
        reading = greedy_ctc_ids(state.ctc_logits.argmax(), state.ctc_lengths, model.audio_token_id)[0]
        greedy = next((reading[:i] for i, t in enumerate(reading) if t in stops), reading)  # ends at a stop token
        if len(greedy) + 1 > limit or answer == greedy:
            assert rescored == plain
            continue
        llm_a, ctc_a = reference_scores(pipe, waveform, answer)
        llm_g, ctc_g = reference_scores(pipe, waveform, greedy)
        ctc_wins = (1 - weight) * llm_g + weight * ctc_g > (1 - weight) * llm_a + weight * ctc_a
        assert rescored == (pipe.processor.decode_generated(torch.tensor([greedy + [answer_end(pipe)]])).texts[0]
                            if ctc_wins else plain)
        changed += rescored != plain
    if weight == 1.0:
        assert changed, "with the CTC score alone, a random LLM's answer never beats the CTC head's greedy reading"


def answer_end(pipe: Pipeline) -> int:
    tokenizer = pipe.tokenizer
    return end_of_turn_ids(tokenizer, tokenizer.convert_ids_to_tokens(pipe.model.audio_token_id))[0]


def test_other_tasks_and_weight_zero_are_not_rescored(pipe: Pipeline) -> None:
    waveforms = [clip(pipe, 1.5, 7)]
    settings = GenerationSettings(max_new_tokens=12)
    emotion = "What is the emotion of the speaker?"
    plain = pipe.generate(waveforms, [emotion], settings)[0].text
    assert pipe.generate(waveforms, [emotion], GenerationSettings(max_new_tokens=12, ctc_weight=1.0))[0].text == plain
    off = pipe.generate(waveforms, [ASR_INSTRUCTION], GenerationSettings(max_new_tokens=12, ctc_weight=0.0))[0].text
    assert pipe.generate(waveforms, [ASR_INSTRUCTION], settings)[0].text == off  # the model's default: 0, off


def test_ctc_weight_is_checked() -> None:
    from swv.core.errors import UsageError

    with pytest.raises(UsageError, match="ctc_weight"):
        GenerationSettings(ctc_weight=1.5)


def test_swv_infer_and_eval_rescore_with_ctc_weight(save_tiny_model, infer_eval_cli, tmp_path) -> None:
    """One file (printed once chosen, not streamed), a manifest and ``swv eval`` give the
    Pipeline's rescored transcript; without the flag, the model's default (0) leaves it."""
    import json

    import soundfile as sf

    model_dir = save_tiny_model("rescore-cli", seed=3)
    pipe = Pipeline.from_pretrained(model_dir)
    settings = GenerationSettings(max_new_tokens=40, length_bound=False)
    for seed in range(8):  # a clip on which the CTC head's reading wins (see the test above)
        samples = (np.random.default_rng(seed).standard_normal(int(SR * (1.0 + 0.5 * seed))) * 0.1).astype(np.float32)
        waveform = pipe.prepare(samples, SR, "clip")
        plain = pipe.generate([waveform], [ASR_INSTRUCTION], settings)[0].text
        rescored = pipe.generate([waveform], [ASR_INSTRUCTION], replace(settings, ctc_weight=1.0))[0].text
        if rescored != plain:
            break
    assert rescored != plain, "no clip whose CTC reading wins at ctc_weight 1.0"
    wav = tmp_path / "clip.wav"
    sf.write(wav, samples, SR)
    flags = ["--max-new-tokens", 40, "--no-length-bound"]
    code, out, err = infer_eval_cli(["infer", model_dir, wav, *flags, "--ctc-weight", 1.0])
    assert code == 0, err
    assert out == rescored + "\n"
    code, out, err = infer_eval_cli(["infer", model_dir, wav, *flags])
    assert code == 0 and out == plain + "\n", err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(wav), "text": "x"}) + "\n")
    code, _, err = infer_eval_cli(["eval", model_dir, "--manifest", manifest, "--task", "asr", "--output-dir", tmp_path / "ev",
                                   *flags, "--ctc-weight", 1.0])
    assert code == 0, err
    predictions = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == [rescored]
    code, _, err = infer_eval_cli(["infer", model_dir, wav, "--ctc-weight", 2])
    assert code != 0 and "--ctc-weight" in err and "Traceback" not in err


def test_a_ctc_weight_without_a_ctc_head_is_one_error_line(model_config_factory, infer_eval_cli,
                                                          tmp_path) -> None:
    """A model whose chain has no CTC head (conv x4) and ``--ctc-weight``: one error line naming
    the option, non-zero exit, nothing written; without the option it answers."""
    import soundfile as sf

    from swv.model.speechlm import SpeechLM

    torch.manual_seed(0)
    model_dir = SpeechLM(model_config_factory([{"name": "conv", "factor": 4}])).save_pretrained(tmp_path / "conv4")
    wav = tmp_path / "clip.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal(SR) * 0.1).astype(np.float32), SR)
    code, out, err = infer_eval_cli(["infer", model_dir, wav, "--ctc-weight", 0.5, "--max-new-tokens", 4])
    assert code != 0 and out == "" and "Traceback" not in err
    assert "ctc_weight" in err and "no CTC head" in err and len(err.strip().splitlines()) == 1
    code, out, err = infer_eval_cli(["infer", model_dir, wav, "--max-new-tokens", 4])
    assert code == 0 and out.strip(), err
