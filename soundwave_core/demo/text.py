"""The demo's shipped text: a training corpus, dev and held-out sentences, spoken questions.

Files (``swv/assets/demo_text/``, all written for this project):

* ``corpus/*.txt``: the training sentences, one per line, grouped by topic (about 5,000
  everyday English sentences over several thousand distinct words: the alignment adapter has
  to learn English, not a closed word list).
* ``sentences_dev.txt``: sentences for choosing recipes and variants (never trained on, never
  reported as the held-out result).
* ``sentences_heldout.txt``: the held-out sentences the demo reports.
* ``questions_train.tsv`` / ``questions_dev.tsv`` / ``questions_heldout.tsv``:
  ``question<TAB>answer<TAB>keywords``; the question is written as spoken, ``keywords`` are regular
  expressions separated by ``|``, any of which in an answer counts as correct. The dev questions
  are for choosing (never trained on, never reported), like the dev sentences.

Transcripts are lowercase ASCII words separated by single spaces (apostrophes inside words, as in
"don't"; numbers spelled out); ``#`` lines are comments. The dev and held-out sentences come from
a different source (written separately, in another style) than the training corpus, and
:func:`load_demo_text` checks that no dev or held-out item is a training item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from swv.core.errors import InputError

TEXT_DIR = "demo_text"
CORPUS_DIR = "corpus"
_WORD = r"[a-z]+(?:'[a-z]+)*"
_TRANSCRIPT = re.compile(rf"{_WORD}(?: {_WORD})*")


@dataclass(frozen=True)
class Question:
    """A spoken question, its reference answer and the keywords a correct answer contains."""

    text: str
    answer: str
    keywords: tuple[str, ...]

    def is_answered_by(self, prediction: str) -> bool:
        """True when a word of ``prediction`` starts with one of the keywords (case-insensitive;
        so ``egg`` also accepts "eggs")."""
        lowered = prediction.lower()
        return any(re.search(rf"\b(?:{k})", lowered) for k in self.keywords)


@dataclass(frozen=True)
class DemoText:
    train_sentences: tuple[str, ...]
    dev_sentences: tuple[str, ...]
    heldout_sentences: tuple[str, ...]
    train_questions: tuple[Question, ...]
    heldout_questions: tuple[Question, ...]
    dev_questions: tuple[Question, ...] = ()

    def train_transcripts(self) -> list[str]:
        return [*self.train_sentences, *(q.text for q in self.train_questions)]

    def heldout_transcripts(self) -> list[str]:
        return [*self.heldout_sentences, *(q.text for q in self.heldout_questions)]

    def oov_rate(self, sentences: tuple[str, ...]) -> float:
        """Share of the words of ``sentences`` that never occur in the training transcripts."""
        vocabulary = {w for t in self.train_transcripts() for w in t.split()}
        words = [w for s in sentences for w in s.split()]
        return sum(w not in vocabulary for w in words) / max(1, len(words))


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return [(n, line.rstrip()) for n, line in enumerate(raw, start=1) if line.strip() and not line.startswith("#")]


def _check_transcript(text: str, where: str) -> str:
    if not _TRANSCRIPT.fullmatch(text):
        raise InputError(
            f"{where}: transcripts must be lowercase words (letters, apostrophes inside words) and single spaces, got {text!r}"
        )
    return text


def read_sentences(*paths: Path) -> tuple[str, ...]:
    """The sentences of ``paths``, in order; a sentence that appears twice is an error."""
    sentences = tuple(_check_transcript(line, f"{path}:{n}") for path in paths for n, line in _lines(path))
    return _unique(sentences, paths[0].parent if len(paths) > 1 else paths[0])


def read_corpus(directory: Path) -> tuple[str, ...]:
    """Every ``*.txt`` file of ``directory`` (sorted by name), as one list of sentences."""
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise InputError(f"{directory}: no *.txt corpus files")
    return read_sentences(*files)


def read_questions(path: Path) -> tuple[Question, ...]:
    out = []
    for n, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise InputError(f"{path}:{n}: expected question<TAB>answer<TAB>keywords")
        question = _check_transcript(parts[0], f"{path}:{n}")
        keywords = tuple(k.strip() for k in parts[2].split("|") if k.strip())
        out.append(Question(question, parts[1].strip(), keywords))
    _unique(tuple(q.text for q in out), path)
    return tuple(out)


def _unique(items: tuple[str, ...], path: Path) -> tuple[str, ...]:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise InputError(f"{path}: {item!r} appears twice")
        seen.add(item)
    return items


def check_disjoint(
    train: tuple[str, ...] | list[str], heldout: tuple[str, ...] | list[str], what: str, split: str = "held-out"
) -> None:
    """Raise :class:`InputError` if a ``split`` item is also a training item."""
    shared = sorted(set(train) & set(heldout))
    if shared:
        raise InputError(f"{len(shared)} {split} {what} also in the training set (first: {shared[0]!r})")


def load_demo_text(directory: Path | None = None) -> DemoText:
    """Read and check the text files (default: the packaged ``demo_text`` assets)."""
    if directory is None:
        from swv.assets import asset_path

        directory = asset_path(TEXT_DIR)
    text = DemoText(
        train_sentences=read_corpus(directory / CORPUS_DIR),
        dev_sentences=read_sentences(directory / "sentences_dev.txt"),
        heldout_sentences=read_sentences(directory / "sentences_heldout.txt"),
        train_questions=read_questions(directory / "questions_train.tsv"),
        heldout_questions=read_questions(directory / "questions_heldout.tsv"),
        dev_questions=read_questions(directory / "questions_dev.tsv"),
    )
    every_train = text.train_transcripts()
    heldout_questions = [q.text for q in text.heldout_questions]
    check_disjoint(every_train, text.dev_sentences, "sentences", split="dev")
    check_disjoint(every_train, text.heldout_sentences, "sentences")
    check_disjoint(every_train, heldout_questions, "questions")
    check_disjoint(text.dev_sentences, text.heldout_sentences, "sentences (among the dev sentences)")
    check_disjoint(text.heldout_sentences, heldout_questions, "questions (among held-out sentences)")
    dev_questions = [q.text for q in text.dev_questions]
    check_disjoint(every_train, dev_questions, "questions", split="dev")
    check_disjoint(heldout_questions, dev_questions, "questions (among the held-out questions)", split="dev")
    return text
