"""The masks of BEiT-3's masked data modeling: block-wise image masks (as in BEiT) and masked text tokens.

    >>> from beit3_hf.masking import BlockMaskingGenerator, mask_text_tokens
    >>> bool_masked_pos = BlockMaskingGenerator(14, mask_ratio=0.4)()      # (196,) bool, exactly 78 True
    >>> input_ids, text_labels = mask_text_tokens(input_ids, attention_mask, tokenizer.all_special_ids,
    ...                                           tokenizer.mask_token_id, probability=0.15)

The paper masks 40% of the image patches (block-wise), 15% of the tokens of monomodal text and 50% of the text
tokens of image-text pairs. Both are deterministic given a generator: a `torch.Generator`, or for the block masks
also a `random.Random`; without one they draw from torch's global generator (`torch.manual_seed`, DataLoader
worker seeding).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import torch

__all__ = ["BlockMaskingGenerator", "mask_text_tokens"]

#: BEiT's smallest block, 16 patches, is meant for its 14x14 grid of 196 patches.
REFERENCE_MIN_NUM_PATCHES = 16
REFERENCE_NUM_PATCHES = 196

Generator = torch.Generator | random.Random | None


class _Draws:
    """Uniform draws from a `random.Random`, a `torch.Generator` or (None) torch's global generator."""

    def __init__(self, generator: Generator):
        if generator is not None and not isinstance(generator, (torch.Generator, random.Random)):
            raise ValueError(
                f"`generator` must be a torch.Generator, a random.Random or None, got {type(generator).__name__}."
            )
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        if isinstance(self.generator, random.Random):
            return self.generator.uniform(low, high)
        return low + (high - low) * torch.rand((), generator=self.generator, device="cpu").item()

    def randint(self, low: int, high: int) -> int:
        """An integer in `[low, high]` (both included)."""
        if isinstance(self.generator, random.Random):
            return self.generator.randint(low, high)
        return int(torch.randint(low, high + 1, (), generator=self.generator, device="cpu"))

    def sample(self, population: int, k: int) -> list[int]:
        """`k` distinct indices of `range(population)`."""
        if isinstance(self.generator, random.Random):
            return self.generator.sample(range(population), k)
        return torch.randperm(population, generator=self.generator, device="cpu")[:k].tolist()


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def _probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


class BlockMaskingGenerator:
    """
    BEiT's block-wise masking (unilm `beit/masking_generator.py`): rectangles of patches are masked one after
    another until `num_masking_patches` are. Each block has an area drawn uniformly from `[min_num_patches,
    min(max_num_patches, patches still to mask)]` and an aspect ratio (height / width) drawn log-uniformly from
    `[min_aspect, max_aspect]`; rounded to whole patches, a block is kept only if its size is still within
    `[min_num_patches, max_num_patches]` and its aspect ratio in that range, and if it adds between 1 and the
    patches still to mask (it may overlap earlier blocks). When `max_attempts` draws in a row find no such block,
    the rest is masked patch by patch at random (as BEiT v2 does), so every mask holds exactly
    `num_masking_patches` patches.

    Args:
        input_size (`int` or `(int, int)`): the patch grid, `(height, width)` or one side of a square
            (`image_size // patch_size`: 14 at 224px, patch 16).
        mask_ratio (`float`, defaults to 0.4): the share of the grid to mask, rounded to a whole number of patches;
            used when `num_masking_patches` is not given.
        num_masking_patches (`int`, *optional*): the number of patches to mask, instead of `mask_ratio`.
        min_num_patches (`int`, *optional*): the smallest block. By default BEiT's 16 patches on its 14x14 grid,
            scaled with the grid on smaller ones: `min(16, max(1, round(16 * num_patches / 196)))`, and never more
            than `num_masking_patches`. An explicit value is used as given.
        max_num_patches (`int`, *optional*): the largest block (default: no limit but the patches still to mask).
        min_aspect (`float`, defaults to 0.3) / max_aspect (`float`, *optional*, defaults to `1 / min_aspect`):
            the range of block aspect ratios.
        max_attempts (`int`, defaults to 10): block draws before the rest is masked patch by patch.

    Calling it returns a `torch.BoolTensor` of shape `(num_patches,)` (row-major, the patch order of
    `bool_masked_pos`); `sample` also returns the blocks.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        mask_ratio: float = 0.4,
        num_masking_patches: int | None = None,
        min_num_patches: int | None = None,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_attempts: int = 10,
    ):
        if isinstance(input_size, int) and not isinstance(input_size, bool):
            input_size = (input_size, input_size)
        if not isinstance(input_size, (tuple, list)) or len(input_size) != 2:
            raise ValueError(f"`input_size` must be an int or a (height, width) pair, got {input_size!r}.")
        self.height = _positive_int("input_size", input_size[0])
        self.width = _positive_int("input_size", input_size[1])
        self.num_patches = self.height * self.width

        if num_masking_patches is None:
            mask_ratio = _probability("mask_ratio", mask_ratio)
            num_masking_patches = round(mask_ratio * self.num_patches)
        elif (
            isinstance(num_masking_patches, bool)
            or not isinstance(num_masking_patches, int)
            or not 0 <= num_masking_patches <= self.num_patches
        ):
            raise ValueError(
                f"`num_masking_patches` must be an integer in [0, {self.num_patches}] (the {self.height}x"
                f"{self.width} grid), got {num_masking_patches!r}."
            )
        self.num_masking_patches = num_masking_patches

        if min_num_patches is None:
            scaled = max(1, round(REFERENCE_MIN_NUM_PATCHES * self.num_patches / REFERENCE_NUM_PATCHES))
            min_num_patches = max(1, min(REFERENCE_MIN_NUM_PATCHES, scaled, num_masking_patches))
        elif _positive_int("min_num_patches", min_num_patches) > max(1, num_masking_patches):
            raise ValueError(
                f"`min_num_patches` ({min_num_patches}) is larger than `num_masking_patches` ({num_masking_patches}): "
                "no block would fit."
            )
        self.min_num_patches = min_num_patches
        if max_num_patches is None:
            max_num_patches = max(num_masking_patches, min_num_patches)
        elif _positive_int("max_num_patches", max_num_patches) < min_num_patches:
            raise ValueError(
                f"`max_num_patches` ({max_num_patches}) is smaller than `min_num_patches` ({min_num_patches})."
            )
        self.max_num_patches = max_num_patches

        if max_aspect is None and isinstance(min_aspect, (int, float)) and min_aspect > 0:
            max_aspect = 1 / min_aspect
        for name, value in (("min_aspect", min_aspect), ("max_aspect", max_aspect)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
        if min_aspect > max_aspect:
            raise ValueError(f"`min_aspect` ({min_aspect}) is larger than `max_aspect` ({max_aspect}).")
        self.min_aspect, self.max_aspect = float(min_aspect), float(max_aspect)
        self.max_attempts = _positive_int("max_attempts", max_attempts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.height}x{self.width}, num_masking_patches={self.num_masking_patches}, "
            f"blocks of {self.min_num_patches} to {self.max_num_patches} patches, "
            f"aspect {self.min_aspect:.3g} to {self.max_aspect:.3g})"
        )

    def __call__(self, generator: Generator = None) -> torch.Tensor:
        """A mask of shape `(num_patches,)`, True at the `num_masking_patches` masked patches."""
        return self.sample(generator)[0].flatten()

    def sample(self, generator: Generator = None) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
        """The mask on the grid, `(height, width)`, and the blocks placed, as `(top, left, height, width)`."""
        draws = _Draws(generator)
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        blocks, count = [], 0
        while count < self.num_masking_patches:
            placed = self._place_block(mask, self.num_masking_patches - count, draws)
            if placed is None:
                break
            block, added = placed
            blocks.append(block)
            count += added
        if count < self.num_masking_patches:  # no block fits any more: the rest patch by patch
            unmasked = (~mask).flatten().nonzero().squeeze(1)
            chosen = unmasked[draws.sample(len(unmasked), self.num_masking_patches - count)]
            mask.view(-1)[chosen] = True
        return mask, blocks

    def _place_block(self, mask: torch.Tensor, remaining: int, draws: _Draws):
        max_area = max(self.min_num_patches, min(self.max_num_patches, remaining))
        log_aspect = (math.log(self.min_aspect), math.log(self.max_aspect))
        for _ in range(self.max_attempts):
            area = draws.uniform(self.min_num_patches, max_area)
            aspect = math.exp(draws.uniform(*log_aspect))
            height, width = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (1 <= height <= self.height and 1 <= width <= self.width):
                continue
            if not self.min_num_patches <= height * width <= self.max_num_patches:
                continue
            if not self.min_aspect <= height / width <= self.max_aspect:
                continue
            top, left = draws.randint(0, self.height - height), draws.randint(0, self.width - width)
            region = mask[top : top + height, left : left + width]
            added = height * width - int(region.sum())
            if 0 < added <= remaining:
                region.fill_(True)
                return (top, left, height, width), added
        return None


def mask_text_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    special_ids: Iterable[int],
    mask_token_id: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Masks each real, non-special token independently with `probability` (BEiT-3: 0.15 for text, 0.5 for the text of
    image-text pairs) and replaces every masked token by `mask_token_id`: BEiT-3 masks text as it masks images, with
    no 80/10/10 (BERT's random and kept tokens). Special tokens (`<s>`, `</s>`, `<pad>`, ...) and padding
    (`attention_mask` 0) are never masked; a row may get no masked token.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): token ids.
        attention_mask (`torch.Tensor` of the same shape, *optional*): 1 for real tokens, 0 for padding.
        special_ids (iterable of `int`): ids never masked, e.g. `tokenizer.all_special_ids`.
        mask_token_id (`int`): the id put in place of a masked token (`tokenizer.mask_token_id`).
        probability (`float`, defaults to 0.15): the chance of each eligible token to be masked, in [0, 1].
        generator (`torch.Generator`, *optional*): for reproducible masks.

    Returns:
        `(input_ids, text_labels)`: the ids with `<mask>` at the masked positions, and the original ids there with
        -100 everywhere else (the `text_labels` of [`BEiT3ForMaskedDataModeling`]).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
        dtype = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"`input_ids` must be a tensor of integer token ids, got {dtype}.")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` {tuple(attention_mask.shape)} must match `input_ids` {tuple(input_ids.shape)}."
        )
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"`mask_token_id` must be a non-negative integer, got {mask_token_id!r}.")
    probability = _probability("probability", probability)
    special_ids = list(special_ids)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in special_ids):
        raise ValueError(f"`special_ids` must be integer token ids, got {special_ids!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")

    eligible = ~torch.isin(input_ids, torch.tensor(special_ids, dtype=input_ids.dtype, device=input_ids.device))
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    device = generator.device if generator is not None else input_ids.device
    draws = torch.rand(input_ids.shape, generator=generator, device=device).to(input_ids.device)
    masked = eligible & (draws < probability)
    return input_ids.masked_fill(masked, mask_token_id), input_ids.masked_fill(~masked, -100)
