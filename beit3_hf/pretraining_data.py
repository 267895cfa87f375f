"""Data for BEiT-3's masked data modeling: image-only, text-only and image-text examples in one stream, and the
collator that masks them and fetches their visual tokens.

    >>> from beit3_hf.pretraining_data import MaskedDataModelingCollator, mixed_pretraining_dataset
    >>> train = mixed_pretraining_dataset(images=[captions_ds], texts=[captions_ds, questions_ds],
    ...                                   image_texts=[captions_ds], proportions=(1, 1, 1), seed=42)
    >>> collator = MaskedDataModelingCollator(processor, patch_size=16, visual_tokenizer=vqkd)
    >>> batch = collator([next(iter(train)) for _ in range(6)])   # {"image": {...}, "text": {...}, "image_text": {...}}

**How a mixed batch goes through the model.** The backbone computes one modality split per call (image tokens,
text tokens, or a joint image-text sequence, which selects the vision-language experts of the paper architecture),
so the three kinds cannot share one forward. The collator therefore emits up to three sub-batches, one per kind
present, each holding exactly the keyword arguments of [`BEiT3ForMaskedDataModeling`]; `masked_data_modeling_sums`
runs them one after another in the same step and returns the summed cross-entropies and counts, and the loss of a
step is `text_loss_weight * (all masked text tokens' CE) / (their number) + image_loss_weight * (all masked
patches' CE) / (their number)`, pooled over the three kinds, every micro-batch of the step and every process
(`examples/run_pretraining.py`'s Trainer does the counting), so gradient accumulation and multi-process runs
equal one large batch. This is the paper's single objective: every masked token counts the same whichever kind of
example it came from.

Every example is a dict with `kind` ("image", "text" or "image_text"), `image` (a PIL image or None), `text` (a
string or None) and `image_codes` (precomputed visual tokens, a list of `num_patches` ints, or None: the collator
then runs the visual tokenizer on the fly). `mixed_pretraining_dataset` brings any `datasets` sources (map-style
or streaming) to that form, interleaves the sources of each kind and then the kinds in the given proportions with
`datasets.interleave_datasets`; `precompute_visual_tokens` (or `python -m beit3_hf.pretraining_data`) adds the
`image_codes` column once, so that training does not run the tokenizer.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers.utils import logging

from .masking import BlockMaskingGenerator, mask_text_tokens

logger = logging.get_logger(__name__)

__all__ = [
    "KINDS",
    "MaskedDataModelingCollator",
    "SUM_KEYS",
    "as_pretraining_source",
    "count_targets",
    "masked_data_modeling_sums",
    "mixed_pretraining_dataset",
    "placeholder_inputs",
    "precompute_visual_tokens",
    "tokenize_images",
]

#: The three kinds of example of masked data modeling, in the order of `proportions`.
KINDS = ("image", "text", "image_text")
#: What `masked_data_modeling_sums` sums per modality.
_STATISTICS = ("loss_sum", "count", "correct")
#: The keys of `masked_data_modeling_sums`: pooled over the kinds, then per kind (a batch gives those it holds).
SUM_KEYS = tuple(f"{prefix}{modality}_{statistic}" for prefix in ("", *(f"{kind}/" for kind in KINDS))
                 for modality in ("text", "image") for statistic in _STATISTICS)
#: Default column that holds precomputed visual tokens.
CODES_COLUMN = "image_codes"


def _features():
    from datasets import Features, Image, Sequence as SequenceFeature, Value

    return Features({"kind": Value("string"), "image": Image(), "text": Value("string"),
                     CODES_COLUMN: SequenceFeature(Value("int64"))})


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    return kind


def as_pretraining_source(dataset, kind: str, image_column: str = "image", text_column: str = "text",
                          codes_column: str = CODES_COLUMN, num_shards: int = 1):
    """
    One source (a `datasets.Dataset` or `IterableDataset`) as a stream of `kind` examples with the common columns
    `kind`, `image`, `text`, `image_codes` (the columns a kind does not use are None; `image_codes` is read from
    `codes_column` when the source has it). A map-style dataset becomes an `IterableDataset` (`num_shards` shards,
    for DataLoader workers) without being copied: the selection of columns is lazy.
    """
    import datasets

    _check_kind(kind)
    if isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset(num_shards=num_shards)
    elif not isinstance(dataset, datasets.IterableDataset):
        raise ValueError(
            f"A pretraining source must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}."
        )
    columns = dataset.column_names  # None for some streaming sources: checked on the first example instead
    needs = [c for c, used in ((image_column, kind != "text"), (text_column, kind != "image")) if used]
    if columns is not None and any(c not in columns for c in needs):
        raise ValueError(f"A {kind!r} source needs the column(s) {needs}; it has {columns}.")
    has_codes = columns is not None and codes_column in columns

    def convert(example):
        missing = [c for c in needs if c not in example]
        if missing:
            raise ValueError(f"A {kind!r} source needs the column(s) {needs}; an example has {sorted(example)}.")
        return {
            "kind": kind,
            "image": example[image_column] if kind != "text" else None,
            "text": example[text_column] if kind != "image" else None,
            CODES_COLUMN: example.get(codes_column) if has_codes and kind != "text" else None,
        }

    return dataset.map(convert, remove_columns=columns, features=_features())


def _interleave(sources: list, probabilities, seed: int | None, stopping_strategy: str):
    import datasets

    if len(sources) == 1:
        return sources[0]
    return datasets.interleave_datasets(sources, probabilities=probabilities, seed=seed,
                                        stopping_strategy=stopping_strategy)


def _normalised(name: str, weights, count: int) -> list[float] | None:
    if weights is None:
        return None
    weights = list(weights)
    if len(weights) != count or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights) \
            or sum(weights) <= 0:
        raise ValueError(f"`{name}` must be {count} non-negative numbers with a positive sum, got {weights!r}.")
    return [w / sum(weights) for w in weights]


def mixed_pretraining_dataset(
    images: Sequence = (),
    texts: Sequence = (),
    image_texts: Sequence = (),
    proportions: Sequence[float] | None = (1.0, 1.0, 1.0),
    seed: int | None = 42,
    stopping_strategy: str = "all_exhausted",
    image_column: str = "image",
    text_column: str = "text",
    codes_column: str = CODES_COLUMN,
    num_shards: int = 1,
):
    """
    The training stream of masked data modeling: the `images` sources (image-only examples), `texts` (monomodal
    text) and `image_texts` (pairs), each a `datasets.Dataset` / `IterableDataset` or a `(dataset, weight)` pair,
    brought to the common columns (`as_pretraining_source`). The sources of one kind are interleaved by their
    weights (default: equally), then the kinds by `proportions` (image, text, image_text; the paper: equal thirds,
    2048 + 2048 + 2048 of a 6144 batch), all with `datasets.interleave_datasets`. A kind without sources takes no
    share. `proportions=None` alternates the kinds one example each (round robin), so that every batch of a
    multiple of three holds exactly a third of each. `stopping_strategy` "all_exhausted" (default) repeats the
    smaller sources until every source was seen once; "first_exhausted" stops with the first. Returns an
    `IterableDataset` (shuffle it with `.shuffle(seed, buffer_size)`; Trainer needs `--max_steps` with it).
    """
    groups = {"image": list(images), "text": list(texts), "image_text": list(image_texts)}
    if proportions is not None and len(list(proportions)) != len(KINDS):
        raise ValueError(f"`proportions` gives the shares of {KINDS}: 3 numbers, got {proportions!r}.")
    shares = list(proportions) if proportions is not None else [1.0] * len(KINDS)
    per_kind, kind_shares = [], []
    for (kind, sources), share in zip(groups.items(), shares):
        if not sources or share == 0:
            continue
        pairs = [source if isinstance(source, tuple) else (source, 1.0) for source in sources]
        streams = [as_pretraining_source(dataset, kind, image_column, text_column, codes_column, num_shards)
                   for dataset, _ in pairs]
        weights = _normalised(f"{kind} source weights", [w for _, w in pairs], len(pairs))
        per_kind.append(_interleave(streams, weights, seed, stopping_strategy))
        kind_shares.append(share)
    if not per_kind:
        raise ValueError("No pretraining source with a positive share: give images, texts or image_texts.")
    probabilities = _normalised("proportions", kind_shares, len(kind_shares)) if proportions is not None else None
    return _interleave(per_kind, probabilities, seed, stopping_strategy)


@dataclass
class MaskedDataModelingCollator:
    """
    Mixed examples (`kind`, `image`, `text`, `image_codes`; see `mixed_pretraining_dataset`) -> one sub-batch per
    kind present, `{"image": {...}, "text": {...}, "image_text": {...}}`, each the keyword arguments of
    [`BEiT3ForMaskedDataModeling`]:

    - image: `pixel_values`, `bool_masked_pos` (block-wise, `image_mask_ratio` of the patches), `image_labels`;
    - text: `input_ids` with `<mask>` at `text_mask_ratio` of the real, non-special tokens, `attention_mask`,
      `text_labels` (-100 where not masked);
    - image_text: all six, the text masked at `image_text_mask_ratio` and the image at `image_text_image_mask_ratio`.

    `image_labels` are the examples' `image_codes` when every image of the sub-batch has them, otherwise the codes
    of `visual_tokenizer` (a [`BEiT3VisualTokenizer`]) on the images as `visual_tokenizer_processor` prepares them
    (default: the model's resize at the tokenizer's resolution, pixels in [0, 1], so both see the same view). The
    tokenizer's grid must be the model's (`image_size // patch_size` of the processor and `patch_size`). Masks draw
    from torch's global generator, which Trainer seeds and restores on resume.

    Args:
        processor: a `BEiT3Processor` (image processor and tokenizer) at the model's image size.
        patch_size (`int`): the model's patch size (`config.patch_size`).
        visual_tokenizer: the tokenizer model, for examples without `image_codes`.
        max_length (`int`): longest text in tokens, `<s>` and `</s>` included.
        mask_generator: a `BlockMaskingGenerator` to use instead of one built from `image_mask_ratio`.
    """

    processor: object
    patch_size: int
    visual_tokenizer: object | None = None
    visual_tokenizer_processor: object | None = None
    text_mask_ratio: float = 0.15
    image_text_mask_ratio: float = 0.5
    image_mask_ratio: float = 0.4
    image_text_image_mask_ratio: float = 0.4
    max_length: int = 64
    mask_generator: BlockMaskingGenerator | None = None
    _generators: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        image_processor = self.processor.image_processor
        size = image_processor.size
        height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"The processor's image size {height}x{width} is not a multiple of `patch_size` "
                             f"{self.patch_size}.")
        self.grid = (height // self.patch_size, width // self.patch_size)
        for name in ("text_mask_ratio", "image_text_mask_ratio", "image_mask_ratio", "image_text_image_mask_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
        if self.mask_generator is not None:
            if (self.mask_generator.height, self.mask_generator.width) != self.grid:
                raise ValueError(f"`mask_generator` masks a {self.mask_generator.height}x{self.mask_generator.width} "
                                 f"grid, the model's is {self.grid[0]}x{self.grid[1]}.")
            self._generators = {"image": self.mask_generator, "image_text": self.mask_generator}
        else:
            self._generators = {"image": BlockMaskingGenerator(self.grid, mask_ratio=self.image_mask_ratio),
                                "image_text": BlockMaskingGenerator(self.grid,
                                                                    mask_ratio=self.image_text_image_mask_ratio)}
        if self.visual_tokenizer is not None:
            config = self.visual_tokenizer.config
            tokenizer_grid = (config.image_size // config.patch_size,) * 2
            if tokenizer_grid != self.grid:
                raise ValueError(
                    f"The visual tokenizer codes a {tokenizer_grid[0]}x{tokenizer_grid[1]} grid (image_size "
                    f"{config.image_size}, patch_size {config.patch_size}), the model has "
                    f"{self.grid[0]}x{self.grid[1]} "
                    "patches: they must match."
                )
            if self.visual_tokenizer_processor is None:
                from .image_processing_beit3 import BEiT3ImageProcessor

                self.visual_tokenizer_processor = BEiT3ImageProcessor.from_preset(
                    "vl", size=config.image_size, do_normalize=False
                )

    def __call__(self, examples: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        # masks are drawn example by example in the order given, so that they do not depend on how the examples
        # are split into batches (gradient accumulation sees the masks of the large batch)
        drawn = [self.draw(example) for example in examples]
        batch = {}
        for kind in KINDS:
            group = [(example, masks) for example, (kind_of, masks) in zip(examples, drawn) if kind_of == kind]
            if group:
                batch[kind] = self.collate(kind, [example for example, _ in group], [masks for _, masks in group])
        return batch

    def draw(self, example: dict) -> tuple[str, dict[str, torch.Tensor]]:
        """The kind of `example` and its masks: `bool_masked_pos` `(num_patches,)` for an image, and for a text its
        unpadded masked `input_ids` and `text_labels`."""
        kind = _check_kind(example.get("kind"))
        masks = {}
        if kind != "text":
            if example.get("image") is None:
                raise ValueError(f"An {kind!r} example has no image.")
            masks["bool_masked_pos"] = self._generators[kind]()
        if kind != "image":
            text = example.get("text")
            if not isinstance(text, str):
                raise ValueError(f"An {kind!r} example needs a text string, got {type(text).__name__}.")
            tokenizer = self.processor.tokenizer
            input_ids = torch.tensor([tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]])
            ratio = self.text_mask_ratio if kind == "text" else self.image_text_mask_ratio
            masked, labels = mask_text_tokens(input_ids, None, tokenizer.all_special_ids, tokenizer.mask_token_id,
                                              probability=ratio)
            masks["input_ids"], masks["text_labels"] = masked[0], labels[0]
        return kind, masks

    def collate(self, kind: str, examples: list[dict], masks: list[dict]) -> dict[str, torch.Tensor]:
        """The sub-batch of `examples`, all of `kind`, with their `masks` (`draw`); texts padded to the longest."""
        batch = {}
        if kind != "text":
            images = [example["image"] for example in examples]
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            batch["bool_masked_pos"] = torch.stack([m["bool_masked_pos"] for m in masks])
            batch["image_labels"] = self.visual_tokens(images, [example.get(CODES_COLUMN) for example in examples])
        if kind != "image":
            length = max(len(m["input_ids"]) for m in masks)
            pad_id = self.processor.tokenizer.pad_token_id
            batch["input_ids"] = torch.full((len(masks), length), pad_id, dtype=torch.long)
            batch["text_labels"] = torch.full((len(masks), length), -100, dtype=torch.long)
            batch["attention_mask"] = torch.zeros(len(masks), length, dtype=torch.long)
            for row, m in enumerate(masks):
                n = len(m["input_ids"])
                batch["input_ids"][row, :n] = m["input_ids"]
                batch["text_labels"][row, :n] = m["text_labels"]
                batch["attention_mask"][row, :n] = 1
        return batch

    def visual_tokens(self, images: list, codes: list) -> torch.LongTensor:
        """`(batch, num_patches)` visual tokens: the precomputed `codes` when every image has them, else the
        tokenizer's."""
        num_patches = self.grid[0] * self.grid[1]
        if all(code is not None for code in codes):
            labels = torch.tensor(codes, dtype=torch.long)
            if labels.shape[1:] != (num_patches,):
                raise ValueError(f"Precomputed `{CODES_COLUMN}` must hold {num_patches} codes per image (the "
                                 f"{self.grid[0]}x{self.grid[1]} grid), got shape {tuple(labels.shape)}.")
            return labels
        if self.visual_tokenizer is None:
            raise ValueError(f"Images without precomputed `{CODES_COLUMN}` need a `visual_tokenizer` for their labels.")
        return tokenize_images(self.visual_tokenizer, self.visual_tokenizer_processor, images)


def tokenize_images(visual_tokenizer, image_processor, images: list) -> torch.LongTensor:
    """The tokenizer's codes `(batch, num_patches)` of PIL `images`, on the tokenizer's device."""
    device = next(visual_tokenizer.parameters()).device
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"].to(device)
    return visual_tokenizer.get_codebook_indices(pixel_values).cpu()


def precompute_visual_tokens(dataset, visual_tokenizer, image_processor=None, image_column: str = "image",
                             codes_column: str = CODES_COLUMN, batch_size: int = 64):
    """
    `dataset` (a `datasets.Dataset` or `IterableDataset`) with a `codes_column` of the visual tokens of its images
    (`num_patches` ints each), to train without running the tokenizer (`MaskedDataModelingCollator` reads the
    column). `image_processor` defaults to the collator's view: the model's resize at the tokenizer's resolution,
    pixels in [0, 1]. Map-style datasets are cached by `datasets` as usual; `save_to_disk` keeps the result.
    """
    if image_processor is None:
        from .image_processing_beit3 import BEiT3ImageProcessor

        image_processor = BEiT3ImageProcessor.from_preset("vl", size=visual_tokenizer.config.image_size,
                                                          do_normalize=False)
    visual_tokenizer.eval()

    def add_codes(examples):
        return {codes_column: tokenize_images(visual_tokenizer, image_processor, examples[image_column]).tolist()}

    return dataset.map(add_codes, batched=True, batch_size=batch_size)


def masked_data_modeling_sums(model, batch: dict) -> dict[str, torch.Tensor]:
    """
    Runs `model` (a [`BEiT3ForMaskedDataModeling`], possibly wrapped) on every sub-batch of a collated mixed batch
    and returns, pooled over the kinds, `text_loss_sum` / `image_loss_sum` (summed cross-entropies, with gradients),
    `text_count` / `image_count` (labelled masked positions) and `text_correct` / `image_correct`, plus the same three
    per kind under `"{kind}/..."` (detached). The loss of a step is `text_loss_weight * text_loss_sum / text_count +
    image_loss_weight * image_loss_sum / image_count` over all micro-batches and processes of the step.
    """
    unknown = set(batch) - set(KINDS)
    if unknown:
        raise ValueError(f"A masked data modeling batch has the sub-batches {KINDS}; got also {sorted(unknown)}.")
    zero = None
    sums = {}
    for kind, inputs in batch.items():
        outputs = model(**inputs)
        for modality, labels in (("text", _text_targets(inputs)), ("image", _image_targets(inputs))):
            logits = getattr(outputs, f"{modality}_logits")
            if labels is None or logits is None:
                continue
            loss_sum = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
            labelled = labels.ne(-100)
            count = labelled.sum()
            correct = (logits.detach().argmax(dim=-1).eq(labels) & labelled).sum()
            for statistic, value in zip(_STATISTICS, (loss_sum, count, correct)):
                key = f"{modality}_{statistic}"
                sums[key] = sums[key] + value if key in sums else value
                sums[f"{kind}/{key}"] = value.detach()
            zero = loss_sum
    if zero is None:
        raise ValueError("A masked data modeling batch has no sub-batch with labels.")
    for modality in ("text", "image"):
        for statistic in _STATISTICS:
            default = (zero.new_zeros(()) if statistic == "loss_sum"
                       else torch.zeros((), dtype=torch.long, device=zero.device))
            sums.setdefault(f"{modality}_{statistic}", default)
    return sums


def placeholder_inputs(kind: str, config) -> dict[str, torch.Tensor]:
    """
    A sub-batch of `kind` for `BEiT3ForMaskedDataModeling` (of `config`) with one example and nothing masked: it
    runs the modules of its kind and adds 0 to every sum of `masked_data_modeling_sums`. Data-parallel training
    whose processes must call the same modules in the same order (FSDP, DeepSpeed) runs it where a process lacks a
    kind that another holds.
    """
    _check_kind(kind)
    inputs = {}
    if kind != "text":
        size, patches = config.image_size, config.num_patches
        inputs["pixel_values"] = torch.zeros(1, config.num_channels, size, size)
        inputs["bool_masked_pos"] = torch.zeros(1, patches, dtype=torch.bool)
        inputs["image_labels"] = torch.zeros(1, patches, dtype=torch.long)
    if kind != "image":
        inputs["input_ids"] = torch.full((1, 1), config.bos_token_id, dtype=torch.long)
        inputs["attention_mask"] = torch.ones(1, 1, dtype=torch.long)
        inputs["text_labels"] = torch.full((1, 1), -100, dtype=torch.long)
    return inputs


def _text_targets(inputs: dict) -> torch.Tensor | None:
    """The labels of the positions `BEiT3ForMaskedDataModeling` predicts, in its order."""
    labels = inputs.get("text_labels")
    if labels is None:
        return None
    predicted = labels.ne(-100)
    if inputs.get("attention_mask") is not None:
        predicted = predicted & inputs["attention_mask"].bool()
    return labels[predicted].long()


def _image_targets(inputs: dict) -> torch.Tensor | None:
    labels = inputs.get("image_labels")
    if labels is None or inputs.get("bool_masked_pos") is None:
        return None
    return labels[inputs["bool_masked_pos"]].long()


def count_targets(batch: dict) -> torch.Tensor:
    """`[text_count, image_count]`: the labelled masked positions of a collated mixed batch (before the forward)."""
    counts = torch.zeros(2, dtype=torch.long)
    for inputs in batch.values():
        for i, labels in enumerate((_text_targets(inputs), _image_targets(inputs))):
            if labels is not None:
                counts[i] += labels.ne(-100).sum().cpu()
    return counts


def _main(argv=None):
    """`python -m beit3_hf.pretraining_data`: precompute visual tokens into a saved `datasets` dataset."""
    import datasets
    from transformers import AutoModel

    parser = argparse.ArgumentParser(description=precompute_visual_tokens.__doc__.split("\n\n")[0].strip())
    parser.add_argument("--dataset_dir", required=True,
                        help="A DatasetDict saved with save_to_disk, or an imagefolder (with metadata.jsonl).")
    parser.add_argument("--visual_tokenizer", required=True, help="A BEiT3VisualTokenizer directory.")
    parser.add_argument("--output_dir", required=True, help="Where the dataset with the codes is saved.")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--codes_column", default=CODES_COLUMN)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    if os.path.isfile(os.path.join(args.dataset_dir, "dataset_dict.json")):
        dataset = datasets.load_from_disk(args.dataset_dir)
    else:
        splits = {name: os.path.join(args.dataset_dir, name, "metadata.jsonl") for name in os.listdir(args.dataset_dir)
                  if os.path.isfile(os.path.join(args.dataset_dir, name, "metadata.jsonl"))}
        dataset = (datasets.load_dataset("imagefolder", data_files=splits) if splits
                   else datasets.load_dataset("imagefolder", data_dir=args.dataset_dir))
    tokenizer = AutoModel.from_pretrained(args.visual_tokenizer)
    dataset = precompute_visual_tokens(dataset, tokenizer, image_column=args.image_column,
                                       codes_column=args.codes_column, batch_size=args.batch_size)
    dataset.save_to_disk(args.output_dir)
    logger.warning(f"Saved {dataset} with visual tokens in {args.codes_column!r} to {args.output_dir}.")


if __name__ == "__main__":
    _main()
