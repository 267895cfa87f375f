"""Processor for BEiT-3: one object that prepares images and text the way the original fine-tuning code does."""

from __future__ import annotations

from typing import Any

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
from transformers.image_processing_utils import BatchFeature
from transformers.models.auto import image_processing_auto
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.utils import logging

from .configuration_beit3 import BEiT3Config
from .image_processing_beit3 import BEiT3ImageProcessor, BEiT3ImageProcessorTorchvision
from .tokenization_beit3 import BEiT3Tokenizer

logger = logging.get_logger(__name__)

__all__ = ["BEiT3Processor", "BEiT3ProcessorKwargs", "register_processors"]


class BEiT3ProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of `BEiT3Processor.__call__` (see `ProcessingKwargs`)."""


class BEiT3Processor(ProcessorMixin):
    r"""
    Wraps a BEiT-3 image processor and the BEiT-3 (XLM-R layout) tokenizer into a single processor.

    Text is encoded as in the original datasets (`BaseDataset._get_text_segment`): `<s>` (0) + SentencePiece ids
    + `</s>` (2), truncated to `max_length` (64 by default, as `num_max_bpe_tokens`) and padded with `<pad>` (1) to
    `max_length`. The returned `attention_mask` is 1 for real tokens and 0 for padding (the original `padding_mask`
    is its complement). Pass `padding="longest"` to pad only to the longest text of the batch. An empty string
    encodes to `[0, 2]` followed by padding.

    Images go through the image processor: one image per text (`pixel_values` of shape `(B, 3, S, S)`) or, for
    NLVR2, a list of image pairs (`(B, 2, 3, S, S)`).

    Args:
        image_processor ([`BEiT3ImageProcessor`]): the image processor.
        tokenizer ([`BEiT3Tokenizer`]): the BEiT-3 tokenizer (an `XLMRobertaTokenizer`, see
            `beit3_hf.tokenization_beit3`). `from_pretrained` loads it with `BEiT3Tokenizer.from_pretrained`, which
            keeps the pipeline saved in `tokenizer.json`, even from folders saved as `XLMRobertaTokenizer`.

    Example:

    ```python
    >>> processor = BEiT3Processor(BEiT3ImageProcessor.from_preset("vl", size=480), tokenizer)  # doctest: +SKIP
    >>> inputs = processor(images=image, text="what is the cat doing?", return_tensors="pt")  # doctest: +SKIP
    >>> sorted(inputs.keys())  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'pixel_values']
    ```
    """

    valid_processor_kwargs = BEiT3ProcessorKwargs
    # Lowest-priority defaults (`ProcessorMixin._merge_kwargs`): the original text segment layout.
    text_kwargs = {"padding": "max_length", "truncation": True, "max_length": 64}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def _load_tokenizer_from_pretrained(
        cls, sub_processor_type, pretrained_model_name_or_path, subfolder="", **kwargs
    ):
        # `AutoTokenizer` would give `XLMRobertaTokenizer`, which rebuilds XLM-R's pipeline, for folders that name it
        if sub_processor_type != "tokenizer":
            return super()._load_tokenizer_from_pretrained(
                sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        return BEiT3Tokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        **kwargs: Unpack[BEiT3ProcessorKwargs],
    ) -> BatchFeature:
        """Prepares images and/or text for a BEiT-3 model.

        Args:
            images: an image, a list of images, or a list of image pairs (NLVR2); see [`BEiT3ImageProcessor`].
            text: a string or a list of strings, one per example.
            kwargs: text options (`padding`, `truncation`, `max_length`, ...), image options (`size`, ...) and
                `return_tensors`, flat or grouped as `text_kwargs` / `images_kwargs`.

        Returns:
            [`BatchFeature`] with `pixel_values` (if `images` is given), and `input_ids` and `attention_mask` (if
            `text` is given).

        Raises:
            ValueError: neither `images` nor `text` is given, `text` is not a string or a non-empty list of strings,
                the numbers of images and texts differ, or an image is invalid.
        """
        if images is None and text is None:
            raise ValueError("BEiT3Processor needs `images`, `text` or both; got images=None and text=None.")
        output_kwargs = self._merge_kwargs(
            BEiT3ProcessorKwargs,
            tokenizer_init_kwargs=self.tokenizer.init_kwargs,
            **kwargs,
        )
        return_tensors = output_kwargs["text_kwargs"].get("return_tensors") or output_kwargs["images_kwargs"].get(
            "return_tensors"
        )

        data = {}
        num_texts = None
        if text is not None:
            text = self._check_text(text)
            num_texts = 1 if isinstance(text, str) else len(text)
            data.update(self.tokenizer(text, **output_kwargs["text_kwargs"]))
        if images is not None:
            image_features = self.image_processor(images, **output_kwargs["images_kwargs"])
            num_images = len(image_features["pixel_values"])
            if num_texts is not None and num_images != num_texts:
                raise ValueError(
                    f"Got {num_images} image examples but {num_texts} texts; pass one image (or image pair) per text."
                )
            data.update(image_features)
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_text(text):
        if isinstance(text, str):
            return text
        if isinstance(text, tuple):
            text = list(text)
        if not isinstance(text, list):
            raise ValueError(f"`text` must be a string or a list of strings, got {type(text).__name__} {text!r:.80}.")
        if len(text) == 0:
            raise ValueError("`text` is an empty list.")
        for item in text:
            if not isinstance(item, str):
                raise ValueError(f"`text` must only contain strings, got {type(item).__name__} {item!r:.80}.")
        return text

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def register_processors() -> None:
    """Registers the BEiT-3 image processor(s), processor and tokenizer class with transformers' Auto classes.

    After this, `AutoImageProcessor`, `AutoProcessor` and `AutoTokenizer` resolve BEiT-3 folders (by
    `image_processor_type` / `processor_class` / `tokenizer_class` ("BEiT3Tokenizer") in the saved configs, or by a
    `config.json` of model type "beit3", whose tokenizer is `BEiT3Tokenizer` unless `tokenizer_config.json` names
    another class).
    The PIL processor is the "pil" backend; `BEiT3ImageProcessorTorchvision` is registered as the "torchvision"
    backend only when torchvision is installed. Unlike most models, a saved `BEiT3ImageProcessor` reloads as the PIL
    class by default even when torchvision is installed, because only it is bit-exact with the original transforms
    (it joins transformers' `DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS`, the list used for the same reason by
    processors with Lanczos resampling); pass `backend="torchvision"` to get the tensor class. Calling this again
    is harmless.
    """
    image_processor_classes = {"pil": BEiT3ImageProcessor}
    if BEiT3ImageProcessorTorchvision is not None:
        image_processor_classes["torchvision"] = BEiT3ImageProcessorTorchvision
        pil_by_default = getattr(image_processing_auto, "DEFAULT_TO_PIL_BACKEND_IMAGE_PROCESSORS", None)
        if isinstance(pil_by_default, list) and BEiT3ImageProcessor.__name__ not in pil_by_default:
            pil_by_default.append(BEiT3ImageProcessor.__name__)
    AutoImageProcessor.register(BEiT3Config, image_processor_classes=image_processor_classes, exist_ok=True)
    AutoProcessor.register(BEiT3Config, BEiT3Processor, exist_ok=True)
    AutoTokenizer.register(BEiT3Config, tokenizer_class=BEiT3Tokenizer, exist_ok=True)
