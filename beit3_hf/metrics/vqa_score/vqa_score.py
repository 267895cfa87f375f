"""The VQAv2 score of ViLT / unilm's `VQAScore`, as an `evaluate` module
(`beit3_hf.metrics.load_metric("vqa_score")`)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """VQAv2 accuracy as BEiT-3 reports it (unilm `VQAScore`, from ViLT): for each question the soft target
(0, 0.3, 0.6, 0.9 or 1.0 from the annotator votes) of the predicted answer, averaged over the questions."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted answer ids (the arg-max of the logits).
    references (`list[list[float]]`): soft targets over the answer vocabulary, one row per question.
Returns:
    vqa_score (`float`): in [0, 1].
"""
_CITATION = """@inproceedings{kim2021vilt, title={ViLT: Vision-and-Language Transformer Without Convolution or Region
Supervision}, author={Kim, Wonjae and Son, Bokyung and Kim, Ildoo}, booktitle={ICML}, year={2021}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions, dtype=np.int64)
        targets = np.stack([np.asarray(row, dtype=np.float64) for row in references])
        if predictions.size and (predictions.min() < 0 or predictions.max() >= targets.shape[1]):
            raise ValueError(f"Predicted answer ids must index the {targets.shape[1]} answers, got "
                             f"{predictions.min()}..{predictions.max()}.")
        return {"vqa_score": float(targets[np.arange(len(predictions)), predictions].mean())}
