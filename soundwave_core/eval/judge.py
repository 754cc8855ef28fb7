"""An LLM judge for open-ended answers (``swv eval --task open --judge-url``, AIR-Bench chat).

The judge is any OpenAI-compatible chat endpoint (a local ``swv serve``, vLLM, a hosted API):
each (question, reference answer, model answer) goes to ``<url>/chat/completions`` with
:data:`JUDGE_RUBRIC` as the system message, and the judge's reply must end with a line
``Score: N``, N from 1 to 10. The rubric follows what AIR-Bench's chat track asks its GPT-4 judge
(rate the answer's helpfulness, relevance, accuracy and completeness against the reference,
1-10), in swv's words; AIR-Bench's judge also sees a text description of the audio and scores
the reference too, in both orders, and reports the model's score: swv's judge sees the question
and the reference only (the reference stands in for the audio) and scores the model's answer.

Scores are appended, one JSON line per item, to ``judge_scores.jsonl`` beside the report as they
arrive; a rerun reuses the lines of the same judge model, rubric and texts, so an interrupted
run asks only for the rest. The API key, when the endpoint needs one, is read from the
environment variable ``--judge-api-key-env`` names (never from the command line).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swv.core.errors import ServiceError, first_line

__all__ = ["DEFAULT_JUDGE_KEY_ENV", "DEFAULT_JUDGE_TIMEOUT", "JUDGE_RUBRIC", "JUDGE_SCORES_FILE", "JudgeSettings",
           "judge_items", "judge_messages", "parse_score"]

#: The environment variable holding the judge's API key, unless ``--judge-api-key-env`` names another.
DEFAULT_JUDGE_KEY_ENV = "SWV_JUDGE_API_KEY"
#: Seconds to wait for one judgment.
DEFAULT_JUDGE_TIMEOUT = 120.0
#: Tokens the judge may write per judgment (a short reason and the score line).
JUDGE_MAX_TOKENS = 256
#: The judgments, one JSON line per item, beside the report.
JUDGE_SCORES_FILE = "judge_scores.jsonl"
#: Lowest and highest score.
SCORE_RANGE = (1, 10)

JUDGE_RUBRIC = (
    "You grade the answers an audio assistant gives to questions about a recording. You do not hear "
    "the recording: a reference answer, written by someone who did, tells you what it holds. Read "
    "the question, the reference answer and the assistant's answer. Judge how helpful, relevant, "
    "accurate and complete the assistant's answer is, taking the reference as the truth about the "
    "recording: an answer that contradicts the reference is wrong however fluent it is, and one "
    "that adds nothing the question asks for gains nothing. Length alone earns no credit. Give at "
    "most two sentences of reasons, then a last line of the form 'Score: N' with N a whole number "
    "from 1 (useless or wrong) to 10 (as good as the reference)."
)

_SCORE_LINE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\W*$", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is (``url``: the endpoint's base, e.g. ``http://127.0.0.1:8000/v1``, or its
    ``/chat/completions`` URL), the ``model`` it serves, the environment variable holding its API
    key (unset: no key is sent) and the seconds to wait for one judgment."""

    url: str
    model: str
    api_key_env: str = DEFAULT_JUDGE_KEY_ENV
    timeout: float = DEFAULT_JUDGE_TIMEOUT

    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def describe(self) -> dict[str, Any]:
        """The judge as the report records it (the key's variable name, never the key)."""
        return {"url": self.endpoint(), "model": self.model, "api_key_env": self.api_key_env,
                "rubric_sha256": hashlib.sha256(JUDGE_RUBRIC.encode()).hexdigest()}


def judge_messages(item: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages asking for one item's score (``instruction``, ``reference``, ``prediction``)."""
    user = (f"Question: {item.get('instruction') or '(none)'}\n\n"
            f"Reference answer: {item['reference']}\n\n"
            f"Assistant's answer: {item['prediction']}")
    return [{"role": "system", "content": JUDGE_RUBRIC}, {"role": "user", "content": user}]


def parse_score(reply: str, where: str) -> int:
    """The score of a judge's reply: its last line ``Score: N`` with N a whole number in
    :data:`SCORE_RANGE`; anything else is one line quoting the reply."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    match = _SCORE_LINE.search(lines[-1]) if lines else None
    low, high = SCORE_RANGE
    if match is None or float(match[1]) != int(float(match[1])) or not low <= int(float(match[1])) <= high:
        shown = " ".join(reply.split())[-120:]
        raise ServiceError(f"{where}: the judge's reply does not end with 'Score: N' (N {low}-{high}): {shown!r}")
    return int(float(match[1]))


def _ask(settings: JudgeSettings, messages: list[dict[str, str]], where: str) -> str:
    """The judge's reply to ``messages`` (one HTTP request); any failure is one line."""
    body = json.dumps({"model": settings.model, "messages": messages, "temperature": 0.0,
                       "max_tokens": JUDGE_MAX_TOKENS}).encode()
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(settings.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(settings.endpoint(), data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = first_line(exc.read().decode("utf-8", "replace") or exc.reason)
        raise ServiceError(f"--judge-url {settings.endpoint()}: HTTP {exc.code} ({detail[:200]})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ServiceError(f"--judge-url {settings.endpoint()}: cannot reach the judge ({reason})") from None
    except ValueError:
        raise ServiceError(f"--judge-url {settings.endpoint()}: the answer is not JSON") from None
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ServiceError(f"--judge-url {settings.endpoint()}: not an OpenAI chat completion "
                           f"(no choices[0].message.content) for {where}") from None
    if not isinstance(content, str):
        raise ServiceError(f"--judge-url {settings.endpoint()}: choices[0].message.content is not text for {where}")
    return content


def _key(settings: JudgeSettings, item: Mapping[str, Any]) -> str:
    """What a stored judgment stands for: the judge model, the rubric and the item's texts."""
    parts = [settings.model, JUDGE_RUBRIC, str(item.get("instruction")), item["reference"], item["prediction"]]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _stored(path: Path) -> dict[str, dict[str, Any]]:
    """The judgments already in ``path``, by key (a torn last line of a killed run is ignored)."""
    if not path.is_file():
        return {}
    stored = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("score"), int):
            stored[row["key"]] = row
    return stored


def judge_items(items: Sequence[Mapping[str, Any]], settings: JudgeSettings, scores_path: Path) -> dict[str, Any]:
    """Score every open item (``id``, ``task``, ``instruction``, ``prediction``, ``reference``)
    with the judge, reusing and extending ``scores_path``. Returns ``metrics`` (``judge_score``:
    the mean score, ``scored``), ``per_task`` (the same for each ``task``), ``judge`` (its
    description) and ``scores`` (``id`` -> score)."""
    stored = _stored(scores_path)
    scores: dict[str, int] = {}
    by_task: dict[str, list[int]] = {}
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    with scores_path.open("a", encoding="utf-8") as fh:
        for item in items:
            key = _key(settings, item)
            if key not in stored:
                where = f"item {item['id']!r}"
                reply = _ask(settings, judge_messages(item), where)
                stored[key] = {"id": item["id"], "key": key, "score": parse_score(reply, where), "reply": reply}
                fh.write(json.dumps(stored[key], ensure_ascii=False) + "\n")
                fh.flush()
            scores[str(item["id"])] = stored[key]["score"]
            by_task.setdefault(str(item.get("task") or "default"), []).append(stored[key]["score"])
    return {
        "metrics": {"judge_score": sum(scores.values()) / len(scores) if scores else None, "scored": len(scores)},
        "per_task": {task: {"judge_score": sum(v) / len(v), "scored": len(v)} for task, v in sorted(by_task.items())},
        "judge": settings.describe(),
        "scores": scores,
    }
