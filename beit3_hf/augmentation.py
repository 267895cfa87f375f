"""
Training-time image augmentation of the official BEiT-3 fine-tuning (unilm `beit3/datasets.py`,
`build_transform(is_train=True)`), in PIL + numpy + torch (torchvision is optional; see "Backends").

Two recipes, applied on the fly to the PIL images of a training set (`datasets.Dataset.set_transform`, see
`examples/trainer_utils.py`) before the processor, which still does the resizing and normalisation, so the evaluation
transforms are untouched:

* **Vision-language** (VQA, NLVR2, retrieval, captioning; `build_train_transform("crop" | "randaug", size)`):
  `RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(3/4, 4/3), bicubic)` (timm's `RandomResizedCropAndInterpolation`),
  a horizontal flip with probability 0.5 (see below), and with `"randaug"` unilm's `RandomAugment(2, 7)` over its ten
  operations (`UNILM_VL_OPS`: Identity, AutoContrast, Equalize, Brightness, Sharpness, ShearX, ShearY, TranslateX,
  TranslateY, Rotate) at unilm's fixed magnitudes: each of the 2 drawn operations (with replacement) runs with
  probability 0.5; Brightness and Sharpness by a factor 1.36, shears by +-0.21, translations by +-7 pixels, rotations by
  +-21 degrees, filling with grey (128, 128, 128). unilm's versions are OpenCV/numpy functions; here they are numpy
  (AutoContrast, Equalize, Brightness: the same lookup tables) and PIL affine warps with the same matrices (OpenCV's
  pixel-centre convention; bilinear rounding may differ by one grey level). Sharpness clips where unilm's uint8 cast
  wraps around.
* **ImageNet** (`build_train_transform("imagenet", size)`, timm's `create_transform(is_training=True,
  auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic")` as unilm calls it):
  `RandomResizedCrop(size, scale=(0.08, 1.0))`, flip with probability 0.5, then timm's `RandAugment`
  (`TimmRandAugment`, the 15 "increasing" operations, 2 per image, magnitude ~ N(9, 0.5) clipped to [0, 10], each
  with probability 0.5, fill = the ImageNet mean). timm's random erasing (probability 0.25, per-pixel normal noise
  on the normalised tensor) and mixup 0.8 / cutmix 1.0 with label smoothing 0.1 work on batches:
  `ClassificationBatchAugment`, with the soft-target loss
  `soft_target_cross_entropy`.

Horizontal flips (`flip=`): unilm flips every vision-language training image, even when the text names a side. Here
`"auto"` (the default of the vision-language recipes) flips only examples whose texts do not mention left or right
(`mentions_left_or_right`: captions, questions and NLVR2 statements such as "the dog on the left"), `"always"` is
unilm's behaviour and `"never"` turns flips off. Image classification flips always.

Randomness: every transform draws from torch's global generator (or the `generator` given), which the Trainer seeds,
gives each DataLoader worker its own stream and restores on resume; numpy draws are seeded from it.

Backends: with torchvision installed, the operations it shares with PIL (resized crop, flip, and timm's
AutoContrast, Equalize, Invert, Posterize, Solarize, Color, Contrast, Brightness, Sharpness, Rotate) run through
`torchvision.transforms.functional` (`backend="torchvision"`, the default `"auto"` picks it when importable); the
results are the same (tests/test_augmentation.py compares them, and skips without torchvision).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "AUGMENTATIONS",
    "ClassificationBatchAugment",
    "RandomResizedCrop",
    "TIMM_INCREASING_OPS",
    "TimmRandAugment",
    "TrainImageTransform",
    "UNILM_VL_OPS",
    "UnilmRandAugment",
    "build_train_transform",
    "captioning_smoothed_loss",
    "mentions_left_or_right",
    "random_erasing",
    "soft_target_cross_entropy",
]

#: The training augmentations `build_train_transform` knows: "none" (the processor only), "crop" (random resized crop +
#: flip, unilm's vision-language transform without `--randaug`), "randaug" (with it) and "imagenet" (timm's).
AUGMENTATIONS = ("none", "crop", "randaug", "imagenet")
FLIP_MODES = ("auto", "always", "never")

_SIDE_WORDS = re.compile(r"\b(left|right)(most|wards?|[- ]hand(ed)?)?\b", re.IGNORECASE)


def mentions_left_or_right(*texts) -> bool:
    """Whether any of `texts` (strings, or lists of strings such as reference captions) names a side: "left",
    "right", "leftmost", "right-hand", ... (case-insensitive). Such examples are not flipped with `flip="auto"`."""
    for text in texts:
        if text is None:
            continue
        if isinstance(text, str):
            if _SIDE_WORDS.search(text):
                return True
        elif mentions_left_or_right(*text):
            return True
    return False


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from torch's (so that torch's seeding and per-worker streams govern it)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))


def _to_rgb(image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"Augmentation needs PIL images, got {type(image).__name__}.")
    return image if image.mode == "RGB" else image.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------------
# Backends: the operations PIL and torchvision share


def _torchvision_functional():
    try:
        import torchvision.transforms.functional as TF
    except ImportError:  # also a broken install
        return None
    return TF


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "pil", "torchvision"):
        raise ValueError(f"`backend` must be 'auto', 'pil' or 'torchvision', got {backend!r}.")
    if backend == "auto":
        return "torchvision" if _torchvision_functional() is not None else "pil"
    if backend == "torchvision" and _torchvision_functional() is None:
        raise ValueError("backend='torchvision' needs torchvision installed.")
    return backend


class _PilOps:
    """The shared operations on PIL images, with PIL itself."""

    @staticmethod
    def resized_crop(image, top, left, height, width, size):
        return image.crop((left, top, left + width, top + height)).resize((size, size), Image.BICUBIC)

    hflip = staticmethod(lambda image: image.transpose(Image.FLIP_LEFT_RIGHT))
    autocontrast = staticmethod(ImageOps.autocontrast)
    equalize = staticmethod(ImageOps.equalize)
    invert = staticmethod(ImageOps.invert)
    posterize = staticmethod(ImageOps.posterize)
    solarize = staticmethod(ImageOps.solarize)
    color = staticmethod(lambda image, factor: ImageEnhance.Color(image).enhance(factor))
    contrast = staticmethod(lambda image, factor: ImageEnhance.Contrast(image).enhance(factor))
    brightness = staticmethod(lambda image, factor: ImageEnhance.Brightness(image).enhance(factor))
    sharpness = staticmethod(lambda image, factor: ImageEnhance.Sharpness(image).enhance(factor))

    @staticmethod
    def rotate(image, degrees, fill):
        return image.rotate(degrees, resample=Image.BICUBIC, fillcolor=fill)


class _TorchvisionOps:
    """The same operations through `torchvision.transforms.functional` (which takes PIL images)."""

    def __init__(self):
        self.F = _torchvision_functional()
        self.bicubic = self.F.InterpolationMode.BICUBIC

    def resized_crop(self, image, top, left, height, width, size):
        return self.F.resized_crop(image, top, left, height, width, [size, size], self.bicubic)

    def hflip(self, image):
        return self.F.hflip(image)

    def autocontrast(self, image):
        return self.F.autocontrast(image)

    def equalize(self, image):
        return self.F.equalize(image)

    def invert(self, image):
        return self.F.invert(image)

    def posterize(self, image, bits):
        return self.F.posterize(image, bits)

    def solarize(self, image, threshold):
        return self.F.solarize(image, threshold)

    def color(self, image, factor):
        return self.F.adjust_saturation(image, factor)

    def contrast(self, image, factor):
        return self.F.adjust_contrast(image, factor)

    def brightness(self, image, factor):
        return self.F.adjust_brightness(image, factor)

    def sharpness(self, image, factor):
        return self.F.adjust_sharpness(image, factor)

    def rotate(self, image, degrees, fill):
        return self.F.rotate(image, degrees, self.bicubic, fill=list(fill))


def _ops(backend: str):
    return _TorchvisionOps() if _resolve_backend(backend) == "torchvision" else _PilOps


# ---------------------------------------------------------------------------------------------------------------------
# Random resized crop


class RandomResizedCrop:
    """
    timm's `RandomResizedCropAndInterpolation` (as unilm uses it): a crop of `scale` of the area (uniform) and an
    aspect ratio log-uniform in `ratio`, 10 attempts, else the central crop at the nearest allowed ratio, resized to
    `size` x `size` with bicubic interpolation.
    """

    def __init__(self, size: int, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), backend: str = "auto"):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"`size` must be a positive int, got {size!r}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`scale` must satisfy 0 < min <= max <= 1, got {scale!r}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must satisfy 0 < min <= max, got {ratio!r}.")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.ops = _ops(backend)

    def get_params(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """`(top, left, crop_height, crop_width)`."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = rng.uniform(*self.scale) * area
            aspect_ratio = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if w <= width and h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        top, left, h, w = self.get_params(*image.size, rng)
        return self.ops.resized_crop(image, top, left, h, w, self.size)


# ---------------------------------------------------------------------------------------------------------------------
# unilm's RandomAugment for the vision-language tasks (beit3/randaug.py)

#: unilm's operation list for the vision-language fine-tuning (`build_transform` with `--randaug`).
UNILM_VL_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
                "TranslateY", "Rotate")
_UNILM_MAX_LEVEL = 10
_UNILM_TRANSLATE_CONST = 10
_UNILM_FILL = (128, 128, 128)


def _per_channel_table(array: np.ndarray, table_fn) -> np.ndarray:
    out = np.empty_like(array)
    for c in range(array.shape[2]):
        out[..., c] = table_fn(array[..., c])[array[..., c]]
    return out


def unilm_autocontrast(array: np.ndarray) -> np.ndarray:
    """unilm `autocontrast_func` (cutoff 0): each channel's [min, max] stretched to [0, 255] by a truncating table."""

    def table(channel):
        high, low = int(channel.max()), int(channel.min())
        if high <= low:
            return np.arange(256).astype(np.uint8)
        scale = 255 / (high - low)
        values = np.arange(256) * scale - low * scale
        return values.clip(0, 255).astype(np.uint8)

    return _per_channel_table(array, table)


def unilm_equalize(array: np.ndarray) -> np.ndarray:
    """unilm `equalize_func` (PIL's equalisation): a table from each channel's cumulative histogram."""
    out = np.empty_like(array)
    for c in range(array.shape[2]):
        channel = array[..., c]
        hist = np.bincount(channel.reshape(-1), minlength=256).astype(np.float64)
        non_zero = hist[hist != 0]
        step = np.sum(non_zero[:-1]) // 255
        if step == 0:
            out[..., c] = channel
            continue
        n = np.empty_like(hist)
        n[0] = step // 2
        n[1:] = hist[:-1]
        out[..., c] = (np.cumsum(n) // step).clip(0, 255).astype(np.uint8)[channel]
    return out


def unilm_brightness(array: np.ndarray, factor: float) -> np.ndarray:
    """unilm `brightness_func`: `uint8(clip(v * factor))` through a float32 table."""
    return (np.arange(256, dtype=np.float32) * factor).clip(0, 255).astype(np.uint8)[array]


def unilm_sharpness(array: np.ndarray, factor: float) -> np.ndarray:
    """unilm `sharpness_func`: blend with the 3x3 smoothing ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) of the interior
    (borders unchanged); the result is clipped to [0, 255] (unilm's uint8 cast wraps around instead)."""
    if factor == 1.0 or array.shape[0] < 3 or array.shape[1] < 3:
        return array
    image = array.astype(np.float32)
    kernel = np.ones((3, 3), dtype=np.float32)
    kernel[1, 1] = 5
    kernel /= 13
    height, width = image.shape[:2]
    blurred = np.zeros_like(image[1:-1, 1:-1])
    for dy in range(3):
        for dx in range(3):
            blurred += kernel[dy, dx] * image[dy : dy + height - 2, dx : dx + width - 2]
    blurred = np.floor(blurred + 0.5).clip(0, 255)  # OpenCV's filter2D rounds to uint8
    out = image.copy()
    out[1:-1, 1:-1] = blurred + factor * (image[1:-1, 1:-1] - blurred)
    return out.clip(0, 255).astype(np.uint8)


def _warp_affine(image: Image.Image, matrix: np.ndarray, fill) -> Image.Image:
    """OpenCV's `warpAffine(img, M, (W, H), borderValue=fill)` (bilinear; `M` maps source to destination pixels)
    through PIL, which wants the inverse map in its own half-pixel-offset coordinates."""
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0, 0, 1]])
    inverse = np.linalg.inv(forward)[:2]
    linear, shift = inverse[:, :2], inverse[:, 2]
    shift = shift + 0.5 - 0.5 * linear.sum(axis=1)
    coefficients = (linear[0, 0], linear[0, 1], shift[0], linear[1, 0], linear[1, 1], shift[1])
    return image.transform(image.size, Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=fill)


def _rotation_matrix(width: int, height: int, degrees: float) -> np.ndarray:
    """OpenCV's `getRotationMatrix2D((W / 2, H / 2), degrees, 1)` (counter-clockwise on screen)."""
    alpha, beta = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = width / 2, height / 2
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy], [-beta, alpha, beta * cx + (1 - alpha) * cy]])


def _unilm_op(name: str, image: Image.Image, rng: np.random.Generator, level: float) -> Image.Image:
    """One unilm operation at `level` (of 10), with unilm's argument mapping (`arg_dict`)."""
    sign = lambda: -1.0 if rng.random() > 0.5 else 1.0  # noqa: E731  (unilm: negate when random > 0.5)
    if name == "Identity":
        return image
    if name in ("AutoContrast", "Equalize", "Brightness", "Sharpness"):
        array = np.asarray(image)
        if name == "AutoContrast":
            array = unilm_autocontrast(array)
        elif name == "Equalize":
            array = unilm_equalize(array)
        else:
            factor = (level / _UNILM_MAX_LEVEL) * 1.8 + 0.1
            array = unilm_brightness(array, factor) if name == "Brightness" else unilm_sharpness(array, factor)
        return Image.fromarray(array)
    width, height = image.size
    if name in ("ShearX", "ShearY"):
        factor = (level / _UNILM_MAX_LEVEL) * 0.3 * sign()
        matrix = [[1, factor, 0], [0, 1, 0]] if name == "ShearX" else [[1, 0, 0], [factor, 1, 0]]
    elif name in ("TranslateX", "TranslateY"):
        offset = (level / _UNILM_MAX_LEVEL) * float(_UNILM_TRANSLATE_CONST) * sign()
        matrix = [[1, 0, -offset], [0, 1, 0]] if name == "TranslateX" else [[1, 0, 0], [0, 1, -offset]]
    elif name == "Rotate":
        degrees = (level / _UNILM_MAX_LEVEL) * 30
        if rng.random() < 0.5:  # unilm negates rotations on random < 0.5
            degrees = -degrees
        matrix = _rotation_matrix(width, height, degrees)
    else:
        raise ValueError(f"Unknown unilm RandAugment operation {name!r}; choose from {UNILM_VL_OPS}.")
    return _warp_affine(image, np.asarray(matrix, dtype=np.float64), _UNILM_FILL)


class UnilmRandAugment:
    """
    unilm's `RandomAugment(N, M, isPIL=True, augs=ops)` (beit3/randaug.py): `N` operations drawn from `ops` with
    replacement, each applied with probability 0.5 at the fixed level `M` (of 10). Defaults: the vision-language
    fine-tuning's `RandomAugment(2, 7, augs=UNILM_VL_OPS)`.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 7, ops: Sequence[str] = UNILM_VL_OPS):
        unknown = sorted(set(ops) - set(UNILM_VL_OPS))
        if unknown or not ops:
            raise ValueError(f"`ops` must be a non-empty subset of {UNILM_VL_OPS}, got unknown {unknown}.")
        if num_ops < 0 or not 0 <= magnitude <= _UNILM_MAX_LEVEL:
            raise ValueError(f"Need num_ops >= 0 and 0 <= magnitude <= 10, got {num_ops!r} and {magnitude!r}.")
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, tuple(ops)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for index in rng.integers(0, len(self.ops), self.num_ops):
            if rng.random() > 0.5:
                continue
            image = _unilm_op(self.ops[index], image, rng, self.magnitude)
        return image


# ---------------------------------------------------------------------------------------------------------------------
# timm's RandAugment for ImageNet ("rand-m9-mstd0.5-inc1", timm 0.4.12 as unilm pins it)

#: timm's `_RAND_INCREASING_TRANSFORMS` (the "inc1" list).
TIMM_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
#: timm's `_RAND_TRANSFORMS` (without "inc1").
TIMM_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_TIMM_MAX_LEVEL = 10.0
_TIMM_TRANSLATE_PCT = 0.45


def _solarize_add(image: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


class TimmRandAugment:
    """
    timm's `rand_augment_transform(config, hparams)` for configs `rand-m{M}[-n{N}][-mstd{S}][-inc{0|1}]`: `N`
    (default 2) operations drawn with replacement, each applied with probability 0.5 at a magnitude ~ N(M, S) clipped to
    [0, 10] (drawn per operation); geometric operations use bicubic interpolation and fill with `fill`
    (timm: the rounded ImageNet mean, (124, 116, 104)).
    """

    def __init__(self, config: str = "rand-m9-mstd0.5-inc1", fill=(124, 116, 104), backend: str = "auto"):
        parts = config.split("-")
        if parts[0] != "rand":
            raise ValueError(f"A RandAugment config starts with 'rand', got {config!r}.")
        magnitude, num_ops, std, increasing = 10.0, 2, 0.0, False
        for part in parts[1:]:
            match = re.fullmatch(r"(mstd|m|n|inc)(\d+(?:\.\d*)?)", part)
            if match is None:
                raise ValueError(f"Unsupported RandAugment config part {part!r} in {config!r}.")
            key, value = match.groups()
            if key == "mstd":
                std = float(value)
            elif key == "m":
                magnitude = float(value)
            elif key == "n":
                num_ops = int(float(value))
            else:
                increasing = bool(int(float(value)))
        self.config, self.magnitude, self.num_ops, self.std = config, magnitude, num_ops, std
        self.op_names = TIMM_INCREASING_OPS if increasing else TIMM_OPS
        self.fill = tuple(int(v) for v in fill)
        self.ops = _ops(backend)

    def apply(self, name: str, image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
        """One timm operation at magnitude `level` (timm's `LEVEL_TO_ARG` and op functions)."""
        ops, unit = self.ops, level / _TIMM_MAX_LEVEL
        sign = lambda: -1.0 if rng.random() > 0.5 else 1.0  # noqa: E731  (timm's _randomly_negate)
        if name == "AutoContrast":
            return ops.autocontrast(image)
        if name == "Equalize":
            return ops.equalize(image)
        if name == "Invert":
            return ops.invert(image)
        if name == "Rotate":
            return ops.rotate(image, unit * 30.0 * sign(), self.fill)
        if name in ("Posterize", "PosterizeIncreasing"):
            bits = int(unit * 4) if name == "Posterize" else 4 - int(unit * 4)
            if bits <= 0:  # keep 0 bits: black (older PIL did this; PIL >= 12 refuses bits < 1)
                return Image.new(image.mode, image.size)
            return image if bits >= 8 else ops.posterize(image, bits)
        if name in ("Solarize", "SolarizeIncreasing"):
            threshold = int(unit * 256) if name == "Solarize" else 256 - int(unit * 256)
            return ops.solarize(image, threshold)
        if name == "SolarizeAdd":
            return _solarize_add(image, int(unit * 110))
        enhance = {"Color": ops.color, "Contrast": ops.contrast, "Brightness": ops.brightness,
                   "Sharpness": ops.sharpness}
        if name in enhance:
            return enhance[name](image, unit * 1.8 + 0.1)
        if name.endswith("Increasing") and name[: -len("Increasing")] in enhance:
            return enhance[name[: -len("Increasing")]](image, 1.0 + unit * 0.9 * sign())
        width, height = image.size
        if name in ("ShearX", "ShearY"):
            factor = unit * 0.3 * sign()
            data = (1, factor, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, factor, 1, 0)
        elif name == "TranslateXRel":
            data = (1, 0, unit * _TIMM_TRANSLATE_PCT * sign() * width, 0, 1, 0)
        elif name == "TranslateYRel":
            data = (1, 0, 0, 0, 1, unit * _TIMM_TRANSLATE_PCT * sign() * height)
        else:
            raise ValueError(f"Unknown timm RandAugment operation {name!r}; choose from "
                             f"{TIMM_OPS + TIMM_INCREASING_OPS}.")
        return image.transform(image.size, Image.AFFINE, data, resample=Image.BICUBIC, fillcolor=self.fill)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for index in rng.integers(0, len(self.op_names), self.num_ops):
            if rng.random() > 0.5:
                continue
            level = self.magnitude
            if self.std > 0:
                level = rng.normal(level, self.std)
            image = self.apply(self.op_names[index], image, min(_TIMM_MAX_LEVEL, max(0.0, level)), rng)
        return image


# ---------------------------------------------------------------------------------------------------------------------
# Per-example training transform


class TrainImageTransform:
    """
    crop -> flip -> RandAugment for one training image (`build_train_transform` builds the recipes).

    Call it with an image and the example's texts (for `flip="auto"`), or use `dataset_transform(...)` for
    `datasets.Dataset.set_transform`.
    """

    def __init__(self, crop: RandomResizedCrop, flip: str = "auto", randaugment: Callable | None = None,
                 generator: torch.Generator | None = None):
        if flip not in FLIP_MODES:
            raise ValueError(f"`flip` must be one of {FLIP_MODES}, got {flip!r}.")
        self.crop, self.flip, self.randaugment, self.generator = crop, flip, randaugment, generator

    def may_flip(self, texts=()) -> bool:
        return self.flip == "always" or (self.flip == "auto" and not mentions_left_or_right(*texts))

    def augment(self, images: Sequence, texts=(), rng: np.random.Generator | None = None) -> list[Image.Image]:
        """The images of one example (one, or an NLVR2 pair), each cropped and RandAugment-ed on its own, flipped or
        not together (a pair keeps its left/right order)."""
        rng = _rng(self.generator) if rng is None else rng
        flip = rng.random() < 0.5 and self.may_flip(texts)
        out = []
        for image in images:
            image = self.crop(_to_rgb(image), rng)
            if flip:
                image = self.crop.ops.hflip(image)
            if self.randaugment is not None:
                image = self.randaugment(image, rng)
            out.append(image)
        return out

    def __call__(self, image, texts=(), rng: np.random.Generator | None = None) -> Image.Image:
        return self.augment([image], texts, rng)[0]

    def dataset_transform(self, image_columns: Sequence[str], text_columns: Sequence[str] = ()):
        """A function for `Dataset.set_transform`: the batch with every image of `image_columns` augmented (one flip
        decision per example, shared by its images: an NLVR2 pair keeps its left/right order) and the other columns
        as they are. Texts in `text_columns` decide the flips with `flip="auto"`."""
        image_columns, text_columns = tuple(image_columns), tuple(text_columns)

        def transform(batch: dict) -> dict:
            missing = [column for column in image_columns + text_columns if column not in batch]
            if missing:
                raise ValueError(f"The training data has no column(s) {missing}; it has {sorted(batch)}.")
            batch = dict(batch)
            augmented = {column: [] for column in image_columns}
            for row in range(len(batch[image_columns[0]])):
                images = self.augment([batch[column][row] for column in image_columns],
                                      [batch[column][row] for column in text_columns])
                for column, image in zip(image_columns, images):
                    augmented[column].append(image)
            batch.update(augmented)
            return batch

        return transform


def build_train_transform(
    kind: str, image_size: int, flip: str = "auto", generator: torch.Generator | None = None, backend: str = "auto",
    randaugment: str = "rand-m9-mstd0.5-inc1", fill=(124, 116, 104),
) -> TrainImageTransform | None:
    """
    The training transform of a recipe (`AUGMENTATIONS`): `"crop"` / `"randaug"` are unilm's vision-language
    `build_transform(is_train=True)` without / with `--randaug`; `"imagenet"` is timm's ImageNet training transform
    with RandAugment `randaugment` (its random erasing and mixup are `ClassificationBatchAugment`); `"none"` gives
    `None`. Outputs are PIL images of `image_size` x `image_size`, for the processor to normalise.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}.")
    if kind == "none":
        return None
    if kind == "imagenet":
        crop = RandomResizedCrop(image_size, scale=(0.08, 1.0), backend=backend)
        return TrainImageTransform(crop, flip, TimmRandAugment(randaugment, fill, backend), generator)
    crop = RandomResizedCrop(image_size, scale=(0.5, 1.0), backend=backend)
    return TrainImageTransform(crop, flip, UnilmRandAugment() if kind == "randaug" else None, generator)


# ---------------------------------------------------------------------------------------------------------------------
# Batch augmentation and losses for classification


def random_erasing(pixel_values: torch.Tensor, probability: float = 0.25, rng: np.random.Generator | None = None,
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3) -> torch.Tensor:
    """timm's `RandomErasing(probability, mode="pixel")` on each normalised image of `(batch, C, H, W)` (a copy): with
    probability `probability`, one rectangle of 2%-33% of the area and aspect ratio in [0.3, 1/0.3] (log-uniform, 10
    attempts) is replaced by standard normal noise."""
    if not 0 <= probability <= 1:
        raise ValueError(f"`probability` must be in [0, 1], got {probability!r}.")
    rng = _rng(None) if rng is None else rng
    out = pixel_values.clone()
    channels, height, width = out.shape[-3:]
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for image in out.view(-1, channels, height, width):
        if rng.random() > probability:
            continue
        for _ in range(10):
            target_area = rng.uniform(min_area, max_area) * height * width
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                noise = torch.from_numpy(rng.standard_normal((channels, h, w)).astype(np.float32))
                image[:, top : top + h, left : left + w] = noise.to(image)
                break
    return out


class ClassificationBatchAugment:
    """
    The batch half of the ImageNet recipe (timm's `RandomErasing` and `Mixup`, as unilm calls them): on a training
    batch `{"pixel_values", "labels"}` (class ids), random erasing with probability `random_erasing` per image, then
    with probability `prob` either mixup (lambda ~ Beta(`mixup_alpha`)) or, with probability `switch_prob` when both are
    on, cutmix (lambda ~ Beta(`cutmix_alpha`), a box of area 1 - lambda pasted from the reversed batch, lambda
    corrected to the box actually pasted); `labels` become soft targets `(batch, num_classes)`: the smoothed one-hots
    (`label_smoothing / num_classes` off, `1 - label_smoothing + that` on) mixed by lambda, each row summing to 1.

    The model then cannot compute the loss itself (its head reads float labels as multi-label / regression targets,
    following `config.problem_type`), so `BEiT3Trainer` asks `loss(outputs, labels)`: `soft_target_cross_entropy`.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, random_erasing: float = 0.25,
                 generator: torch.Generator | None = None):
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes!r}.")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing),
                            ("random_erasing", random_erasing)):
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {value!r}.")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.random_erasing, self.generator = random_erasing, generator

    def soft_targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        one_hot = torch.full((labels.shape[0], self.num_classes), off, device=labels.device)
        one_hot.scatter_(1, labels.view(-1, 1).long(), on)
        return one_hot * lam + one_hot.flip(0) * (1.0 - lam)

    def __call__(self, batch: dict) -> dict:
        labels = batch["labels"]
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"ClassificationBatchAugment needs class ids of shape (batch,), got {tuple(labels.shape)} "
                             f"{labels.dtype}.")
        rng = _rng(self.generator)
        pixel_values = batch["pixel_values"]
        if self.random_erasing > 0:
            pixel_values = random_erasing(pixel_values, self.random_erasing, rng)
        lam = 1.0
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and rng.random() < self.prob:
            use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha) if use_cutmix
                        else rng.beta(self.mixup_alpha, self.mixup_alpha))
            if use_cutmix:
                height, width = pixel_values.shape[-2:]
                cut = math.sqrt(1 - lam)
                cut_h, cut_w = int(height * cut), int(width * cut)
                cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
                top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
                left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
                pixel_values = pixel_values.clone()
                pixel_values[..., top:bottom, left:right] = pixel_values.flip(0)[..., top:bottom, left:right]
                lam = 1.0 - float((bottom - top) * (right - left)) / (height * width)
            else:
                pixel_values = pixel_values * lam + pixel_values.flip(0) * (1.0 - lam)
        return {**batch, "pixel_values": pixel_values, "labels": self.soft_targets(labels, lam)}

    @staticmethod
    def loss(outputs, labels: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(outputs["logits"], labels)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm's `SoftTargetCrossEntropy`: `mean(sum(-targets * log_softmax(logits)))`; class ids as `targets` give the
    ordinary cross-entropy."""
    if not targets.is_floating_point():
        return F.cross_entropy(logits.float(), targets)
    if targets.shape != logits.shape:
        raise ValueError(f"Soft targets must match the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(targets.shape)}.")
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def captioning_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1,
                             drop_worst_ratio: float = 0.0) -> torch.Tensor:
    """
    unilm's `BertCaptioningLoss`: at every labelled position (labels != -100), the KL divergence from the smoothed
    target (`1 - eps` on the token, `eps / (V - 1)` on each other token) to `softmax(logits)`, averaged over the
    labelled positions (0 when none is). `eps = 0` gives the plain cross-entropy. With `drop_worst_ratio` r > 0 the
    average keeps only the `int(n * (1 - r))` smallest of the n token losses of the batch (unilm: r = 0.2 once
    training is past `drop_worst_after` steps, which the caller decides).
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}.")
    if not 0 <= drop_worst_ratio < 1:
        raise ValueError(f"`drop_worst_ratio` must be in [0, 1), got {drop_worst_ratio!r}.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"`labels` {tuple(labels.shape)} must match the logits' {tuple(logits.shape[:-1])}.")
    selected = labels.ne(-100)
    logits, targets = logits[selected].float(), labels[selected]
    if targets.numel() == 0:
        return logits.sum() * 0.0
    num_classes = logits.shape[-1]
    smoothed = torch.full_like(logits, label_smoothing / (num_classes - 1))
    smoothed.scatter_(1, targets.view(-1, 1), 1.0 - label_smoothing)
    loss = F.kl_div(F.log_softmax(logits, dim=-1), smoothed, reduction="none").sum(-1)
    if drop_worst_ratio > 0:
        loss = torch.topk(loss, k=max(1, int(loss.shape[0] * (1 - drop_worst_ratio))), largest=False).values
    return loss.mean()
