"""Input coercion for the BEiT-3 image processors: any supported image → `(H, W, 3)` uint8, and batch nesting.

Both image-processor backends start from the same 8-bit RGB pixels, so PIL, NumPy and torch inputs of one picture
give the same `pixel_values`. The rules:

- `PIL.Image.Image` of any mode is converted as the original loader does (`img.convert("RGB")`; alpha is dropped,
  not composited). High-bit-depth modes, which `convert` would clip, are rescaled instead: `I;16*` and `I` are
  16-bit (`0..65535` → `0..255`; values outside that range raise), `F` is float in `[0, 1]` like float arrays;
- `numpy.ndarray` / `torch.Tensor` of shape `(H, W)`, `(H, W, C)` or `(C, H, W)` with `C` in {1, 3, 4} (1 is grey,
  4 is RGBA whose alpha is dropped). The channel axis is taken to be the last one for arrays and the first one for
  tensors when both would fit; `input_data_format` overrides that;
- dtypes: `uint8`; `bool` (`True` = 255); `uint16` (16-bit, scaled by 255/65535); other integers must lie in
  `[0, 255]`; floats (bfloat16/float16 included) must be finite and lie in `[0, 1]` (a tolerance of 1e-3 is clipped)
  and are quantized to 8 bits (`round(x * 255)`), so they are processed exactly as the equivalent uint8 image;
- a local path or URL string is loaded with `transformers.image_utils.load_image` (which applies the EXIF
  orientation; PIL images are used as given, like the original loader).

Anything else raises `ValueError` naming the offending value: unsupported objects, empty images, a channel count
other than 1/3/4, NaN or infinite values, and out-of-range values.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from transformers.image_utils import ChannelDimension, load_image
from transformers.utils import is_torch_available

if is_torch_available():
    import torch

__all__ = ["make_batch_structure", "to_rgb_uint8"]

_VALID_CHANNELS = (1, 3, 4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Float inputs a hair outside [0, 1] (e.g. from earlier float arithmetic) are clipped rather than rejected.
_FLOAT_TOLERANCE = 1e-3


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (is_torch_available() and isinstance(value, torch.Tensor))


def _describe(value: Any, limit: int = 80) -> str:
    """A short description of `value` for error messages."""
    if _is_tensor(value):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, Image.Image):
        return f"PIL image of mode {value.mode!r} and size {value.size}"
    text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def _is_image_like(value: Any) -> bool:
    return isinstance(value, (Image.Image, str, os.PathLike)) or _is_tensor(value)


def _float_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype != np.float32 and array.dtype != np.float64:
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        kind = "NaN" if np.isnan(array).any() else "infinite"
        raise ValueError(f"The {what} contains {kind} values; float images must be finite and lie in [0, 1].")
    low, high = float(array.min()), float(array.max())
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise ValueError(
            f"The {what} has values in [{low:g}, {high:g}], but float images must lie in [0, 1] (divide 0-255 "
            "data by 255, or pass it as uint8)."
        )
    return np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)


def _sixteen_bit_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    array = array.astype(np.int64)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ValueError(f"The 16-bit {what} has values in [{low}, {high}], outside [0, 65535].")
    # round(v * 255 / 65535) = round(v / 257)
    return ((array + 128) // 257).astype(np.uint8)


def _values_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Converts pixel values of any supported dtype to uint8 (see the module docstring for the rules)."""
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if kind == "u" and array.dtype.itemsize == 2:
        return _sixteen_bit_to_uint8(array, what)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"The {what} ({array.dtype}) has values in [{low}, {high}]; integer images must lie in [0, 255] "
                "(uint16 images are read as 16-bit)."
            )
        return array.astype(np.uint8)
    if kind == "f":
        return _float_to_uint8(array, what)
    raise ValueError(f"The {what} has unsupported dtype {array.dtype}; use uint8, bool, integer or float pixels.")


def _array_to_rgb(array: np.ndarray, input_data_format, prefer_channels_first: bool, what: str) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) pixels of any supported dtype → contiguous (H, W, 3) uint8.

    Without `input_data_format`, the channel axis is the first or last one whose length is 1, 3 or 4; when both
    fit, `prefer_channels_first` decides (True for torch tensors, False for NumPy arrays).
    """
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        if input_data_format is not None:
            channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
        else:
            first_fits, last_fits = array.shape[0] in _VALID_CHANNELS, array.shape[-1] in _VALID_CHANNELS
            if not (first_fits or last_fits):
                raise ValueError(
                    f"Cannot find the channel axis of the {what}: images need 1 (grey), 3 (RGB) or 4 (RGBA) channels "
                    "in their first or last dimension."
                )
            channels_first = first_fits if prefer_channels_first else not last_fits
        if channels_first:
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(f"The {what} should have 2 or 3 dimensions ((H, W), (H, W, C) or (C, H, W)).")
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise ValueError(f"The {what} is empty (height {height}, width {width}).")
    if channels not in _VALID_CHANNELS:
        raise ValueError(f"The {what} has {channels} channels; images need 1 (grey), 3 (RGB) or 4 (RGBA).")
    array = _values_to_uint8(array, what)  # validates every value, alpha included
    if channels == 4:  # RGBA: drop alpha, as PIL's convert("RGB") does
        array = array[:, :, :3]
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """PIL image of any mode → (H, W, 3) uint8, as `img.convert("RGB")` but without clipping high bit depths."""
    what = _describe(image)
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"The {what} is empty.")
    mode = image.mode
    if mode == "RGB":
        return np.array(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _array_to_rgb(_sixteen_bit_to_uint8(np.asarray(image), what), None, False, what)
    if mode == "F":
        return _array_to_rgb(_float_to_uint8(np.asarray(image), what), None, False, what)
    try:
        return np.array(image.convert("RGB"))
    except ValueError:
        # Modes PIL cannot convert directly (e.g. "La"): drop the alpha band and go through the array path.
        array = np.asarray(image)
        if array.ndim == 3 and mode[-1] in "Aa":
            array = array[:, :, :-1]
        return _array_to_rgb(array, None, False, what)


def to_rgb_uint8(
    image: Any, input_data_format: str | ChannelDimension | None = None, do_convert_rgb: bool | None = True
) -> np.ndarray:
    """Converts one image (PIL, NumPy, torch, path or URL) to a contiguous `(H, W, 3)` uint8 array.

    See the module docstring for the accepted modes, dtypes and layouts. With `do_convert_rgb=False`, a PIL image
    that is not RGB raises instead of being converted (BEiT-3 needs RGB; arrays are always converted).

    Raises:
        ValueError: the input is not a supported, non-empty, finite image with 1, 3 or 4 channels.
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(os.fspath(image))
    if isinstance(image, Image.Image):
        if do_convert_rgb is False and image.mode != "RGB":
            raise ValueError(
                f"`do_convert_rgb=False` but got a {_describe(image)}; BEiT-3 needs RGB input, so leave "
                "`do_convert_rgb` on or convert the image first."
            )
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, input_data_format, False, _describe(image))
    if is_torch_available() and isinstance(image, torch.Tensor):
        what = _describe(image)
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        elif tensor.is_complex():
            raise ValueError(f"The {what} has unsupported dtype {tensor.dtype}.")
        return _array_to_rgb(tensor.numpy(), input_data_format, True, what)
    raise ValueError(
        f"Unsupported image {_describe(image)}; expected a PIL.Image.Image, numpy.ndarray, torch.Tensor, or a path "
        "or URL string."
    )


def make_batch_structure(images: Any) -> list:
    """Validates the nesting of `images` and returns a flat list of images or a list of equally long lists.

    A 4-dimensional array or tensor is a batch of images. Raises `ValueError` for `None`, empty lists, ragged or mixed
    nesting and a top-level object that is neither an image nor a list. The images themselves are validated once,
    when `to_rgb_uint8` converts them.
    """
    if images is None:
        raise ValueError("`images` is None; pass an image, a list of images or a list of image pairs.")
    if _is_tensor(images):
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError(f"Got an empty batch of images ({_describe(images)}).")
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise ValueError(f"Expected an image or a batch of images with 2 to 4 dimensions, got {_describe(images)}.")
    if _is_image_like(images):
        return [images]
    if not isinstance(images, (list, tuple)):
        raise ValueError(
            f"Unsupported image {_describe(images)}; expected a PIL.Image.Image, numpy.ndarray, torch.Tensor, a path "
            "or URL string, or a list of those."
        )
    if len(images) == 0:
        raise ValueError("`images` is an empty list.")
    nested = [isinstance(item, (list, tuple)) for item in images]
    if not any(nested):
        return list(images)
    if not all(nested):
        raise ValueError("`images` mixes single images and lists of images; use one nesting level throughout.")
    group_sizes = {len(group) for group in images}
    if 0 in group_sizes:
        raise ValueError("`images` contains an empty list of images.")
    if len(group_sizes) > 1:
        raise ValueError(
            f"Every example must have the same number of images (e.g. 2 for NLVR2); got sizes {sorted(group_sizes)}."
        )
    return [list(group) for group in images]
