"""The demo's shipped text: sentences and spoken questions, split into training and held-out.

Files (``swv/assets/demo_text/``, written for this project):

* ``sentences_train.txt`` / ``sentences_heldout.txt``: one transcript per line (lowercase letters
  and single spaces, numbers spelled out); ``#`` lines are comments.
* ``questions_train.tsv`` / ``questions_heldout.tsv``: ``question<TAB>answer<TAB>keywords``; the
  question is written as spoken (same convention as the sentences), ``keywords`` are regular
  expressions separated by ``|``, any of which in an answer counts as correct.

No held-out sentence or question is in the training files (checked by :func:`load_demo_text`).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from swv.errors import InputError

TEXT_DIR = "demo_text"
_TRANSCRIPT = re.compile(r"[a-z]+( [a-z]+)*")


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
    heldout_sentences: tuple[str, ...]
    train_questions: tuple[Question, ...]
    heldout_questions: tuple[Question, ...]

    def train_transcripts(self) -> list[str]:
        return [*self.train_sentences, *(q.text for q in self.train_questions)]

    def heldout_transcripts(self) -> list[str]:
        return [*self.heldout_sentences, *(q.text for q in self.heldout_questions)]

    def heldout_oov_rate(self) -> float:
        """Share of held-out sentence words that never occur in the training transcripts."""
        vocabulary = {w for t in self.train_transcripts() for w in t.split()}
        words = [w for s in self.heldout_sentences for w in s.split()]
        return sum(w not in vocabulary for w in words) / max(1, len(words))


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return [(n, line.rstrip()) for n, line in enumerate(raw, start=1) if line.strip() and not line.startswith("#")]


def _check_transcript(text: str, where: str) -> str:
    if not _TRANSCRIPT.fullmatch(text):
        raise InputError(f"{where}: transcripts must be lowercase letters and single spaces, got {text!r}")
    return text


def read_sentences(path: Path) -> tuple[str, ...]:
    sentences = tuple(_check_transcript(line, f"{path}:{n}") for n, line in _lines(path))
    return _unique(sentences, path)


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


def check_disjoint(train: tuple[str, ...] | list[str], heldout: tuple[str, ...] | list[str], what: str) -> None:
    """Raise :class:`InputError` if a held-out item is also a training item."""
    shared = sorted(set(train) & set(heldout))
    if shared:
        raise InputError(f"{len(shared)} held-out {what} also in the training set (first: {shared[0]!r})")


def load_demo_text(directory: Path | None = None) -> DemoText:
    """Read and check the four text files (default: the packaged ``demo_text`` assets)."""
    if directory is None:
        from swv.assets import asset_path

        directory = asset_path(TEXT_DIR)
    text = DemoText(
        train_sentences=read_sentences(directory / "sentences_train.txt"),
        heldout_sentences=read_sentences(directory / "sentences_heldout.txt"),
        train_questions=read_questions(directory / "questions_train.tsv"),
        heldout_questions=read_questions(directory / "questions_heldout.tsv"),
    )
    every_train = text.train_transcripts()
    check_disjoint(every_train, text.heldout_sentences, "sentences")
    check_disjoint(every_train, [q.text for q in text.heldout_questions], "questions")
    check_disjoint(text.heldout_sentences, [q.text for q in text.heldout_questions], "questions (among held-out sentences)")
    return text


# -- generated training transcripts ---------------------------------------------------------------
# New word sequences over the training vocabulary.
#
# The shipped training text has only 306 distinct transcripts, which the alignment adapter learns by
# heart (docs/demo.md). :func:`generate_transcripts` adds many more distinct ones, built **only from
# the words of the training transcripts** (``sentences_train.txt`` + ``questions_train.tsv``), so
# held-out-only words stay unseen and the held-out OOV rate is unchanged. Two kinds, interleaved:
#
# * ``bigram``: a word bigram model of the training transcripts (sentence start included),
#   interpolated with a smoothed unigram distribution (counts ** 0.5, so rare words are drawn more
#   often than in the text): with probability ``bigram_weight`` the next word follows the bigram
#   statistics of the previous word (when it has any), otherwise it is a unigram draw. Lengths are
#   drawn uniformly from ``bigram_lengths``.
# * ``random``: uniformly random words (every vocabulary word equally likely), lengths drawn
#   uniformly from ``random_lengths``: no context to memorise at all.
#
# Deterministic for a seed. A generated transcript is never a training or held-out transcript and
# never repeats (rejected and redrawn).

START = "<s>"


class BigramGenerator:
    """Samples word sequences from an interpolated bigram / smoothed unigram model."""

    def __init__(self, transcripts: Iterable[str], *, bigram_weight: float = 0.7, unigram_power: float = 0.5) -> None:
        counts: Counter[str] = Counter()
        follow: dict[str, Counter[str]] = defaultdict(Counter)
        for text in transcripts:
            words = text.split()
            counts.update(words)
            for prev, word in zip([START, *words[:-1]], words):
                follow[prev][word] += 1
        if not counts:
            raise ValueError("no training words to generate from")
        self.vocabulary = sorted(counts)
        self.unigram_weights = [counts[w] ** unigram_power for w in self.vocabulary]
        self.follow = {prev: (sorted(c), [c[w] for w in sorted(c)]) for prev, c in follow.items()}
        self.bigram_weight = bigram_weight

    def next_word(self, prev: str, rng: random.Random) -> str:
        if prev in self.follow and rng.random() < self.bigram_weight:
            words, weights = self.follow[prev]
            return rng.choices(words, weights)[0]
        return rng.choices(self.vocabulary, self.unigram_weights)[0]

    def bigram_sentence(self, length: int, rng: random.Random) -> str:
        words: list[str] = []
        prev = START
        for _ in range(length):
            prev = self.next_word(prev, rng)
            words.append(prev)
        return " ".join(words)

    def random_sentence(self, length: int, rng: random.Random) -> str:
        return " ".join(rng.choice(self.vocabulary) for _ in range(length))


def generate_transcripts(
    train: Sequence[str],
    exclude: Iterable[str],
    count: int,
    *,
    seed: int = 0,
    random_share: float = 0.5,
    bigram_lengths: tuple[int, int] = (4, 12),
    random_lengths: tuple[int, int] = (5, 12),
    bigram_weight: float = 0.7,
) -> tuple[str, ...]:
    """``count`` distinct new transcripts from the words of ``train`` (see the module docstring).

    ``exclude`` (e.g. the held-out sentences and questions) and ``train`` itself are never
    produced. Every ``1 / random_share``-th item (evenly spread) is a ``random`` sequence, the
    others ``bigram`` samples."""
    if count <= 0:
        return ()
    model = BigramGenerator(train, bigram_weight=bigram_weight)
    banned = set(train) | set(exclude)
    rng = random.Random(f"swv-demo-generated/{seed}")
    out: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise RuntimeError(f"could only generate {len(out)} of {count} distinct transcripts")
        # item i is random when the running share of random items would fall behind random_share
        is_random = int((len(out) + 1) * random_share) > int(len(out) * random_share)
        if is_random:
            text = model.random_sentence(rng.randint(*random_lengths), rng)
        else:
            text = model.bigram_sentence(rng.randint(*bigram_lengths), rng)
        if text in banned or text in seen:
            continue
        seen.add(text)
        out.append(text)
    return tuple(out)
