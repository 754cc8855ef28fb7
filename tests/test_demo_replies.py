"""The demo's behaviour-alignment rows: the base LLM's replies to the training transcripts."""

from __future__ import annotations

import json
from pathlib import Path

from swv.demo import replies
from swv.demo.replies import as_written, complete_sentences, is_question, reply_candidates, write_reply_manifest
from swv.model.speechlm import SpeechLM

QUESTION_INSTRUCTIONS = ("Answer the question.", "Listen and answer the question.")


def test_questions_statements_and_sentence_ends() -> None:
    assert is_question("what time is it please") and is_question("Can you help me")
    assert not is_question("the bus was late again") and not is_question("")
    assert as_written("what time is it") == "What time is it?"
    assert as_written("the bus was late ") == "The bus was late."
    assert complete_sentences("It is late. I think we") == "It is late."
    assert complete_sentences("Really? Yes!") == "Really? Yes!"
    assert complete_sentences("no end here") == ""


def test_every_question_and_every_nth_statement_become_reply_rows(monkeypatch) -> None:
    monkeypatch.setattr(replies, "STATEMENT_EVERY", 3)
    rows = [{"id": f"r{i}", "text": text, "task": "asr", "instruction": "Transcribe.", "response": text}
            for i, text in enumerate(["where is the bank", "it rained", "it snowed", "it was hot", "how are you", "it was cold"])]
    out = reply_candidates(rows, QUESTION_INSTRUCTIONS)
    assert [r["id"] for r in out] == ["r0-reply", "r4-reply", "r1-reply", "r5-reply"]
    assert [r["instruction"] for r in out] == [*QUESTION_INSTRUCTIONS, *replies.REPLY_INSTRUCTIONS[:2]]
    assert all(r["task"] == "reply" for r in out)


def test_the_manifest_holds_the_model_replies_and_is_reused(model_config_factory, tmp_path: Path, monkeypatch) -> None:
    """Rows get the model's greedy replies to their typed transcripts (rows without a complete
    sentence dropped); a second call for the same rows and model loads no model, another model
    identity writes them again."""
    model = SpeechLM(model_config_factory([{"name": "alignment"}, {"name": "shrinking"}])).eval()
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"c{i}", "audio": f"audio/c{i}.flac", "text": t, "task": "asr", "instruction": "Transcribe.", "response": t}
            for i, t in enumerate(["what is the time", "the cat sat down", "where do you live"])]
    (data / "train_asr_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(replies, "STATEMENT_EVERY", 1)
    canned = iter(["It is noon. And", "A cat!", "nowhere"] * 2)
    monkeypatch.setattr(replies, "base_replies", lambda m, rs: [next(canned) for _ in rs])
    loads = []
    loader = lambda: loads.append(1) or model  # noqa: E731
    summary = write_reply_manifest(loader, "llm A", data, QUESTION_INSTRUCTIONS, log=lambda _: None)
    written = [json.loads(line) for line in (data / "train_reply.jsonl").read_text().splitlines()]
    assert [(r["id"], r["response"], r["audio"]) for r in written] == [
        ("c0-reply", "It is noon.", "audio/c0.flac"), ("c2-reply", "A cat!", "audio/c2.flac")]  # questions first
    assert summary["rows"] == 2 and summary["dropped"] == 1 and not summary["reused"] and loads == [1]
    again = write_reply_manifest(loader, "llm A", data, QUESTION_INSTRUCTIONS, log=lambda _: None)
    assert again["reused"] and loads == [1]
    other = write_reply_manifest(loader, "llm B", data, QUESTION_INSTRUCTIONS, log=lambda _: None)
    assert not other["reused"] and loads == [1, 1]


def test_base_replies_generate_from_the_typed_transcript(model_config_factory) -> None:
    """The prompt is the transcript typed out, then the instruction, without audio: the same
    as the model generating for that text itself."""
    import torch

    from swv.model.processor import SpeechLMProcessor
    from swv.model.stopping import left_pad

    torch.manual_seed(0)
    model = SpeechLM(model_config_factory([{"name": "alignment"}, {"name": "shrinking"}])).eval()
    rows = [{"text": "where is the station", "instruction": "Answer the question."}]
    got = replies.base_replies(model, rows)
    processor = SpeechLMProcessor.from_model(model)
    ids, mask = left_pad([processor.prompts.generation_ids("Where is the station?\nAnswer the question.", has_audio=False)],
                         processor.pad_token_id)
    with torch.no_grad():
        want = processor.batch_decode(model.generate(ids, mask, max_new_tokens=replies.MAX_REPLY_TOKENS, do_sample=False))
    assert got == want


def test_the_demo_writes_replies_before_its_reply_manifest_exists(tiny_whisper_dir: Path, tiny_llama_dir: Path,
                                                                   tmp_path: Path, monkeypatch) -> None:
    """``swv demo`` writes the reply manifest from the demo recipe's untrained model while that
    manifest, one of the recipe's sources, does not exist yet (reading the sources' tags would
    fail on it)."""
    from swv.demo.run import path_overrides, write_replies
    from swv.recipes.loader import load_recipe
    from swv.registry.plugins import default_registry

    monkeypatch.setattr(replies, "MAX_REPLY_TOKENS", 3)
    loaded = load_recipe("demo", path_overrides(tmp_path, tiny_whisper_dir, tiny_llama_dir), default_registry())
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"c{i}", "audio": f"audio/c{i}.flac", "text": t, "task": "asr", "instruction": "Transcribe.", "response": t}
            for i, t in enumerate(["what is the time", "where do you live"])]
    (data / "train_asr_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(replies, "complete_sentences", lambda reply: reply or "(empty)")  # a random LLM ends no sentence
    summary = write_replies(loaded, tiny_llama_dir, data, log=lambda _: None)
    assert summary["rows"] == 2 and (data / "train_reply.jsonl").is_file()
