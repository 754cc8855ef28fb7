"""transformers and PEFT conventions of exports: the ``audio-text-to-text`` pipeline batches
with ``batch_size``, takes ``generate_kwargs``, ``text=`` and chat messages like transformers'
own multimodal pipelines and answers as :class:`swv.infer.pipeline.Pipeline` does; an export's
LoRA loads with plain PEFT from any working directory (:func:`swv.model.hf_auto.peft_causal_lm`);
the model card shows the ``import swv`` line without which transformers does not know the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from swv.core.errors import InputError, UsageError
from swv.infer.hf_pipeline import AudioTextToTextPipeline
from swv.infer.pipeline import Pipeline
from swv.model.card import IMPORT_LINE
from swv.model.hf_auto import peft_causal_lm
from swv.model.speechlm import SpeechLM

SR = 16000


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32)


class _Counting(AudioTextToTextPipeline):
    """The task's pipeline, recording how many requests each generate call gets."""

    batches: list[int]

    def _forward(self, model_inputs: dict[str, list[Any]], **settings: Any) -> dict[str, list[Any]]:
        self.batches.append(len(model_inputs["requests"]))
        return super()._forward(model_inputs, **settings)


@pytest.fixture(scope="module")
def export(lora_export: Path) -> Path:
    return lora_export


@pytest.fixture(scope="module")
def pipes(export: Path) -> tuple[Any, Pipeline]:
    import transformers

    hf = transformers.pipeline("audio-text-to-text", model=str(export), device="cpu", pipeline_class=_Counting)
    hf.batches = []
    return hf, Pipeline.from_pretrained(export)


def test_batch_size_generates_a_list_in_batches(pipes: tuple[Any, Pipeline]) -> None:
    hf, swv_pipe = pipes
    clips = [_clip(1.0, 0), _clip(0.6, 1), _clip(0.8, 2)]
    hf.batches = []
    out = hf(clips, sampling_rate=SR, batch_size=2, max_new_tokens=5)
    assert hf.batches == [2, 1]
    assert [o["generated_text"] for o in out] == swv_pipe(clips, sample_rate=SR, max_new_tokens=5, batch_size=2)
    prompted = hf([{"array": c, "sampling_rate": SR, "prompt": "Describe the audio."} for c in clips[:2]],
                  batch_size=2, max_new_tokens=5)
    assert [o["generated_text"] for o in prompted] == swv_pipe(clips[:2], "Describe the audio.", sample_rate=SR,
                                                               max_new_tokens=5)


def test_generate_kwargs_are_generation_settings(export: Path, pipes: tuple[Any, Pipeline]) -> None:
    import transformers

    hf, swv_pipe = pipes
    clip = _clip(1.0, 3)
    want = swv_pipe(clip, sample_rate=SR, max_new_tokens=3)
    assert hf(clip, sampling_rate=SR, generate_kwargs={"max_new_tokens": 3}) == {"generated_text": want}
    assert want != swv_pipe(clip, sample_rate=SR, max_new_tokens=8)  # the setting took effect
    built = transformers.pipeline("audio-text-to-text", model=str(export), device="cpu", sampling_rate=SR,
                                  generate_kwargs={"max_new_tokens": 3})
    assert built(clip) == {"generated_text": want}  # construction arguments are every call's defaults
    assert built(clip, prompt="Describe the audio.") == {
        "generated_text": swv_pipe(clip, "Describe the audio.", sample_rate=SR, max_new_tokens=3)}
    with pytest.raises(UsageError, match="max_new_tokens given twice"):
        hf(clip, sampling_rate=SR, max_new_tokens=3, generate_kwargs={"max_new_tokens": 4})
    with pytest.raises(UsageError, match="generate_kwargs: unsupported num_beams"):
        hf(clip, sampling_rate=SR, generate_kwargs={"num_beams": 2})


def test_text_is_the_instruction(pipes: tuple[Any, Pipeline]) -> None:
    hf, swv_pipe = pipes
    clips = [_clip(0.7, 4), _clip(0.9, 5)]
    assert hf(clips[0], text="Describe the audio.", sampling_rate=SR, max_new_tokens=5) == {
        "generated_text": swv_pipe(clips[0], "Describe the audio.", sample_rate=SR, max_new_tokens=5)}
    prompts = ["Describe the audio.", "What is the speaker's emotion?"]
    out = hf(clips, text=prompts, sampling_rate=SR, batch_size=2, max_new_tokens=5)
    assert [o["generated_text"] for o in out] == swv_pipe(clips, prompts, sample_rate=SR, max_new_tokens=5)
    with pytest.raises(UsageError, match="not both"):
        hf(clips[0], text="a", prompt="b", sampling_rate=SR)
    with pytest.raises(UsageError, match="one string per input"):
        hf(clips, text=prompts[:1], sampling_rate=SR)


def _conversation(clip: np.ndarray, question: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "audio", "audio": clip, "sample_rate": SR},
                                         {"type": "text", "text": question}]}]


def test_chat_messages_answer_like_pipeline_chat(pipes: tuple[Any, Pipeline]) -> None:
    hf, swv_pipe = pipes
    first = _conversation(_clip(0.8, 6), "Describe the audio.")
    second = [*_conversation(_clip(0.5, 7), "What is said?"), {"role": "assistant", "content": "Nothing."},
              {"role": "user", "content": "Are you sure?"}]
    want = [swv_pipe.chat(first, max_new_tokens=5), swv_pipe.chat(second, max_new_tokens=5)]
    assert want[0] and want[1]
    out = hf(text=first, max_new_tokens=5)
    assert out == {"input_text": first, "generated_text": [*first, {"role": "assistant", "content": want[0]}]}
    assert hf(first, max_new_tokens=5) == out  # positional, as transformers detects a chat
    assert hf(text=second, max_new_tokens=5, return_full_text=False) == {"input_text": second,
                                                                          "generated_text": want[1]}
    hf.batches = []
    both = hf(text=[first, second], batch_size=2, generate_kwargs={"max_new_tokens": 5}, return_full_text=False)
    assert hf.batches == [2] and [o["generated_text"] for o in both] == want
    with pytest.raises(UsageError, match="put the audio in the messages' content"):
        hf(_clip(0.5, 8), text=first)
    with pytest.raises(UsageError, match="apply to audio inputs"):
        hf(text=first, prompt="Describe the audio.")


def test_peft_loads_a_moved_export_from_any_directory(
    lora_randomiser, model_config_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = SpeechLM(model_config_factory())
    lora_randomiser(model, 3)
    saved = model.save_pretrained(tmp_path / "made" / "export", bundle=True)
    adapter_config = json.loads((saved / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "backbone"  # relative: survives the move below
    moved = tmp_path / "moved" / "export"
    moved.parent.mkdir()
    saved.rename(moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the export nor its parent
    ids = torch.tensor([[3, 9, 4, 12, 5]])
    with torch.no_grad():
        want = model.backbone(inputs_embeds=model.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits
        llm = peft_causal_lm(moved).eval()
        assert isinstance(llm, PeftModel)
        assert torch.allclose(llm(input_ids=ids).logits, want, atol=1e-5)
        two_step = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(moved / "backbone")), str(moved))
        assert torch.allclose(two_step.eval()(input_ids=ids).logits, want, atol=1e-5)
    assert str(tmp_path) not in (moved / "adapter_config.json").read_text()
    # what the card says of PEFT's own auto class: the relative base path works only inside the export
    card = " ".join((moved / "README.md").read_text().split())
    assert "works only when run inside this directory" in card and 'peft_causal_lm("path/to/MODEL")' in card
    from peft import AutoPeftModelForCausalLM

    with pytest.raises(OSError):  # offline here: no Hub repository named 'backbone' either
        AutoPeftModelForCausalLM.from_pretrained(str(moved))  # inside it, it loads: test_hf_native


def test_peft_loads_an_export_with_a_referenced_backbone(export: Path, tiny_llama_dir: Path) -> None:
    model = SpeechLM.from_pretrained(export)
    ids = torch.tensor([[3, 9, 4, 12, 5]])
    with torch.no_grad():
        want = model.backbone(inputs_embeds=model.backbone.embed_tokens(ids), attention_mask=torch.ones_like(ids)).logits
        got = peft_causal_lm(export).eval()(input_ids=ids).logits
    from transformers import AutoTokenizer

    base_vocab = len(AutoTokenizer.from_pretrained(str(tiny_llama_dir)))  # rows of the tokens swv adds differ
    assert torch.allclose(got[..., :base_vocab], want[..., :base_vocab], atol=1e-5)


def test_peft_base_path_stays_inside_the_export(export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (copy / name).write_bytes((export / name).read_bytes())
    (tmp_path / "outside").mkdir()
    config = json.loads((copy / "adapter_config.json").read_text())
    for base, match in (("../outside", "neither a directory inside the export"), ("", "base_model_name_or_path")):
        (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
        with pytest.raises(InputError, match=match):
            peft_causal_lm(copy)


def test_model_card_shows_the_line_that_registers_swv(export: Path) -> None:
    card = (export / "README.md").read_text()
    assert IMPORT_LINE in card and "KeyError: 'swv_speechlm'" in card
    assert "peft_causal_lm" in card
    code = (
        "import transformers, sys\n"
        f"path = {str(export)!r}\n"
        "try:\n"
        "    transformers.AutoModel.from_pretrained(path)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, 'swv_speechlm' in str(error))\n"
        f"{IMPORT_LINE}\n"
        "print(type(transformers.AutoModel.from_pretrained(path)).__name__)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    error, named, loaded = res.stdout.split()[-3:]
    assert error in ("KeyError", "ValueError") and named == "True" and loaded == "SpeechLM"
