"""Behaviour alignment data for the demo: the base LLM's own replies to the training transcripts,
as the targets of the same speech.

Sixty hand-written spoken questions taught the demo model an answer per question template, not
to read the question: after Stages II-III it answered "what is the capital of germany" with
"The capital of France is Paris." (docs/demo.md). Here every training clip of a reply subset gets
as its target what the base LLM says when it reads the clip's transcript as text, under the same
instruction. Trained on those rows, the LoRA learns that the audio tokens stand for words the LLM
should answer as it would answer the words, whatever they are (the self-distillation of
BLSP, arXiv 2309.00916, and DeSTA2, arXiv 2409.20007). The replies come from the recipe's model
before any training (its LoRA is zero): the base LLM with the model's own system prompt and chat
template. They are written before Stage I, since every data source of a recipe must exist when
its first stage starts.

Every question of the corpus (first word a question word) becomes a reply row, with the demo's
question instructions, and every ``STATEMENT_EVERY``-th statement, with reply instructions. A reply is cut to its last complete sentence; a row whose
reply has none is dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from swv.core.io import atomic_write_json

#: Instructions of the reply rows whose transcript is a statement (questions take the demo's
#: question instructions).
REPLY_INSTRUCTIONS = (
    "Respond to the speaker.",
    "Reply to what you hear.",
    "Listen and respond briefly.",
)
QUESTION_WORDS = frozenset(
    "what where when who whom whose why how which is are was were can could do does did will would should shall "
    "have has may might".split()
)
#: Every ``STATEMENT_EVERY``-th statement among the training transcripts becomes a reply row (each
#: reply costs the base LLM ~0.3 s on 2 cores when the data is built).
STATEMENT_EVERY = 12
MAX_REPLY_TOKENS = 40
#: Replies generated at once: 0.43 s a reply at 16, 0.32 at 32, 0.28 at 48, 0.25 at 96 (96 replies,
#: the demo's Stage I export, 2 idle cores in float32, 2026-12-07); left padding costs little
#: because most replies run to MAX_REPLY_TOKENS.
REPLY_BATCH_SIZE = 64
SENTENCE_ENDS = ".!?"


def is_question(text: str) -> bool:
    words = text.split()
    return bool(words) and words[0].lower() in QUESTION_WORDS


def as_written(text: str) -> str:
    """A lowercase spoken transcript as the LLM would read it typed: capitalised, with a final
    question mark or full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("?" if is_question(text) else ".")


def complete_sentences(reply: str) -> str:
    """``reply`` up to its last sentence end ("" when it has none)."""
    reply = reply.strip()
    end = max(reply.rfind(mark) for mark in SENTENCE_ENDS)
    return reply[: end + 1] if end >= 0 else ""


def reply_candidates(asr_rows: Sequence[dict[str, Any]], question_instructions: Sequence[str]) -> list[dict[str, Any]]:
    """The training transcription rows that become reply rows (every question, every
    ``STATEMENT_EVERY``-th statement), without their response: ``task: reply``, the instruction
    by the transcript's kind (cycling through each list)."""
    questions = [r for r in asr_rows if is_question(r["text"])]
    statements = [r for r in asr_rows if not is_question(r["text"])][::STATEMENT_EVERY]
    out = []
    for rows, instructions in ((questions, question_instructions), (statements, REPLY_INSTRUCTIONS)):
        out += [{**row, "id": f"{row['id']}-reply", "task": "reply", "instruction": instructions[n % len(instructions)]}
                for n, row in enumerate(rows)]
    return out


@torch.no_grad()
def base_replies(model: Any, rows: Sequence[dict[str, Any]], batch_size: int = REPLY_BATCH_SIZE) -> list[str]:
    """The model's backbone (zero LoRA: the base LLM) replying, greedy, to each row's transcript
    typed out followed by its instruction, as text without audio (the model is put in eval mode)."""
    from swv.model.processor import SpeechLMProcessor
    from swv.model.stopping import left_pad

    model.eval()
    processor = SpeechLMProcessor.from_model(model)
    replies: list[str] = []
    for i in range(0, len(rows), batch_size):
        prompts = [processor.prompts.generation_ids(f"{as_written(r['text'])}\n{r['instruction']}", has_audio=False)
                   for r in rows[i : i + batch_size]]
        ids, mask = left_pad(prompts, processor.pad_token_id)
        replies += processor.batch_decode(model.generate(ids, mask, max_new_tokens=MAX_REPLY_TOKENS, do_sample=False))
    return replies


def write_reply_manifest(model_loader: Callable[[], Any], identity: str, data_dir: Path, question_instructions: Sequence[str],
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """``data_dir/train_reply.jsonl`` from ``data_dir/train_asr_sft.jsonl`` and the model
    ``model_loader()`` returns (called only when the file is not already there for the same rows
    and model ``identity``, e.g. the LLM's config and the system prompt). Returns ``{"rows",
    "dropped", "questions", "reused"}``."""
    from swv.data.manifest import read_manifest, write_manifest

    candidates = reply_candidates([r for _, r in read_manifest(data_dir / "train_asr_sft.jsonl")], question_instructions)
    raw = json.dumps([[r["id"], r["text"], r["instruction"]] for r in candidates] + [identity, MAX_REPLY_TOKENS])
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    stamp, manifest = data_dir / "train_reply.json", data_dir / "train_reply.jsonl"
    if stamp.is_file() and manifest.is_file():
        old = json.loads(stamp.read_text())
        if old.get("fingerprint") == digest:
            log(f"replies: {old['rows']} reply rows already in {manifest}")
            return {**old, "reused": True}
    replies = [complete_sentences(r) for r in base_replies(model_loader(), candidates)]
    rows = [{**row, "response": reply} for row, reply in zip(candidates, replies) if reply]
    write_manifest(manifest, rows)
    summary = {"fingerprint": digest, "rows": len(rows), "dropped": len(candidates) - len(rows),
               "questions": sum(is_question(r["text"]) for r in rows)}
    atomic_write_json(stamp, summary)
    log(f"replies: the base LLM's replies to {len(rows)} training transcripts ({summary['questions']} questions, "
        f"{summary['dropped']} without a complete sentence dropped) -> {manifest}")
    return {**summary, "reused": False}
