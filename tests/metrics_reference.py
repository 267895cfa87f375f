"""
A frozen copy of the numpy metrics `beit3_hf.metrics` had before it moved to `evaluate` modules (pycocoevalcap's
scorers for BLEU and CIDEr): the reference that tests/test_metrics.py checks the modules against, on the same inputs.
Not used by the package.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np


def _predicted_ids(logits_or_predictions, name: str = "predictions") -> np.ndarray:
    """Arg-max over the last axis of 2-D scores; 1-D input is taken as predicted ids already."""
    array = np.asarray(logits_or_predictions)
    if array.ndim == 2:
        return array.argmax(axis=-1)
    if array.ndim == 1:
        return array.astype(np.int64)
    raise ValueError(f"`{name}` must be logits (N, num_labels) or ids (N,), got an array of shape {array.shape}.")


def accuracy(predictions, references) -> float:
    """Fraction of correct predictions. `predictions` are ids (N,) or logits (N, num_labels); `references` ids (N,)."""
    predictions = _predicted_ids(predictions)
    references = np.asarray(references).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"Got {predictions.shape[0]} predictions for {references.shape[0]} references.")
    if predictions.size == 0:
        raise ValueError("`accuracy` needs at least one prediction.")
    return float((predictions == references).mean())


def vqa_score(logits_or_pred_ids, soft_targets) -> float:
    """
    VQAv2 score: for each question, the soft target (0, 0.3, 0.6, 0.9 or 1.0 from the annotator votes) of the
    predicted answer, averaged over the questions (`one_hot(argmax(logits)) * soft_targets`, summed, divided by N).

    Args:
        logits_or_pred_ids: logits of shape (N, num_answers) or predicted answer ids of shape (N,).
        soft_targets: array of shape (N, num_answers).
    """
    predictions = _predicted_ids(logits_or_pred_ids, "logits_or_pred_ids")
    soft_targets = np.asarray(soft_targets, dtype=np.float64)
    if soft_targets.ndim != 2 or soft_targets.shape[0] != predictions.shape[0]:
        raise ValueError(
            f"`soft_targets` must have shape (N, num_answers) with N = {predictions.shape[0]}, got "
            f"{soft_targets.shape}."
        )
    if predictions.size == 0:
        raise ValueError("`vqa_score` needs at least one question.")
    return float(soft_targets[np.arange(len(predictions)), predictions].mean())


def retrieval_recall_from_scores(
    scores, image_ids_per_text: Sequence[int] | None = None, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """
    Recall@k in both directions from a similarity matrix `scores` of shape (num_images, num_texts).

    `image_ids_per_text[j]` is the row of the image text `j` describes (default: text `j` describes image `j`, which
    needs a square matrix). As in unilm's retrieval evaluation:

    * `tr_r{k}` (image -> text): fraction of images whose `k` best-scoring texts include one of their own texts.
    * `ir_r{k}` (text -> image): fraction of texts whose `k` best-scoring images include their image.
    * `average_score`: mean of all the recalls.

    Values are fractions in [0, 1] (unilm reports them x100). `k` larger than the candidate count counts all of them.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must have shape (num_images, num_texts), got {scores.shape}.")
    num_images, num_texts = scores.shape
    if image_ids_per_text is None:
        if num_images != num_texts:
            raise ValueError(
                f"Without `image_ids_per_text`, text j must describe image j, but there are {num_images} images and "
                f"{num_texts} texts."
            )
        image_ids_per_text = np.arange(num_texts)
    image_ids_per_text = np.asarray(image_ids_per_text, dtype=np.int64)
    if image_ids_per_text.shape != (num_texts,):
        raise ValueError(
            f"`image_ids_per_text` must have one entry per text ({num_texts}), got shape {image_ids_per_text.shape}."
        )
    if num_texts and (image_ids_per_text.min() < 0 or image_ids_per_text.max() >= num_images):
        raise ValueError(f"`image_ids_per_text` must index the {num_images} images, got {image_ids_per_text}.")
    if any(k < 1 for k in ks):
        raise ValueError(f"Every k must be at least 1, got ks={tuple(ks)}.")

    # Stable sort on the negated scores: ties keep the lower index first, like a stable top-k.
    texts_by_image = np.argsort(-scores, axis=1, kind="stable")  # (num_images, num_texts)
    images_by_text = np.argsort(-scores.T, axis=1, kind="stable")  # (num_texts, num_images)
    image_hits = image_ids_per_text[texts_by_image] == np.arange(num_images)[:, None]  # text at rank r is the image's
    text_hits = images_by_text == image_ids_per_text[:, None]
    recalls = {}
    for k in ks:
        recalls[f"tr_r{k}"] = float(image_hits[:, :k].any(axis=1).mean())
    for k in ks:
        recalls[f"ir_r{k}"] = float(text_hits[:, :k].any(axis=1).mean())
    recalls["average_score"] = float(np.mean(list(recalls.values())))
    return recalls


def retrieval_recall(
    image_embeds, text_embeds, image_ids_per_text: Sequence[int] | None = None, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """
    TR@k / IR@k of a dual encoder: the scores are `image_embeds @ text_embeds.T` (cosine similarity when the
    embeddings are L2-normalised, as `BEiT3ForImageTextRetrieval` returns them). Images must be unique (one row per
    image); `image_ids_per_text[j]` is the row of text `j`'s image. See [`retrieval_recall_from_scores`].
    """
    image_embeds, text_embeds = np.asarray(image_embeds, dtype=np.float64), np.asarray(text_embeds, dtype=np.float64)
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"`image_embeds` and `text_embeds` must be (N, D) and (M, D), got {image_embeds.shape} and "
            f"{text_embeds.shape}."
        )
    return retrieval_recall_from_scores(image_embeds @ text_embeds.T, image_ids_per_text, ks)


# ---------------------------------------------------------------------------------------------------------------------
# Captioning

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def caption_tokens(text: str) -> list[str]:
    """Lower-cases, removes ASCII punctuation and splits on whitespace."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def _normalize_references(predictions: Sequence[str], references) -> list[list[str]]:
    if isinstance(predictions, str):
        raise ValueError("`predictions` must be a list of strings, got a single string.")
    references = [[r] if isinstance(r, str) else list(r) for r in references]
    if len(references) != len(predictions):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} reference lists.")
    if not predictions:
        raise ValueError("Caption metrics need at least one prediction.")
    if any(len(r) == 0 for r in references):
        raise ValueError("Every prediction needs at least one reference caption.")
    return references


def _ngram_counts(tokens: Sequence[str], max_n: int = 4) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def bleu4(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """
    Corpus BLEU-4 as in pycocoevalcap's `Bleu(4)`: clipped n-gram precisions (n = 1..4) summed over the corpus,
    their geometric mean, and the brevity penalty `exp(1 - r / c)` when the total candidate length `c` is below the
    total reference length `r`, where each sentence contributes its reference length closest to its own (ties go to the
    shorter one). Like pycocoevalcap it adds 1e-15 / 1e-9 to each precision's numerator / denominator, so a missing
    n-gram order gives ~0 instead of a division by zero.

    `references[i]` is one caption or a list of captions for `predictions[i]`.
    """
    references = _normalize_references(predictions, references)
    matches, totals = np.zeros(4), np.zeros(4)
    candidate_length = reference_length = 0
    for prediction, refs in zip(predictions, references):
        tokens = caption_tokens(prediction)
        ref_tokens = [caption_tokens(r) for r in refs]
        max_ref_counts: Counter = Counter()
        for ref in ref_tokens:
            max_ref_counts |= _ngram_counts(ref)
        for ngram, count in _ngram_counts(tokens).items():
            matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(1, 5):
            totals[n - 1] += max(len(tokens) - n + 1, 0)
        candidate_length += len(tokens)
        reference_length += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
    precision = float(np.prod((matches + 1e-15) / (totals + 1e-9)) ** 0.25)
    ratio = (candidate_length + 1e-15) / (reference_length + 1e-9)
    return precision * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)


def cider(predictions: Sequence[str], references: Sequence[str | Sequence[str]], sigma: float = 6.0) -> float:
    """
    CIDEr-D as in pycocoevalcap's `Cider()` (the score COCO captioning papers report as "CIDEr").

    Each caption becomes tf-idf vectors of its 1- to 4-grams, with document frequencies counted over the
    **reference sets given here** (one document per prediction), so scores depend on the evaluation corpus and a
    single-image corpus always scores 0 (every n-gram then has idf 0). For each n, the similarity to each reference is
    `sum(min(hyp, ref) * ref) / (|hyp| |ref|)` (clipped), times the Gaussian length penalty
    `exp(-delta^2 / (2 sigma^2))`; the scores are averaged over n and over references, multiplied by 10 and averaged
    over the corpus.
    """
    references = [[caption_tokens(r) for r in refs] for refs in _normalize_references(predictions, references)]
    hypotheses = [caption_tokens(p) for p in predictions]
    document_frequency: Counter = Counter()
    for refs in references:
        document_frequency.update({ngram for ref in refs for ngram in _ngram_counts(ref)})
    log_num_documents = math.log(len(references))

    def tfidf(tokens: list[str]):
        """Tf-idf vectors and norms per n-gram order, and the length in words (pycocoevalcap counts bigrams, i.e.
        words - 1: the same differences, and an empty caption scores 0 either way)."""
        vectors: list[dict] = [defaultdict(float) for _ in range(4)]
        norms = np.zeros(4)
        for ngram, term_frequency in _ngram_counts(tokens).items():
            weight = term_frequency * (log_num_documents - math.log(max(1.0, document_frequency[ngram])))
            vectors[len(ngram) - 1][ngram] = weight
            norms[len(ngram) - 1] += weight**2
        return vectors, np.sqrt(norms), len(tokens)

    scores = []
    for hyp, refs in zip(hypotheses, references):
        hyp_vectors, hyp_norms, hyp_length = tfidf(hyp)
        total = np.zeros(4)
        for ref in refs:
            ref_vectors, ref_norms, ref_length = tfidf(ref)
            for n in range(4):
                ref_vector = ref_vectors[n]
                value = sum(min(w, ref_vector[ngram]) * ref_vector[ngram] for ngram, w in hyp_vectors[n].items())
                if hyp_norms[n] != 0 and ref_norms[n] != 0:
                    value /= hyp_norms[n] * ref_norms[n]
                total[n] += value * math.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma**2))
        scores.append(10.0 * total.mean() / len(refs))
    return float(np.mean(scores))


__all__ = [
    "accuracy",
    "bleu4",
    "caption_tokens",
    "cider",
    "retrieval_recall",
    "retrieval_recall_from_scores",
    "vqa_score",
]
