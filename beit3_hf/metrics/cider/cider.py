"""CIDEr-D with pycocoevalcap's scorer (COCO captioning), as an `evaluate` module
(`beit3_hf.metrics.load_metric("cider")`)."""

import datasets
import evaluate
from pycocoevalcap.cider.cider import Cider as CiderScorer

from beit3_hf.metrics import caption_tokens

_DESCRIPTION = """CIDEr-D as the COCO caption evaluation computes it (the "CIDEr" of captioning papers): pycocoevalcap's
`Cider()`, tf-idf of 1- to 4-grams with document frequencies over the references given (so a one-image corpus scores
0), clipped cosines, a Gaussian length penalty of width `sigma`, x10. pycocoevalcap tokenises with the Stanford PTB
tokenizer, which needs Java; here captions are lower-cased, stripped of ASCII punctuation and split on whitespace
(`beit3_hf.metrics.caption_tokens`)."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image (at least one).
    sigma (`float`, optional): the length penalty's width, default 6.
Returns:
    cider (`float`).
"""
_CITATION = """@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Cider(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, sigma=6.0):
        results = {i: [" ".join(caption_tokens(p))] for i, p in enumerate(predictions)}
        gts = {i: [" ".join(caption_tokens(r)) for r in refs] for i, refs in enumerate(references)}
        score, _ = CiderScorer(sigma=sigma).compute_score(gts, results)
        return {"cider": float(score)}
