"""VQA v2 answers as the original BEiT-3 code handles them (unilm `beit3/glossary.py`, `VQAv2Dataset`).

- `normalize_word(answer)`: the official VQA answer normalization (punctuation, periods, case, number words,
  articles, contractions), reproduced quirk for quirk, including its regular-expression oddities.
- `build_answer_vocab(answers, min_count=9)`: the answer vocabulary: normalized `multiple_choice_answer`s seen at
  least `min_count` times, labelled in order of first occurrence (3,129 answers on train2014 + val2014).
- `answer_scores(answers)`: soft scores from the ten raw annotator answers of one question:
  1 → 0.3, 2 → 0.6, 3 → 0.9, ≥ 4 → 1.0 occurrences.
- `answer_target(answers, answer2label, num_labels)`: the dense soft-score vector used as the training target.

As in the original, targets count the *raw* annotator answers (not normalized); only the vocabulary is built from
normalized answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["answer_scores", "answer_target", "build_answer_vocab", "normalize_word", "score_for_count"]

# fmt: off
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
# fmt: on
# Keys with capitals ("Im", "Ive", ...) can never match (words are lower-cased first); kept as in the original.

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset(("a", "an", "the"))
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')  # the original's list, in its order
# The original pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative *lookahead* (a typo for a lookbehind),
# which always holds before a ".", so periods are dropped unless a digit follows ("2.5" keeps its period, "2." not).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")
# The original calls `period_strip.sub("", text, re.UNICODE)`, whose third positional argument is `count`:
# at most re.UNICODE (= 32) periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)

_SCORES = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9}


def normalize_word(answer: str) -> str:
    r"""Normalizes a VQA answer exactly as unilm's `glossary.normalize_word`.

    1. Each punctuation mark in ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`` is deleted if it is next to a space
       somewhere in the answer, or if the answer has a digit-comma-digit pattern; otherwise it becomes a space.
    2. Periods not followed by a digit are deleted.
    3. The answer is lower-cased and split on whitespace; number words `none`/`zero`…`ten` become digits, the
       articles a/an/the are dropped, and contractions without apostrophe get one (`dont` → `don't`).
    4. The words are joined with single spaces and remaining commas are removed.

    Example:

    ```python
    >>> normalize_word("Two dogs!")
    '2 dogs'
    >>> normalize_word("The Dont.")
    "don't"
    >>> normalize_word("1,000")
    '1000'
    ```
    """
    if not isinstance(answer, str):
        raise ValueError(f"VQA answers must be strings, got {type(answer).__name__} {answer!r}.")
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(answer) is not None
    text = answer
    for mark in _PUNCTUATION:
        if (mark + " " in answer or " " + mark in answer) or has_digit_comma:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _PERIOD_STRIP.sub("", text, _PERIOD_STRIP_COUNT)

    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words).replace(",", "")


def score_for_count(count: int) -> float:
    """Soft score of an answer given by `count` annotators: 0, 0.3, 0.6, 0.9, then 1.0 for 4 or more."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}.")
    return _SCORES.get(count, 1.0)


def answer_scores(answers: Iterable[str]) -> dict[str, float]:
    """Soft scores of one question's raw annotator answers, keyed by answer in order of first occurrence.

    Answers are counted as given (the original does not normalize them here). Entries may also be VQA annotation
    dicts with an `"answer"` key.

    Example:

    ```python
    >>> answer_scores(["yes"] * 4 + ["no"] * 3 + ["maybe"] * 2 + ["2"])
    {'yes': 1.0, 'no': 0.9, 'maybe': 0.6, '2': 0.3}
    ```
    """
    if isinstance(answers, str):
        raise ValueError(f"`answers` must be a list of answers, not the single string {answers!r}.")
    counts = Counter(_answer_text(answer) for answer in answers)
    return {answer: score_for_count(count) for answer, count in counts.items()}


def _answer_text(answer) -> str:
    if isinstance(answer, Mapping):
        if "answer" not in answer:
            raise ValueError(f"An annotation dict needs an 'answer' key, got {answer!r}.")
        answer = answer["answer"]
    if not isinstance(answer, str):
        raise ValueError(f"VQA answers must be strings, got {type(answer).__name__} {answer!r}.")
    return answer


def build_answer_vocab(answers: Iterable[str], min_count: int = 9) -> tuple[dict[str, int], list[str]]:
    """Builds the answer vocabulary from the `multiple_choice_answer` of every training question.

    Answers are normalized with `normalize_word`, and those seen at least `min_count` times are labelled
    0, 1, 2, ... in order of first occurrence (as `Counter` keeps insertion order in the original).

    Returns:
        `(answer2label, label2answer)`: a dict answer → label and the list label → answer.
    """
    if isinstance(answers, str):
        raise ValueError(f"`answers` must be an iterable of answers, not the single string {answers!r}.")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}.")
    counts = Counter(normalize_word(_answer_text(answer)) for answer in answers)
    label2answer = [answer for answer, count in counts.items() if count >= min_count]
    answer2label = {answer: label for label, answer in enumerate(label2answer)}
    return answer2label, label2answer


def answer_target(answers: Iterable[str], answer2label: Mapping[str, int], num_labels: int | None = None):
    """Dense soft-score target of one question, as the original `VQAv2Dataset` builds `labels`.

    Raw annotator answers are scored with `answer_scores`; answers outside `answer2label` are ignored.

    Args:
        answers: the question's raw annotator answers (strings or annotation dicts).
        answer2label: the answer vocabulary (see `build_answer_vocab`).
        num_labels: length of the vector (defaults to `len(answer2label)`).

    Returns:
        A `torch.FloatTensor` of shape `(num_labels,)` (all zeros if no answer is in the vocabulary; the original
        drops such training questions).
    """
    import torch

    num_labels = len(answer2label) if num_labels is None else num_labels
    target = torch.zeros(num_labels, dtype=torch.float32)
    for answer, score in answer_scores(answers).items():
        label = answer2label.get(answer)
        if label is None:
            continue
        if not 0 <= label < num_labels:
            raise ValueError(f"Answer {answer!r} has label {label}, outside [0, {num_labels}).")
        target[label] = score
    return target
