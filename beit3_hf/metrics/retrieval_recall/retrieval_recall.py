"""Image-text retrieval recall@k in both directions (unilm's `RetrievalHandler`), as an `evaluate` module
(`beit3_hf.metrics.load_metric("retrieval_recall")`)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Recall@k of image-text retrieval, as unilm's retrieval evaluation computes it: `tr_r{k}` (image ->
text), the fraction of images whose k best-scoring texts include one of their own; `ir_r{k}` (text -> image), the
fraction of texts whose k best-scoring images include theirs; `average_score`, the mean of all of them. Values are
fractions in [0, 1] (unilm reports them x100); ties rank the lower index first; k beyond the candidates counts all."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): one row per text: its embedding when `image_embeds` is given (scores =
        image_embeds @ text_embeds.T, the cosine for L2-normalised embeddings), else its scores against every image.
    references (`list[int]`): the row of each text's image (images are unique: one row per image).
    image_embeds (`array (num_images, dim)`, optional): the image embeddings.
    ks (`tuple[int]`, optional): the k's, default (1, 5, 10).
Returns:
    tr_r{k}, ir_r{k} for each k, and average_score (`float`).
"""


def _matrix(rows) -> np.ndarray:
    return np.stack([np.asarray(row, dtype=np.float64) for row in rows]) if len(rows) else np.zeros((0, 0))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, image_embeds=None, ks=(1, 5, 10)):
        texts = _matrix(predictions)
        if image_embeds is not None:
            image_embeds = np.asarray(image_embeds, dtype=np.float64)
            if image_embeds.ndim != 2 or image_embeds.shape[1] != texts.shape[1]:
                raise ValueError(f"`image_embeds` must be (num_images, {texts.shape[1]}), got {image_embeds.shape}.")
            scores = image_embeds @ texts.T
        else:
            scores = texts.T  # (num_images, num_texts)
        num_images, num_texts = scores.shape
        image_ids_per_text = np.asarray(references, dtype=np.int64)
        if num_texts and (image_ids_per_text.min() < 0 or image_ids_per_text.max() >= num_images):
            raise ValueError(f"`references` must index the {num_images} images, got {image_ids_per_text}.")
        if any(k < 1 for k in ks):
            raise ValueError(f"Every k must be at least 1, got ks={tuple(ks)}.")
        # stable sorts on the negated scores: ties keep the lower index first, like a stable top-k
        texts_by_image = np.argsort(-scores, axis=1, kind="stable")
        images_by_text = np.argsort(-scores.T, axis=1, kind="stable")
        image_hits = image_ids_per_text[texts_by_image] == np.arange(num_images)[:, None]
        text_hits = images_by_text == image_ids_per_text[:, None]
        recalls = {f"tr_r{k}": float(image_hits[:, :k].any(axis=1).mean()) for k in ks}
        recalls.update({f"ir_r{k}": float(text_hits[:, :k].any(axis=1).mean()) for k in ks})
        recalls["average_score"] = float(np.mean(list(recalls.values())))
        return recalls
