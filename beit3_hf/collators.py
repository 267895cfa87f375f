"""Data collators of the five fine-tuning tasks: dataset examples (dicts of PIL images, texts, labels) -> the
model's keyword arguments, through a `BEiT3Processor` (or an image processor for image classification)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .vqa import answer_target


@dataclass
class ImageClassificationCollator:
    """`{"image", "label"}` examples -> `pixel_values` and `labels`. `processor` is a `BEiT3Processor` or an image
    processor (grey-scale and RGBA images are converted to RGB by `BEiT3ImageProcessor`)."""

    processor: object
    image_column: str = "image"
    label_column: str = "label"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        image_processor = getattr(self.processor, "image_processor", self.processor)
        images = [example[self.image_column] for example in examples]
        return {
            "pixel_values": image_processor(images, return_tensors="pt")["pixel_values"],
            "labels": torch.tensor([example[self.label_column] for example in examples]),
        }


@dataclass
class ImageTextCollator:
    """
    `{"image", "text"}` examples -> `pixel_values`, `input_ids` and `attention_mask` from a `BEiT3Processor`
    (`<s> text </s>`, cut at `max_length` and padded to the longest text of the batch), plus `labels` from
    `label_column` when it is set.

    - Retrieval: no labels; `return_loss=True` asks the model for its contrastive loss.
    - NLVR2: `pair_columns` names the two image columns; `pixel_values` is `(batch, 2, channels, height, width)`.
    """

    processor: object
    image_column: str = "image"
    text_column: str = "text"
    label_column: str | None = None
    pair_columns: tuple[str, str] | None = None
    max_length: int = 64
    return_loss: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if self.pair_columns is None:
            images = [example[self.image_column] for example in examples]
        else:
            images = [[example[column] for column in self.pair_columns] for example in examples]
        batch = dict(
            self.processor(
                images=images,
                text=[example[self.text_column] for example in examples],
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        if self.label_column is not None:
            batch["labels"] = self.labels(examples)
        if self.return_loss:
            batch["return_loss"] = True
        return batch

    def labels(self, examples: list[dict]) -> torch.Tensor:
        return torch.tensor([example[self.label_column] for example in examples])


@dataclass
class VQACollator(ImageTextCollator):
    """
    VQA: image + question, and `labels` = VQAv2 soft scores over the answer vocabulary `label2id`
    (`beit3_hf.vqa.answer_target`: 1/2/3/4+ annotators -> 0.3/0.6/0.9/1.0) from the list of annotator answers in
    `label_column`. A single answer string counts as certain (score 1).
    """

    text_column: str = "question"
    label_column: str = "answers"
    label2id: dict[str, int] | None = None

    def labels(self, examples: list[dict]) -> torch.Tensor:
        if not self.label2id:
            raise ValueError("VQACollator needs the answer vocabulary `label2id`.")
        targets = torch.zeros(len(examples), len(self.label2id))
        for row, example in enumerate(examples):
            answers = example[self.label_column]
            if isinstance(answers, str):
                if answers in self.label2id:
                    targets[row, self.label2id[answers]] = 1.0
            else:
                targets[row] = answer_target(answers, self.label2id, len(self.label2id))
        return targets


def mask_caption_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    unilm's captioning training corruption (`CaptioningDataset._masking_on_text_tokens`). For a caption of `n`
    real tokens (`<s>` and `</s>` included), `max(1, min(int(n * mask_prob + 0.5), n - 1))` distinct positions
    are drawn from `[1, n - 1]` (never `<s>`, possibly `</s>`); each becomes `<mask>` (80%), stays (10%) or
    becomes a random id in `[3, vocab_size - 1]` (10%). Returns the corrupted ids and `labels` holding the
    original ids at the drawn positions and -100 elsewhere.
    """
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"`mask_prob` must be in (0, 1], got {mask_prob!r}.")
    lengths = attention_mask.sum(dim=1)
    if (lengths < 2).any():
        raise ValueError(f"Every caption needs at least `<s>` and `</s>`; got real lengths {lengths.tolist()}.")
    masked = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    for row, length in enumerate(lengths.tolist()):
        num_masked = max(1, min(int(length * mask_prob + 0.5), length - 1))
        positions = torch.randperm(length - 1, generator=generator)[:num_masked] + 1
        labels[row, positions] = input_ids[row, positions]
        choice = torch.rand(num_masked, generator=generator)
        random_ids = torch.randint(3, vocab_size, (num_masked,), generator=generator)
        kept_or_random = torch.where(choice < 0.9, input_ids[row, positions], random_ids)
        masked[row, positions] = torch.where(choice < 0.8, mask_token_id, kept_or_random)
    return masked, labels


@dataclass
class CaptioningCollator:
    """
    `{"image", "text"}` examples -> `pixel_values`, masked `input_ids`, `attention_mask` and `labels`
    (`mask_caption_tokens`, unilm's recipe; captions cut at `max_length` = 32 tokens as in its training command).
    Randomness comes from torch's global generator, which Trainer seeds and restores on resume.
    """

    processor: object
    image_column: str = "image"
    text_column: str = "text"
    max_length: int = 32
    mask_prob: float = 0.6

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        texts = [example[self.text_column] for example in examples]
        texts = [text if isinstance(text, str) else text[0] for text in texts]  # several references: the first
        batch = self.processor(
            images=[example[self.image_column] for example in examples],
            text=texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        tokenizer = self.processor.tokenizer
        input_ids, labels = mask_caption_tokens(
            batch["input_ids"], batch["attention_mask"], tokenizer.mask_token_id, len(tokenizer), self.mask_prob
        )
        return {"pixel_values": batch["pixel_values"], "input_ids": input_ids,
                "attention_mask": batch["attention_mask"], "labels": labels}
