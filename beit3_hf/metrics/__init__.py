"""
Evaluation metrics of the BEiT-3 tasks as `evaluate` modules shipped in this package, loaded by local path (offline:
`evaluate.load("<hub name>")` needs the Hub). Each is a directory `beit3_hf/metrics/<name>/<name>.py`:

* `accuracy`: top-1 accuracy (image classification, NLVR2).
* `vqa_score`: VQAv2 accuracy as in ViLT / unilm `VQAScore`: the soft target of the arg-max answer, averaged.
* `retrieval_recall`: image-to-text (TR@k) and text-to-image (IR@k) recall, as in unilm's `RetrievalHandler`.
* `bleu4` and `cider`: corpus BLEU-4 and CIDEr-D by pycocoevalcap's own scorers (`Bleu(4)`, `Cider()`; pure Python),
  on text tokenized by lower-casing, removing punctuation and splitting on whitespace (`caption_tokens`):
  pycocoevalcap's Stanford PTB tokenizer needs Java.

`load_metric(name)` gives the `evaluate.EvaluationModule` (`compute`, `add_batch`, ...):

```python
>>> from beit3_hf.metrics import load_metric
>>> load_metric("accuracy").compute(predictions=[1, 0, 2], references=[1, 1, 2])["accuracy"]  # doctest: +SKIP
0.666...
```

The functions below are the same metrics with plain arguments (logits or ids, single or several references) for a
`Trainer`'s `compute_metrics`, e.g. `lambda p: {"accuracy": accuracy(p.predictions, p.label_ids)}`. They need
`evaluate` (and `pycocoevalcap` for the caption metrics): `pip install beit3-hf[train]`.
"""

from __future__ import annotations

import functools
import os
import re
import string
from collections.abc import Sequence

import numpy as np

__all__ = [
    "METRICS",
    "accuracy",
    "bleu4",
    "caption_tokens",
    "cider",
    "load_metric",
    "mean_iou",
    "metric_path",
    "retrieval_recall",
    "retrieval_recall_from_scores",
    "vqa_score",
]

#: The metric modules shipped in this package.
METRICS = ("accuracy", "vqa_score", "retrieval_recall", "bleu4", "cider")
_REQUIREMENTS = {"bleu4": "pycocoevalcap", "cider": "pycocoevalcap"}


def metric_path(name: str) -> str:
    """The directory of the shipped `evaluate` module `name` (for `evaluate.load(metric_path(name))`)."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; the shipped ones are {METRICS}.")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """`evaluate.load` of the shipped module `name` (kept in memory, loaded once per process)."""
    path = metric_path(name)
    try:
        import evaluate
    except ImportError as error:
        raise ImportError("The metrics are `evaluate` modules: pip install evaluate") from error
    try:
        return evaluate.load(path, keep_in_memory=True)
    except ImportError as error:
        requirement = _REQUIREMENTS.get(name)
        if requirement is None:
            raise
        raise ImportError(f"The {name} metric uses {requirement}'s scorer: pip install {requirement}") from error


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
    return load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]


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
    return load_metric("vqa_score").compute(predictions=predictions, references=soft_targets)["vqa_score"]


def _image_ids(image_ids_per_text, num_images: int, num_texts: int) -> np.ndarray:
    if image_ids_per_text is None:
        if num_images != num_texts:
            raise ValueError(
                f"Without `image_ids_per_text`, text j must describe image j, but there are {num_images} images and "
                f"{num_texts} texts."
            )
        return np.arange(num_texts)
    image_ids_per_text = np.asarray(image_ids_per_text, dtype=np.int64)
    if image_ids_per_text.shape != (num_texts,):
        raise ValueError(
            f"`image_ids_per_text` must have one entry per text ({num_texts}), got shape {image_ids_per_text.shape}."
        )
    if num_texts and (image_ids_per_text.min() < 0 or image_ids_per_text.max() >= num_images):
        raise ValueError(f"`image_ids_per_text` must index the {num_images} images, got {image_ids_per_text}.")
    return image_ids_per_text


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
    image_ids_per_text = _image_ids(image_ids_per_text, *scores.shape)
    if any(k < 1 for k in ks):
        raise ValueError(f"Every k must be at least 1, got ks={tuple(ks)}.")
    return load_metric("retrieval_recall").compute(predictions=scores.T, references=image_ids_per_text, ks=tuple(ks))


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
    image_ids_per_text = _image_ids(image_ids_per_text, image_embeds.shape[0], text_embeds.shape[0])
    if any(k < 1 for k in ks):
        raise ValueError(f"Every k must be at least 1, got ks={tuple(ks)}.")
    return load_metric("retrieval_recall").compute(
        predictions=text_embeds, references=image_ids_per_text, image_embeds=image_embeds, ks=tuple(ks)
    )


# ---------------------------------------------------------------------------------------------------------------------
# Captioning

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def caption_tokens(text: str) -> list[str]:
    """Lower-cases, removes ASCII punctuation and splits on whitespace (the caption metrics' tokenisation, in place of
    pycocoevalcap's Java PTB tokenizer)."""
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


def bleu4(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """
    Corpus BLEU-4 by pycocoevalcap's `Bleu(4)` (the `bleu4` module): clipped n-gram precisions (n = 1..4) summed over
    the corpus, their geometric mean, and the brevity penalty `exp(1 - r / c)` when the total candidate length `c` is
    below the total reference length `r`, where each sentence contributes its reference length closest to its own
    (ties go to the shorter one); 1e-15 / 1e-9 added to each precision's numerator / denominator.

    `references[i]` is one caption or a list of captions for `predictions[i]`.
    """
    references = _normalize_references(predictions, references)
    return load_metric("bleu4").compute(predictions=list(predictions), references=references)["bleu4"]


def cider(predictions: Sequence[str], references: Sequence[str | Sequence[str]], sigma: float = 6.0) -> float:
    """
    CIDEr-D by pycocoevalcap's `Cider()` (the `cider` module; the score COCO captioning papers report as "CIDEr").

    Each caption becomes tf-idf vectors of its 1- to 4-grams, with document frequencies counted over the
    **reference sets given here** (one document per prediction), so scores depend on the evaluation corpus and a
    single-image corpus always scores 0. For each n, the clipped cosine with each reference, times the Gaussian length
    penalty `exp(-delta^2 / (2 sigma^2))`, averaged over n and over references, x10, averaged over the corpus.
    """
    references = _normalize_references(predictions, references)
    return load_metric("cider").compute(predictions=list(predictions), references=references, sigma=sigma)["cider"]


def mean_iou(predictions, references, num_classes: int, ignore_index: int | None = 255) -> dict[str, float | list]:
    """
    Semantic-segmentation scores of class maps by torchmetrics: `mean_iou` (macro Jaccard index over the classes
    present in predictions or references), `overall_accuracy` (pixel accuracy) and `per_class_iou` (a list).
    `predictions` and `references` are integer maps of the same shape (N, H, W); pixels labelled `ignore_index`
    count for nothing.
    """
    import torch

    try:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
    except ImportError as error:
        raise ImportError("mean_iou uses torchmetrics: pip install torchmetrics") from error
    predictions, references = torch.as_tensor(predictions), torch.as_tensor(references)
    if predictions.shape != references.shape:
        raise ValueError(f"`predictions` {tuple(predictions.shape)} and `references` {tuple(references.shape)} "
                         "must have the same shape.")
    kwargs = dict(num_classes=num_classes, ignore_index=ignore_index)
    return {
        "mean_iou": MulticlassJaccardIndex(average="macro", **kwargs)(predictions, references).item(),
        "overall_accuracy": MulticlassAccuracy(average="micro", **kwargs)(predictions, references).item(),
        "per_class_iou": MulticlassJaccardIndex(average="none", **kwargs)(predictions, references).tolist(),
    }
