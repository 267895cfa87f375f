"""Hand-computed cases for the metrics in `beit3_hf.metrics` (evaluate modules shipped in the package, pycocoevalcap's
scorers for BLEU-4 and CIDEr), and their equality with the numpy implementations they replaced
(tests/metrics_reference.py) on the same random inputs."""

import math
import os

import numpy as np
import pytest

import metrics_reference as reference
from beit3_hf.metrics import (
    METRICS,
    accuracy,
    bleu4,
    caption_tokens,
    cider,
    load_metric,
    metric_path,
    retrieval_recall,
    retrieval_recall_from_scores,
    vqa_score,
)


def test_accuracy_accepts_ids_and_logits():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]])
    assert accuracy(logits, [1, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        accuracy([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        accuracy(np.zeros((2, 2, 2)), [0, 1])


def test_vqa_score_takes_the_soft_target_of_the_argmax():
    # Annotator votes -> soft targets: 10 votes = 1.0, 3 votes = 0.9, 1 vote = 0.3 (the VQAv2 / unilm table).
    soft_targets = np.array(
        [
            [1.0, 0.0, 0.0],  # predicted 0: 1.0
            [0.9, 0.3, 0.0],  # predicted 1: 0.3
            [0.0, 0.0, 0.6],  # predicted 0: 0.0
            [0.3, 0.0, 1.0],  # predicted 2: 1.0
        ]
    )
    logits = np.array([[5.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 2.0], [0.0, 0.0, 9.0]])
    expected = (1.0 + 0.3 + 0.0 + 1.0) / 4
    assert vqa_score(logits, soft_targets) == pytest.approx(expected)
    assert vqa_score([0, 1, 0, 2], soft_targets) == pytest.approx(expected)
    with pytest.raises(ValueError, match="soft_targets"):
        vqa_score([0, 1], soft_targets)


def test_retrieval_recall_on_a_constructed_score_matrix():
    # 3 images, 4 texts; texts 0 and 1 describe image 0, text 2 image 1, text 3 image 2.
    scores = np.array(
        [
            [0.2, 0.9, 0.1, 0.5],  # image 0: ranks texts 1, 3, 0, 2 -> own text (1) at rank 1
            [0.8, 0.1, 0.3, 0.6],  # image 1: ranks texts 0, 3, 2, 1 -> own text (2) at rank 3
            [0.1, 0.3, 0.4, 0.2],  # image 2: ranks texts 2, 1, 3, 0 -> own text (3) at rank 3
        ]
    )
    image_ids_per_text = [0, 0, 1, 2]
    # Text -> image, by column: text 0 ranks images 1, 0, 2 (own at rank 2); text 1 ranks 0 first (rank 1);
    # text 2 ranks 2, 1, 0 (own at rank 2); text 3 ranks 1, 0, 2 (own at rank 3).
    recalls = retrieval_recall_from_scores(scores, image_ids_per_text, ks=(1, 2, 3))
    expected = {
        "tr_r1": 1 / 3,
        "tr_r2": 1 / 3,
        "tr_r3": 1.0,
        "ir_r1": 1 / 4,
        "ir_r2": 3 / 4,
        "ir_r3": 1.0,
    }
    expected["average_score"] = np.mean(list(expected.values()))
    assert recalls == pytest.approx(expected)

    # The embedding version scores with a dot product: image embeddings = the score rows, text embeddings = one-hots.
    assert retrieval_recall(scores, np.eye(4), image_ids_per_text, ks=(1, 2, 3)) == pytest.approx(expected)
    # k beyond the number of candidates counts every candidate.
    assert retrieval_recall_from_scores(scores, image_ids_per_text, ks=(10,))["ir_r10"] == 1.0


def test_retrieval_recall_default_pairs_and_errors():
    embeds = np.eye(4)
    recalls = retrieval_recall(embeds, embeds)
    assert recalls["tr_r1"] == recalls["ir_r1"] == recalls["average_score"] == 1.0
    # Swap the texts of images 0 and 1: both directions lose those two at rank 1 but find them at rank 2.
    recalls = retrieval_recall(embeds, embeds[[1, 0, 2, 3]], ks=(1, 2))
    assert recalls["tr_r1"] == recalls["ir_r1"] == 0.5
    assert recalls["tr_r2"] == recalls["ir_r2"] == 1.0
    with pytest.raises(ValueError, match="3 images and 4 texts"):
        retrieval_recall_from_scores(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="must index the 3 images"):
        retrieval_recall_from_scores(np.zeros((3, 2)), [0, 3])
    with pytest.raises(ValueError, match="text_embeds"):
        retrieval_recall(np.zeros((3, 4)), np.zeros((3, 5)))


def test_caption_tokens_lowercase_and_drop_punctuation():
    assert caption_tokens("A red circle, at the TOP left.") == ["a", "red", "circle", "at", "the", "top", "left"]


def test_bleu4_identical_is_one():
    captions = ["a large red circle at the top left", "a small blue square at the bottom right and a green circle"]
    assert bleu4(captions, captions) == pytest.approx(1.0)
    # Case and punctuation do not matter.
    prediction = "A large red circle, at the top left."
    assert bleu4([prediction], [["a large red circle at the top left"]]) == pytest.approx(1.0)


def test_bleu4_matches_the_formula_on_a_crafted_corpus():
    predictions = ["a large red circle at the top", "a small blue square at the bottom right"]
    references = [["a large red circle at the top left"], ["a small green square at the bottom right"]]
    # Sentence 1 (7 words) matches every n-gram of its reference: 7/7, 6/6, 5/5, 4/4.
    # Sentence 2 (8 words, "blue" instead of "green"): unigrams 7/8; bigrams 5/7 ("small blue", "blue square" miss);
    # trigrams 3/6; 4-grams 2/5 ("square at the bottom", "at the bottom right").
    precisions = [(7 + 7) / (7 + 8), (6 + 5) / (6 + 7), (5 + 3) / (5 + 6), (4 + 2) / (4 + 5)]
    candidate_length, reference_length = 7 + 8, 8 + 8
    expected = math.prod(precisions) ** 0.25 * math.exp(1 - reference_length / candidate_length)
    assert bleu4(predictions, references) == pytest.approx(expected, rel=1e-9)


def test_bleu4_uses_the_closest_reference_length_and_clips_counts():
    # Closest reference length to the 4-word candidate is 3 (not 6): no brevity penalty.
    prediction = ["red circle top left"]
    references = [["red circle top", "a red circle at top left"]]
    # Clipped counts against the max count over references: unigrams 4/4; bigrams "red circle", "circle top",
    # "top left" = 3/3; trigrams "red circle top" = 1/2; 4-grams 0/1.
    expected = (1.0 * 1.0 * (1 + 1e-15) / (2 + 1e-9) * (0 + 1e-15) / (1 + 1e-9)) ** 0.25
    assert bleu4(prediction, references) == pytest.approx(expected, rel=1e-6)
    # Repeating a word is clipped to its count in the references: "red red red" -> 1/3 unigrams.
    repeated = bleu4(["red red red"], ["red circle"])
    brevity = 1.0  # 3 words vs 2
    assert repeated == pytest.approx(brevity * ((1 / 3) * (1e-15 / 2) * (1e-15 / 1) * (1e-15 / 1e-9)) ** 0.25)
    # Clipping uses the largest count in any one reference, not the sum over references: "red" 1/2.
    two_references = bleu4(["red red"], [["red circle", "red square"]])
    assert two_references == pytest.approx(((1 / 2) * (1e-15 / 1) * (1e-15 / 1e-9) * (1e-15 / 1e-9)) ** 0.25)
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        bleu4(["a", "b"], ["a"])


def test_cider_identical_and_disjoint():
    references = ["a large red circle at the top left", "a small blue square", "two green triangles"]
    # Identical captions: cosine 1 for every n-gram order the caption has, no length penalty, times 10.
    # The third caption has no 4-gram, so its 4-gram similarity is 0: 10 * 3/4.
    assert cider(references, references) == pytest.approx((10 + 10 + 7.5) / 3)
    assert cider(["yellow shapes everywhere", "nothing here", "purple"], references) == 0.0
    # A one-image corpus gives every n-gram idf log(1) - log(1) = 0, hence 0.
    assert cider(["red circle"], ["red circle"]) == 0.0


def test_cider_matches_the_formula_on_a_crafted_corpus():
    predictions = ["red circle big", "blue square"]
    references = [["red circle"], ["blue square"]]
    # Two documents; every reference n-gram occurs in one of them: idf = log 2 - log 1 = log 2 for all (unseen
    # n-grams like "big" also get log 2 - log max(1, 0)). The common factor log 2 cancels in the cosines.
    # Image 1, unigrams: hyp (red, circle, big) vs ref (red, circle) -> 2 / (sqrt 3 * sqrt 2);
    # bigrams: (red circle, circle big) vs (red circle) -> 1 / sqrt 2; trigrams: the reference has none -> 0.
    # Length (counted in bigrams, as pycocoevalcap does): 2 vs 1 -> penalty exp(-1 / (2 * 6^2)).
    image1 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2) + 0 + 0) / 4
    # Image 2: identical with one unigram pair and one bigram -> 10 * (1 + 1 + 0 + 0) / 4.
    image2 = 5.0
    assert cider(predictions, references) == pytest.approx((image1 + image2) / 2)
    # sigma sets the width of the length penalty.
    image1_wide = 10 * math.exp(-1 / (2 * 100**2)) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    assert cider(predictions, references, sigma=100) == pytest.approx((image1_wide + image2) / 2)


def test_cider_clips_the_hypothesis_weights():
    predictions = ["red red circle", "blue square"]
    references = [["red circle"], ["blue square"]]
    # Unigrams: hyp (red: 2, circle: 1) x log 2 vs ref (red: 1, circle: 1) x log 2; clipping min(2, 1) * 1 + 1 * 1 = 2
    # (3 without clipping) over norms sqrt 5 * sqrt 2. Bigrams (red red, red circle) vs (red circle): 1 / sqrt 2.
    image1 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
    assert cider(predictions, references) == pytest.approx((image1 + 5.0) / 2)


def test_cider_averages_over_references():
    predictions = ["red circle", "blue square"]
    references = [["red circle", "green triangle"], ["blue square"]]
    # df: red, circle, "red circle", green, triangle, "green triangle" 1 each (one document); blue... 1 each.
    # Image 1: similarity 1 with its first reference (unigrams and bigrams) and 0 with the second -> sum / 2.
    assert cider(predictions, references) == pytest.approx((10 * (1 + 1) / 4 / 2 + 5.0) / 2)


# ---------------------------------------------------------------------------------------------------------------------
# The evaluate modules equal the numpy implementations they replaced

WORDS = ["a", "red", "blue", "circle", "square", "at", "the", "top", "left", "right", "small", "big", "two", "and"]


def random_captions(rng, count, punctuate=True):
    captions = []
    for _ in range(count):
        words = list(rng.choice(WORDS, size=rng.integers(0 if punctuate else 1, 12)))
        if punctuate and words and rng.random() < 0.5:
            words[0] = words[0].upper() + ","
            words[-1] += "."
        captions.append(" ".join(words))
    return captions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modules_equal_the_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(37, 6))
    labels = rng.integers(0, 6, 37)
    assert accuracy(logits, labels) == reference.accuracy(logits, labels)
    soft = rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], size=(37, 6))
    assert vqa_score(logits, soft) == reference.vqa_score(logits, soft)
    images, texts = rng.normal(size=(9, 5)), rng.normal(size=(20, 5))
    owners = rng.integers(0, 9, 20)
    assert retrieval_recall(images, texts, owners, ks=(1, 3, 5, 30)) == reference.retrieval_recall(
        images, texts, owners, ks=(1, 3, 5, 30))
    ties = rng.integers(0, 3, size=(9, 20)).astype(float)  # many ties: the lower index ranks first in both
    assert retrieval_recall_from_scores(ties, owners) == reference.retrieval_recall_from_scores(ties, owners)
    predictions = random_captions(rng, 25)
    references = [random_captions(rng, int(rng.integers(1, 6)), punctuate=True) for _ in range(25)]
    references = [[caption or "a" for caption in refs] for refs in references]
    assert bleu4(predictions, references) == pytest.approx(reference.bleu4(predictions, references), rel=1e-12)
    assert cider(predictions, references) == pytest.approx(reference.cider(predictions, references), rel=1e-12)
    assert cider(predictions, references, sigma=2.0) == pytest.approx(
        reference.cider(predictions, references, sigma=2.0), rel=1e-12)
    single = [refs[0] for refs in references]  # one reference per image, as a string
    assert bleu4(predictions, single) == pytest.approx(reference.bleu4(predictions, single), rel=1e-12)


def test_modules_load_offline_by_path_and_accumulate(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    for name in METRICS:
        assert os.path.isfile(os.path.join(metric_path(name), f"{name}.py"))
    module = evaluate.load(metric_path("accuracy"), keep_in_memory=True)
    module.add_batch(predictions=[0, 1], references=[0, 0])
    module.add_batch(predictions=[2], references=[2])
    assert module.compute()["accuracy"] == pytest.approx(2 / 3)
    # the cached module is reused across calls
    assert load_metric("vqa_score") is load_metric("vqa_score")
    assert vqa_score([0], [[1.0, 0.0]]) == 1.0 and vqa_score([1], [[1.0, 0.0]]) == 0.0
    scores = load_metric("bleu4").compute(predictions=["a red circle at the top"],
                                          references=[["a red circle at the top left"]])
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4"} and 0 < scores["bleu4"] < scores["bleu1"] < 1
    with pytest.raises(ValueError, match="'meteor'"):
        metric_path("meteor")
