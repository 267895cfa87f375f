"""A `visual-question-answering` pipeline, which transformers 5.x no longer ships.

`register_pipelines()` (called by `import beit3_hf`) adds the task to transformers' pipeline registry, so that

```python
>>> import beit3_hf
>>> from transformers import pipeline
>>> vqa = pipeline("visual-question-answering", model="path/to/beit3-base-vqa")
>>> vqa(image, question="what is the cat doing?", top_k=3)
[{'score': 0.93, 'answer': 'sleeping'}, {'score': 0.04, 'answer': 'laying'}, {'score': 0.01, 'answer': 'resting'}]
```

VQA is classification over a fixed answer vocabulary (VQAv2's 3,129 answers for the released checkpoints): the
scores are the per-answer sigmoids of the logits, as the head is trained with a binary cross-entropy against soft
annotator scores, and the answers are the model's `config.id2label`. The other BEiT-3 tasks use transformers' own
pipelines (`image-classification`, `zero-shot-image-classification`, `image-feature-extraction`,
`image-text-to-text` for captioning).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForVisualQuestionAnswering
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY, REMOVED_TASKS
from transformers.pipelines.base import Pipeline

VQA_TASK = "visual-question-answering"


class BEiT3VisualQuestionAnsweringPipeline(Pipeline):
    """
    Answers questions about images with a classification VQA model (`BEiT3ForVisualQuestionAnswering`).

    Call it with an image and a question, lists of both (paired in order, or one of them repeated), or dicts
    `{"image": ..., "question": ...}`. Images may be PIL images, paths or URLs. Returns, per question, the `top_k`
    (default 5) answers as `{"score", "answer"}` dicts, best first.

    The model's processor (`BEiT3Processor`) prepares both inputs, so the question is tokenized as in the original
    fine-tuning (`<s> question </s>` padded to 64 tokens); pass `padding`/`truncation`/`max_length` to change that.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    # `top_k` is the number of answers, not a sampling parameter
    _non_generation_params = ("top_k",)

    def _sanitize_parameters(self, top_k=None, timeout=None, padding=None, truncation=None, max_length=None):
        preprocess_params, postprocess_params = {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        for name, value in (("padding", padding), ("truncation", truncation), ("max_length", max_length)):
            if value is not None:
                preprocess_params.setdefault("text_kwargs", {})[name] = value
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        return preprocess_params, {}, postprocess_params

    def __call__(self, image: Any, question: str | list[str] | None = None, **kwargs):
        """
        Args:
            image: an image (PIL, path or URL), a list of images, a dict `{"image", "question"}` or a list of such
                dicts.
            question: a question or a list of questions (not with dicts). A single image or question is paired
                with every element of the other list.
            top_k (`int`, *optional*, defaults to 5): answers returned per question (at most the vocabulary size).
            timeout (`float`, *optional*): seconds to wait for an image URL.

        Returns:
            A list of `{"score": float, "answer": str}` for one question, or one such list per question.
        """
        if question is None:
            inputs = image
            if not (isinstance(inputs, dict) or (isinstance(inputs, list) and all(isinstance(i, dict) for i in inputs))):
                raise ValueError(
                    "Pass a question with the image (`vqa(image, question=...)`) or dicts "
                    "`{'image': ..., 'question': ...}`."
                )
        else:
            inputs = self._pair(image, question)
        return super().__call__(inputs, **kwargs)

    @staticmethod
    def _pair(image, question) -> dict | list[dict]:
        images = image if isinstance(image, (list, tuple)) else None
        questions = question if isinstance(question, (list, tuple)) else None
        if images is None and questions is None:
            return {"image": image, "question": question}
        if images is not None and questions is not None:
            if len(images) != len(questions):
                raise ValueError(
                    f"Got {len(images)} images and {len(questions)} questions; pass as many of each, or one of them."
                )
            return [{"image": i, "question": q} for i, q in zip(images, questions)]
        if images is not None:
            return [{"image": i, "question": question} for i in images]
        return [{"image": image, "question": q} for q in questions]

    def preprocess(self, inputs: dict, timeout: float | None = None, text_kwargs: dict | None = None):
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(f"Each input must be a dict with 'image' and 'question', got {inputs!r:.100}.")
        if not isinstance(inputs["question"], str):
            raise ValueError(f"The question must be a string, got {inputs['question']!r:.100}.")
        image = load_image(inputs["image"], timeout=timeout)
        model_inputs = self.processor(images=image, text=inputs["question"], return_tensors="pt", **(text_kwargs or {}))
        return model_inputs.to(self.dtype)

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k: int = 5):
        id2label = self.model.config.id2label
        probabilities = model_outputs["logits"][0].float().sigmoid()
        scores, indices = probabilities.topk(min(top_k, probabilities.shape[-1]))
        return [{"score": score, "answer": id2label[index]} for score, index in zip(scores.tolist(), indices.tolist())]


def register_pipelines() -> None:
    """Adds `visual-question-answering` to transformers' pipeline registry (once; later calls do nothing)."""
    # transformers 5 lists the task as removed and `pipeline()` refuses it before reading the registry; this package
    # provides it again
    REMOVED_TASKS.pop(VQA_TASK, None)
    registered = PIPELINE_REGISTRY.supported_tasks.get(VQA_TASK)
    if registered is not None and registered["impl"] is BEiT3VisualQuestionAnsweringPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        VQA_TASK,
        pipeline_class=BEiT3VisualQuestionAnsweringPipeline,
        pt_model=AutoModelForVisualQuestionAnswering,
        type="multimodal",
    )


__all__ = ["BEiT3VisualQuestionAnsweringPipeline", "register_pipelines", "VQA_TASK"]
