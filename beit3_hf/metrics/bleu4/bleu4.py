"""Corpus BLEU-4 with pycocoevalcap's scorer (COCO captioning), as an `evaluate` module
(`beit3_hf.metrics.load_metric("bleu4")`)."""

import datasets
import evaluate
from pycocoevalcap.bleu.bleu import Bleu

from beit3_hf.metrics import caption_tokens

_DESCRIPTION = """Corpus BLEU-4 as the COCO caption evaluation computes it: pycocoevalcap's `Bleu(4)` ("closest"
reference length, 1e-15 / 1e-9 smoothing of the precisions). pycocoevalcap tokenises with the Stanford PTB tokenizer,
which needs Java; here captions are lower-cased, stripped of ASCII punctuation and split on whitespace
(`beit3_hf.metrics.caption_tokens`)."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image (at least one).
Returns:
    bleu4 (`float`): in [0, 1]; bleu1 .. bleu3 as well.
"""
_CITATION = """@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine Translation},
author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu4(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        results = {i: [" ".join(caption_tokens(p))] for i, p in enumerate(predictions)}
        gts = {i: [" ".join(caption_tokens(r)) for r in refs] for i, refs in enumerate(references)}
        scores, _ = Bleu(4).compute_score(gts, results, verbose=0)
        return {f"bleu{n}": float(score) for n, score in enumerate(scores, start=1)} | {"bleu4": float(scores[3])}
