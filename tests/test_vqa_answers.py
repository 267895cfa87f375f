"""Tests of the VQA answer handling (`beit3_hf.vqa`): normalization, soft scores, vocabulary and targets.

Expected normalizations were produced by unilm's `beit3/glossary.py`. If that file is importable (the original
`beit3` package), a randomized comparison against it runs too.
"""

import importlib.util
import random

import pytest
import torch

from beit3_hf.vqa import answer_scores, answer_target, build_answer_vocab, normalize_word, score_for_count

NORMALIZED = [
    ("Two dogs!", "2 dogs"),
    ("The Dont.", "don't"),
    ("1,000", "1000"),
    ("yes", "yes"),
    ("Yes.", "yes"),
    ("a man", "man"),
    ("an apple", "apple"),
    ("the the", ""),
    ("hes", "he's"),
    ("Hes", "he's"),
    ("Im", "im"),  # capitalized contraction keys never match after lower-casing (as in the original)
    ("I dont know", "i don't know"),
    ("None", "0"),
    ("ten.", "10"),
    ("ONE", "1"),
    ("twenty", "twenty"),
    ("(none)", "0"),
    ("2.5", "2.5"),
    ("3.14", "3.14"),
    (".5", ".5"),
    ("3.", "3"),
    ("it is 3:00.", "it is 3:00"),
    ("u.s.a.", "usa"),
    ("mr. smith", "mr smith"),
    ("tennis racket.", "tennis racket"),
    ("red, white, and blue", "red white and blue"),
    ("no, 2 of them", "no 2 of them"),
    ("1,5", "15"),
    ("back-ward, 3,4", "backward 34"),  # a digit-comma-digit anywhere deletes every punctuation mark
    ("left-hand", "left hand"),
    ("left - hand", "left hand"),
    ("e-mail?", "e mail"),
    ("What?!", "what"),
    ("a/b", "b"),  # "a b" → the article "a" is dropped
    ("a+b", "b"),
    ("x @ y", "x y"),
    ('"quoted"', "quoted"),
    ("", ""),
    ("." * 40 + "a", "." * 8 + "a"),  # the original removes at most 32 periods (re.UNICODE passed as `count`)
]


@pytest.mark.parametrize(("answer", "expected"), NORMALIZED)
def test_normalize_word(answer, expected):
    assert normalize_word(answer) == expected


def test_normalize_word_rejects_non_strings():
    with pytest.raises(ValueError, match="None"):
        normalize_word(None)


def _load_original_glossary():
    spec = importlib.util.find_spec("beit3")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = f"{location}/glossary.py"
        try:
            glossary_spec = importlib.util.spec_from_file_location("_unilm_glossary", path)
            module = importlib.util.module_from_spec(glossary_spec)
            glossary_spec.loader.exec_module(module)
            return module
        except (FileNotFoundError, OSError):
            continue
    return None


ORIGINAL_GLOSSARY = _load_original_glossary()


@pytest.mark.skipif(ORIGINAL_GLOSSARY is None, reason="unilm's beit3/glossary.py (beit3-gml) is not installed")
def test_normalize_word_matches_unilm_on_random_strings():
    glossary = ORIGINAL_GLOSSARY
    rng = random.Random(0)
    alphabet = list("ab .,;/[]\"{}()=+\\_-><@`?!019:'") + ["the ", "one", "Dont", " a ", "hes", "TEN", "none"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert normalize_word(text) == glossary.normalize_word(text), text
    for answer, _ in NORMALIZED:
        assert normalize_word(answer) == glossary.normalize_word(answer)


def test_score_for_count():
    assert [score_for_count(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            score_for_count(bad)


def test_answer_scores():
    answers = ["yes"] * 4 + ["no"] * 3 + ["maybe"] * 2 + ["Yes"]
    assert answer_scores(answers) == {"yes": 1.0, "no": 0.9, "maybe": 0.6, "Yes": 0.3}  # raw, not normalized
    assert list(answer_scores(answers)) == ["yes", "no", "maybe", "Yes"]
    annotations = [{"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(10)]
    assert answer_scores(annotations) == {"2": 1.0}
    assert answer_scores([]) == {}
    with pytest.raises(ValueError, match="single string"):
        answer_scores("yes")
    with pytest.raises(ValueError, match="'answer' key"):
        answer_scores([{"text": "yes"}])


def test_build_answer_vocab():
    multiple_choice = ["Yes"] * 9 + ["no."] * 10 + ["two"] * 9 + ["2"] + ["cat"] * 8 + ["dog"] * 12
    answer2label, label2answer = build_answer_vocab(multiple_choice)
    # normalized ("Yes" → "yes", "no." → "no", "two" → "2"), count >= 9, first-occurrence order
    assert label2answer == ["yes", "no", "2", "dog"]
    assert answer2label == {"yes": 0, "no": 1, "2": 2, "dog": 3}
    assert build_answer_vocab(iter(multiple_choice), min_count=8)[1] == ["yes", "no", "2", "cat", "dog"]
    assert build_answer_vocab([], min_count=1) == ({}, [])
    with pytest.raises(ValueError, match="min_count"):
        build_answer_vocab(multiple_choice, min_count=0)


def test_answer_target():
    answer2label = {"yes": 0, "no": 1, "2": 2, "dog": 3}
    raw = ["yes"] * 5 + ["no"] * 2 + ["Yes", "two", "dog"]  # "Yes"/"two" are raw answers outside the vocabulary
    target = answer_target(raw, answer2label)
    assert target.dtype == torch.float32 and target.shape == (4,)
    assert torch.allclose(target, torch.tensor([1.0, 0.6, 0.0, 0.3]))
    padded = answer_target(raw, answer2label, num_labels=3129)
    assert padded.shape == (3129,) and padded.sum().item() == pytest.approx(1.9)
    assert answer_target(["cat"] * 10, answer2label).sum() == 0
    with pytest.raises(ValueError, match="outside"):
        answer_target(["dog"], answer2label, num_labels=2)
