"""Evaluation metrics: WER/CER (jiwer), BLEU/chrF (sacrebleu) and answer matching for classification.

Conventions
-----------
* ``wer`` / ``cer`` and ``accuracy`` are fractions in ``[0, 1]`` (WER/CER can exceed 1 when the
  model inserts many words); ``bleu`` / ``chrf`` are on sacrebleu's 0-100 scale.
* Every function takes parallel sequences (item ``i`` of ``hypotheses`` is scored against item
  ``i`` of ``references``) and returns a plain, JSON-serialisable ``dict``.

Text normalisation
------------------
``normalize_english`` is the Whisper English normaliser shipped with ``transformers``
(lower-casing, bracketed/parenthesised text and fillers removed, contractions and titles expanded,
spelled-out numbers turned into digits, punctuation and diacritics removed). It also maps British
to American spellings, but that list is *not* part of the library: it ships with Whisper tokenizers
as ``normalizer.json``. Pass it as ``spelling_mapping`` (a mapping or a path to that JSON file);
without it spellings are left as they are ("colour" and "color" then count as different words).

``normalize_basic`` is a language-agnostic normaliser for everything else: Unicode NFKC, lower-case,
every punctuation or symbol character replaced by a space, whitespace collapsed. Unlike Whisper's
``BasicTextNormalizer`` it keeps combining marks (which carry vowels in Devanagari, Thai, ...) and
text inside brackets.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from swv.core.errors import InputError, UsageError

__all__ = [
    "AUTO_NORMALIZE",
    "NORMALIZE_CHOICES",
    "NORMALIZE_MODES",
    "NormalizeMode",
    "bleu",
    "bleu_tokenizer_for",
    "canonical_language",
    "cer",
    "classification_accuracy",
    "get_normalizer",
    "match_answer",
    "normalize_basic",
    "normalize_english",
    "wer",
]

#: The text normalisers (the one list: ``swv eval --normalize``, presets and the scorers use it).
NormalizeMode = Literal["english", "basic", "none"]
NORMALIZE_MODES: tuple[str, ...] = get_args(NormalizeMode)
#: Per record: ``english`` for English (or unknown) language, ``basic`` otherwise.
AUTO_NORMALIZE = "auto"
#: What ``swv eval --normalize`` and :func:`swv.eval.evaluation.evaluate` accept.
NORMALIZE_CHOICES: tuple[str, ...] = (AUTO_NORMALIZE, *NORMALIZE_MODES)
SpellingMapping = Mapping[str, str] | str | os.PathLike[str]

# ---------------------------------------------------------------------------------------------
# Languages
# ---------------------------------------------------------------------------------------------

_LANGUAGE_NAMES = {
    "english": "en",
    "chinese": "zh",
    "mandarin": "zh",
    "japanese": "ja",
    "korean": "ko",
    "thai": "th",
    "german": "de",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "russian": "ru",
    "arabic": "ar",
    "dutch": "nl",
    "eng": "en",
    "zho": "zh",
    "chi": "zh",
    "cmn": "zh",
    "jpn": "ja",
    "kor": "ko",
    "tha": "th",
}


def canonical_language(language: str | None) -> str | None:
    """Reduce a language tag to its primary lower-case code: ``"en-US"`` -> ``"en"``,
    ``"zh_CN"`` -> ``"zh"``, ``"Japanese"`` -> ``"ja"``. ``None``/empty gives ``None``; unknown
    tags are returned lower-cased as they are."""
    if language is None:
        return None
    tag = str(language).strip().lower()
    if not tag:
        return None
    primary = re.split(r"[-_\s]", tag, maxsplit=1)[0]
    return _LANGUAGE_NAMES.get(tag, _LANGUAGE_NAMES.get(primary, primary))


# ---------------------------------------------------------------------------------------------
# Normalisers
# ---------------------------------------------------------------------------------------------


def _load_spelling_mapping(spelling_mapping: SpellingMapping) -> dict[str, str]:
    if isinstance(spelling_mapping, Mapping):
        return {str(k): str(v) for k, v in spelling_mapping.items()}
    path = Path(spelling_mapping)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: spelling mapping file not found (expected Whisper's normalizer.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read spelling mapping, expected a JSON object of words ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"{path}: spelling mapping must be a JSON object mapping words to words")
    return data


@functools.lru_cache(maxsize=8)
def _english_normalizer_for_file(path: str) -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(_load_spelling_mapping(path))


@functools.lru_cache(maxsize=1)
def _english_normalizer_plain() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def _english_normalizer(spelling_mapping: SpellingMapping | None) -> Callable[[str], str]:
    if spelling_mapping is None:
        return _english_normalizer_plain()
    if isinstance(spelling_mapping, Mapping):
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        return EnglishTextNormalizer(_load_spelling_mapping(spelling_mapping))
    return _english_normalizer_for_file(os.fspath(Path(spelling_mapping).resolve()))


def normalize_english(text: str, spelling_mapping: SpellingMapping | None = None) -> str:
    """Whisper-style English normalisation (see the module docstring).

    >>> normalize_english("Mr. Smith's 2 cats!")
    'mister smith is 2 cats'

    ``spelling_mapping`` is the British->American spelling list (a mapping, or a path to Whisper's
    ``normalizer.json``); without it spellings are not standardised.
    """
    return _english_normalizer(spelling_mapping)(text).strip()


def normalize_basic(text: str) -> str:
    """Language-agnostic normalisation: NFKC, lower-case, punctuation and symbols -> space,
    whitespace collapsed. Letters, digits and combining marks of any script are kept.

    >>> normalize_basic("¡Hola,  MUNDO! (2024)")
    'hola mundo 2024'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


def _normalize_none(text: str) -> str:
    return " ".join(text.split())


def get_normalizer(mode: NormalizeMode, spelling_mapping: SpellingMapping | None = None) -> Callable[[str], str]:
    """The normalising function for ``mode``: ``"english"``, ``"basic"`` or ``"none"`` (only
    whitespace is collapsed)."""
    if mode == "english":
        normalizer = _english_normalizer(spelling_mapping)
        return lambda text: normalizer(text).strip()
    if mode == "basic":
        return normalize_basic
    if mode == "none":
        return _normalize_none
    raise UsageError(f"normalize: unknown mode {mode!r}, expected one of {', '.join(NORMALIZE_MODES)}")


# ---------------------------------------------------------------------------------------------
# WER / CER
# ---------------------------------------------------------------------------------------------


def _check_parallel(references: Sequence[Any], hypotheses: Sequence[Any], what: str = "hypotheses") -> None:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise UsageError("references and hypotheses must be sequences of strings, not single strings")
    if len(references) != len(hypotheses):
        raise UsageError(f"got {len(references)} references but {len(hypotheses)} {what}")


def _error_rate(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: NormalizeMode,
    spelling_mapping: SpellingMapping | None,
    unit: Literal["word", "char"],
) -> dict[str, Any]:
    import jiwer

    _check_parallel(references, hypotheses)
    norm = get_normalizer(normalize, spelling_mapping)
    refs: list[str] = []
    hyps: list[str] = []
    empty = 0
    empty_hyp_units = 0
    for ref, hyp in zip(references, hypotheses):
        ref_n, hyp_n = norm(ref), norm(hyp)
        if not ref_n:
            empty += 1
            empty_hyp_units += len(hyp_n.split()) if unit == "word" else len(hyp_n)
            continue
        refs.append(ref_n)
        hyps.append(hyp_n)

    key = "wer" if unit == "word" else "cer"
    count_key = "num_ref_words" if unit == "word" else "num_ref_chars"
    result: dict[str, Any] = {
        key: None,
        "substitutions": 0,
        "deletions": 0,
        "insertions": 0,
        "hits": 0,
        count_key: 0,
        "num_pairs": len(references),
        "num_scored": len(refs),
        "num_empty_references": empty,
        f"empty_reference_hypothesis_{'words' if unit == 'word' else 'chars'}": empty_hyp_units,
        "normalize": normalize,
    }
    if not refs:
        return result
    out = jiwer.process_words(refs, hyps) if unit == "word" else jiwer.process_characters(refs, hyps)
    errors = out.substitutions + out.deletions + out.insertions
    n_ref = out.substitutions + out.deletions + out.hits
    result.update(
        {
            key: errors / n_ref,
            "substitutions": out.substitutions,
            "deletions": out.deletions,
            "insertions": out.insertions,
            "hits": out.hits,
            count_key: n_ref,
        }
    )
    return result


def wer(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: NormalizeMode = "english",
    *,
    spelling_mapping: SpellingMapping | None = None,
) -> dict[str, Any]:
    """Corpus word error rate (jiwer) after normalising both sides with ``normalize``.

    Returns ``wer`` (``(S + D + I) / N``), ``substitutions``, ``deletions``, ``insertions``,
    ``hits``, ``num_ref_words`` (``N``), plus ``num_pairs``, ``num_scored`` and
    ``num_empty_references``.

    Empty references: a pair whose reference is empty after normalisation has no defined error
    rate, so it is left out of the score and counted in ``num_empty_references``; the words the
    model produced for such pairs are reported as ``empty_reference_hypothesis_words`` (they are
    not added as insertions). When no reference is left, ``wer`` is ``None``.
    """
    return _error_rate(references, hypotheses, normalize, spelling_mapping, "word")


def cer(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalize: NormalizeMode = "english",
    *,
    spelling_mapping: SpellingMapping | None = None,
) -> dict[str, Any]:
    """Corpus character error rate (jiwer) after normalisation; spaces count as characters.

    Same keys as :func:`wer` with ``cer`` and ``num_ref_chars``; empty references are handled the
    same way (excluded, counted in ``num_empty_references``, ``cer`` is ``None`` if none is left).
    """
    return _error_rate(references, hypotheses, normalize, spelling_mapping, "char")


# ---------------------------------------------------------------------------------------------
# BLEU / chrF
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tokenizer_available(name: str) -> bool:
    """Whether sacrebleu can build tokenizer ``name`` (the MeCab ones need optional packages)."""
    import sacrebleu

    try:
        sacrebleu.BLEU(tokenize=name)
    except (ImportError, RuntimeError, AssertionError, OSError):
        return False
    return True


def bleu_tokenizer_for(target_language: str | None) -> str:
    """sacrebleu tokenizer for a target language: ``zh`` -> ``"zh"``; ``ja`` -> ``"ja-mecab"``
    when MeCab and ipadic are installed, else ``"char"``; ``ko`` -> ``"ko-mecab"`` when mecab-ko
    and its dictionary are installed, else ``"char"``; ``th`` -> ``"char"``; anything else
    (including unknown) -> ``"13a"``."""
    lang = canonical_language(target_language)
    if lang == "zh":
        return "zh"
    if lang == "ja":
        return "ja-mecab" if _tokenizer_available("ja-mecab") else "char"
    if lang == "ko":
        return "ko-mecab" if _tokenizer_available("ko-mecab") else "char"
    if lang == "th":
        return "char"
    return "13a"


def bleu(
    references: Sequence[str],
    hypotheses: Sequence[str],
    target_language: str | None = None,
) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu, one reference per hypothesis).

    The BLEU tokenizer is chosen by :func:`bleu_tokenizer_for`; chrF works on characters and needs
    none. Returns ``bleu``, ``chrf`` (0-100), ``bleu_signature``, ``chrf_signature``,
    ``tokenizer``, ``target_language``, the BLEU n-gram ``precisions``, ``brevity_penalty``,
    ``sys_len``, ``ref_len`` and ``num_segments``. With no segments the scores and signatures
    are ``None``.
    """
    import sacrebleu

    _check_parallel(references, hypotheses)
    tokenizer = bleu_tokenizer_for(target_language)
    bleu_metric = sacrebleu.BLEU(tokenize=tokenizer)
    chrf_metric = sacrebleu.CHRF()
    result: dict[str, Any] = {
        "bleu": None,
        "chrf": None,
        "tokenizer": tokenizer,
        "target_language": canonical_language(target_language),
        "num_segments": len(references),
        "bleu_signature": None,
        "chrf_signature": None,
    }
    if not references:
        return result
    hyps = [str(h) for h in hypotheses]
    refs = [[str(r) for r in references]]
    bleu_score = bleu_metric.corpus_score(hyps, refs)
    chrf_score = chrf_metric.corpus_score(hyps, refs)
    result.update(
        {
            "bleu": bleu_score.score,
            "chrf": chrf_score.score,
            "precisions": list(bleu_score.precisions),
            "brevity_penalty": bleu_score.bp,
            "sys_len": bleu_score.sys_len,
            "ref_len": bleu_score.ref_len,
            "bleu_signature": bleu_metric.get_signature().format(),
            "chrf_signature": chrf_metric.get_signature().format(),
        }
    )
    return result


# ---------------------------------------------------------------------------------------------
# Classification: matching free-text answers to labels
# ---------------------------------------------------------------------------------------------

_LETTER_END = r"(?=$|[\s.,:;!?)\]])"


@functools.lru_cache(maxsize=32)
def _letter_patterns(n_options: int) -> tuple[re.Pattern[str], ...]:
    last = chr(ord("A") + n_options - 1)
    up = f"[A-{last}]"
    both = f"[A-{last}a-{last.lower()}]"
    return (
        # the whole answer is a letter: "B", "b", "B.", "(B)", "[B]", "B)"
        re.compile(rf"^\s*[(\[]?\s*({both})\s*[)\]]?\s*[.:)]?\s*$"),
        # starts with a marked letter: "B. happiness", "(B) happiness", "B) ...", "B: ..."
        re.compile(rf"^\s*(?:[(\[]({both})[)\]]|({up})[.:)])(?=\s|$)"),
        # a parenthesised letter anywhere: "I'd go with (C)"
        re.compile(rf"[(\[]({both})[)\]]"),
        # "answer is B", "Answer: (B)", "option C", "the correct choice is D."
        re.compile(rf"\b(?i:answer|option|choice)(?:\s+(?i:is))?\s*:?\s*[(\[]?({up}){_LETTER_END}"),
        # "... you should pick is D." / "it is B" at a clause end
        re.compile(rf"\bis\s+[(\[]?({up})[)\]]?(?=\s*(?:$|[.,;:!?]))"),
    )


def _letters_in(answer: str, n_options: int) -> set[int]:
    if n_options < 1 or n_options > 26:
        return set()
    found: set[int] = set()
    for pattern in _letter_patterns(n_options):
        for m in pattern.finditer(answer):
            letter = next(g for g in m.groups() if g)
            found.add(ord(letter.upper()) - ord("A"))
    return found


def _texts_in(answer_norm: str, candidates_norm: Sequence[str]) -> set[str]:
    """Normalised candidates occurring as whole words in the normalised answer; a candidate found
    only inside a longer matched candidate ("sad" inside "very sad") is dropped."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for cand in set(candidates_norm):
        if cand:
            hits = [m.span() for m in re.finditer(rf"(?<!\S){re.escape(cand)}(?!\S)", answer_norm)]
            if hits:
                spans[cand] = hits
    longer = [(start, end) for hits in spans.values() for start, end in hits]

    def covered(start: int, end: int) -> bool:
        return any(s <= start and end <= e and e - s > end - start for s, e in longer)

    return {cand for cand, hits in spans.items() if not all(covered(s, e) for s, e in hits)}


_OPTION_MARKER = re.compile(r"^\s*[(\[]?([A-Za-z])[)\].:]\s+")


def _norm_option(option: str, index: int) -> str:
    """Normalised option text; a leading marker with the option's own letter ("(B) sad" as the
    second option) is removed first."""
    m = _OPTION_MARKER.match(option)
    if m and m.group(1).upper() == chr(ord("A") + index):
        option = option[m.end():]
    return normalize_basic(option)


def match_answer(
    answer: str, candidates: Sequence[str], *, letters: bool = False
) -> tuple[str | None, Literal["matched", "ambiguous", "unmatched"]]:
    """Map a free-text model answer to one of ``candidates``.

    Matching is case-, punctuation- and whitespace-insensitive (:func:`normalize_basic`):

    1. an answer equal to a candidate matches it;
    2. with ``letters=True`` (``candidates`` are multiple-choice options in order A, B, C, ...),
       option letters are recognised: the whole answer being a letter ("B", "B.", "(B)"), a
       leading marked letter ("B. happiness", "(B) ..."), a parenthesised letter anywhere,
       "answer/option/choice [is] B", or "... is B." at a clause end. Bare capitals elsewhere
       ("I think ...") are not read as letters. An option written with its own marker
       ("(B) sad" as the second option) is compared without it;
    3. every candidate whose text appears as whole words in the answer is a mention ("The speaker
       is hinting at surprise" mentions "surprise"); a candidate only seen inside a longer
       mentioned candidate does not count.

    If the letters and mentions together point to exactly one candidate, it is returned with
    ``"matched"``. If they point to several (for instance "happy or sad", or letter B together
    with the text of option C), the answer is ``"ambiguous"`` and no candidate is returned: it
    is scored as wrong. No mention at all gives ``"unmatched"``. Negation is not understood
    ("not sad, happy" is ambiguous).
    """
    answer = unicodedata.normalize("NFKC", str(answer))
    answer_norm = normalize_basic(answer)
    cands_norm = [_norm_option(str(c), i) if letters else normalize_basic(str(c)) for i, c in enumerate(candidates)]
    if answer_norm and answer_norm in cands_norm:
        return answer_norm, "matched"
    chosen: set[str] = set()
    if letters:
        chosen |= {cands_norm[i] for i in _letters_in(answer, len(cands_norm))}
    chosen |= _texts_in(answer_norm, cands_norm)
    if len(chosen) == 1:
        return chosen.pop(), "matched"
    if not chosen:
        return None, "unmatched"
    return None, "ambiguous"


def _resolve_label(label: Any, options: Sequence[str] | None, item: str) -> str:
    """Normalised label text; a letter label ("B") is resolved against ``options``."""
    label_norm = normalize_basic(str(label))
    if not label_norm:
        raise InputError(f"{item}: field 'label' is empty, expected the correct answer")
    if options is None:
        return label_norm
    opts_norm = [_norm_option(str(o), i) for i, o in enumerate(options)]
    if label_norm in opts_norm:
        return label_norm
    if len(label_norm) == 1 and "a" <= label_norm <= "z" and ord(label_norm) - ord("a") < len(opts_norm):
        return opts_norm[ord(label_norm) - ord("a")]
    marked = _OPTION_MARKER.match(str(label))
    if marked:  # "(B) sad": accept when the text after the letter is that option's text
        index = ord(marked.group(1).upper()) - ord("A")
        if 0 <= index < len(opts_norm) and normalize_basic(str(label)[marked.end():]) == opts_norm[index]:
            return opts_norm[index]
    raise InputError(f"{item}: label {str(label)!r} is not one of its options {list(options)!r}")


def _item_name(ids: Sequence[str] | None, i: int) -> str:
    return f"item {ids[i]!r}" if ids is not None else f"item {i}"


def _per_item_options(
    options: Sequence[str] | Sequence[Sequence[str] | None] | None, n: int, ids: Sequence[str] | None,
) -> list[Sequence[str] | None]:
    """``options`` as one entry per item: the shared list of choices, the item's own list, or ``None``."""
    if options is None:
        return [None] * n
    if all(isinstance(o, str) for o in options):
        return [options] * n  # type: ignore[list-item]
    if len(options) != n:
        raise UsageError(f"got {n} labels but {len(options)} per-item option lists")
    per_item: list[Sequence[str] | None] = [None if o is None else list(o) for o in options]  # type: ignore[union-attr]
    for i, o in enumerate(per_item):
        if o is not None and not all(isinstance(x, str) for x in o):
            raise InputError(f"{_item_name(ids, i)}: field 'options' must be a list of strings")
    return per_item


def _score_items(predictions: Sequence[str], gold: list[str], per_item: list[Sequence[str] | None]) -> dict[str, Any]:
    """Match every prediction (:func:`match_answer`) and count the outcomes, overall and per label."""
    n = len(gold)
    known_labels = sorted(set(gold))
    correct = ambiguous = unmatched = 0
    per_label: dict[str, dict[str, Any]] = {}
    for i in range(n):
        opts = per_item[i]
        choice, status = match_answer(
            predictions[i] if predictions[i] is not None else "",
            opts if opts is not None else known_labels,
            letters=opts is not None,
        )
        ok = status == "matched" and choice == gold[i]
        correct += ok
        ambiguous += status == "ambiguous"
        unmatched += status == "unmatched"
        entry = per_label.setdefault(gold[i], {"correct": 0, "total": 0})
        entry["correct"] += ok
        entry["total"] += 1
    for entry in per_label.values():
        entry["accuracy"] = entry["correct"] / entry["total"]
    return {
        "accuracy": correct / n if n else None,
        "correct": correct,
        "total": n,
        "ambiguous": ambiguous,
        "unmatched": unmatched,
        "per_label": dict(sorted(per_label.items())),
    }


def classification_accuracy(
    predictions: Sequence[str],
    labels: Sequence[str],
    options: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
    *,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of free-text answers against labels, matched with :func:`match_answer`.

    ``options`` is either one list of choices shared by every item (in order A, B, C, ...), or
    one entry per item (a list of choices or ``None``). Items with options accept option letters
    and option texts; a label may itself be the option text or its letter. Items without options
    are matched against the set of distinct labels in ``labels`` (so an answer naming two known
    labels is ambiguous). Ambiguous and unmatched answers are wrong.

    Returns ``accuracy`` (``None`` when there is nothing to score), ``correct``, ``total``,
    ``ambiguous``, ``unmatched`` and ``per_label`` (normalised label -> ``correct``, ``total``,
    ``accuracy``). ``ids`` (optional, one per item) only name items in error messages.
    """
    _check_parallel(labels, predictions, "predictions")
    n = len(labels)
    if ids is not None and len(ids) != n:
        raise UsageError(f"got {n} labels but {len(ids)} ids")
    per_item = _per_item_options(options, n, ids)
    gold = [_resolve_label(labels[i], per_item[i], _item_name(ids, i)) for i in range(n)]
    return _score_items(predictions, gold, per_item)
