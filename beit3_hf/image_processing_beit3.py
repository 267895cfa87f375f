"""Image processor for BEiT-3.

`BEiT3ImageProcessor` (PIL + NumPy, no torchvision needed) reproduces the evaluation transforms of the original
code (unilm `beit3/datasets.py`) exactly: PIL bicubic resizing, torchvision's centre-crop offsets, `ToTensor`'s
float32 division by 255 and `Normalize`'s float32 arithmetic. Two presets cover the released checkpoints:

- `BEiT3ImageProcessor.from_preset("vl", size=480)`: vision-language tasks (VQA, NLVR2, retrieval, captioning):
  bicubic resize to `(S, S)` (aspect ratio not kept), no crop, mean = std = 0.5;
- `BEiT3ImageProcessor.from_preset("imagenet", size=224)`: image classification: bicubic resize of the shorter side
  to `S`, centre crop `S x S`, ImageNet mean/std.

The default constructor is the vision-language preset at 224. Everything a preset sets is an ordinary image-processor
field (`size`, `do_center_crop`, `crop_size`, `image_mean`, `image_std`, ...), so `save_pretrained` /
`from_pretrained` round-trip it.

When torchvision is installed, `BEiT3ImageProcessorTorchvision` (the "torchvision" backend of `AutoImageProcessor`)
does the same on tensors, optionally on a GPU; its bicubic kernel differs slightly from PIL's (up to a few 1/255 per
pixel), so use the PIL class (`backend="pil"`) for bit-exact parity with the original code.

Accepted inputs (for both classes):

- `PIL.Image.Image` of any mode, converted as the original loader does (`img.convert("RGB")`; alpha is dropped,
  not composited). High-bit-depth modes, which `convert` would clip, are rescaled instead: `I;16*` and `I` are
  16-bit (`0..65535` → `0..255`; values outside that range raise), `F` is float in `[0, 1]` like float arrays;
- `numpy.ndarray` / `torch.Tensor` of shape `(H, W)`, `(H, W, C)` or `(C, H, W)` with `C` in {1, 3, 4} (1 is
  grey, 4 is RGBA whose alpha is dropped), or a batch `(B, ...)` of those. The channel axis is taken to be the last
  one for arrays and the first one for tensors when both would fit; pass `input_data_format` to override.
  dtypes: `uint8`; `bool` (`True` = 255); `uint16` (16-bit, scaled by 255/65535); other integers must lie in
  `[0, 255]`; floats must be finite and lie in `[0, 1]` (a tolerance of 1e-3 is clipped) and are quantized to
  8 bits (`round(x * 255)`) before resizing, exactly as for uint8 input;
- a local path or URL string (loaded with `transformers.image_utils.load_image`, which also applies the EXIF
  orientation; PIL images are used as given, like the original loader);
- one image, a list of images, or a list of equally long lists of images (e.g. NLVR2 pairs), giving `pixel_values`
  of shape `(B, 3, S, S)` or `(B, K, 3, S, S)`. Images of different sizes can be mixed.

Bad input raises `ValueError` naming the offending value: `None`, an empty list, an empty (zero-size) image,
unsupported objects, a channel count other than 1/3/4, NaN or infinite values, or out-of-range values. A 1x1 image
works (it becomes a constant image). There is no size limit: a very large image is processed as any other and only
costs memory and time (about 3 bytes per pixel plus PIL's resampling buffers); PIL's decompression-bomb check
still applies when a file is opened from a path.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict, load_image
from transformers.utils import TensorType, is_torch_available, is_torchvision_available, logging

from .processor_presets import image_processor_kwargs

if is_torch_available():
    import torch

logger = logging.get_logger(__name__)

__all__ = [
    "BEiT3ImageProcessor",
    "get_center_crop_box",
    "get_resize_output_size",
    "make_batch_structure",
    "to_rgb_uint8",
]

_VALID_CHANNELS = (1, 3, 4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Float inputs a hair outside [0, 1] (e.g. from earlier float arithmetic) are clipped rather than rejected.
_FLOAT_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Input validation and conversion to (H, W, 3) uint8
# --------------------------------------------------------------------------------------------------------------------


def _describe(value: Any, limit: int = 80) -> str:
    """A short description of `value` for error messages."""
    if isinstance(value, np.ndarray) or (is_torch_available() and isinstance(value, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, Image.Image):
        return f"PIL image of mode {value.mode!r} and size {value.size}"
    text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def _is_image_like(value: Any) -> bool:
    return isinstance(value, (Image.Image, np.ndarray, str, os.PathLike)) or (
        is_torch_available() and isinstance(value, torch.Tensor)
    )


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


def to_rgb_uint8(image: Any, input_data_format: str | ChannelDimension | None = None) -> np.ndarray:
    """Converts one image (PIL, NumPy, torch, path or URL) to a contiguous `(H, W, 3)` uint8 array.

    See the module docstring for the accepted modes, dtypes and layouts.

    Raises:
        ValueError: the input is not a supported, non-empty, finite image with 1, 3 or 4 channels.
    """
    if isinstance(image, (str, os.PathLike)):
        image = load_image(os.fspath(image))
    if isinstance(image, Image.Image):
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
    nesting and objects that are not images.
    """
    if images is None:
        raise ValueError("`images` is None; pass an image, a list of images or a list of image pairs.")
    if isinstance(images, np.ndarray) or (is_torch_available() and isinstance(images, torch.Tensor)):
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
        for item in images:
            _check_single_image(item)
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
    for group in images:
        for item in group:
            _check_single_image(item)
    return [list(group) for group in images]


def _check_single_image(item: Any) -> None:
    if not _is_image_like(item):
        raise ValueError(
            f"Unsupported image {_describe(item)}; expected a PIL.Image.Image, numpy.ndarray, torch.Tensor, or a path "
            "or URL string."
        )
    if isinstance(item, np.ndarray) or (is_torch_available() and isinstance(item, torch.Tensor)):
        if item.ndim not in (2, 3):
            raise ValueError(f"An image inside a list should have 2 or 3 dimensions, got {_describe(item)}.")


# --------------------------------------------------------------------------------------------------------------------
# Geometry shared by both backends (torchvision semantics)
# --------------------------------------------------------------------------------------------------------------------


def get_resize_output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """Output `(height, width)` of torchvision's `Resize` for `size` = `{"height", "width"}` or `{"shortest_edge"}`.

    For `shortest_edge` the shorter side becomes `S` and the longer one `int(S * long / short)` (truncated, as in
    `torchvision.transforms.functional._compute_resized_output_size`).
    """
    if size.height is not None and size.width is not None:
        return int(size.height), int(size.width)
    if size.shortest_edge is not None:
        target = int(size.shortest_edge)
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = target, int(target * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    raise ValueError(f"`size` must have 'height' and 'width', or 'shortest_edge'; got {dict(size)}.")


def get_center_crop_box(height: int, width: int, crop_height: int, crop_width: int) -> tuple[tuple[int, ...], tuple]:
    """torchvision's `center_crop` geometry: zero padding `(top, bottom, left, right)` if the crop is larger than the
    image, then the crop offsets `(top, left)` = `int(round((size - crop) / 2))` on the padded image."""
    pad_top = pad_bottom = pad_left = pad_right = 0
    if crop_height > height:
        pad_top, pad_bottom = (crop_height - height) // 2, (crop_height - height + 1) // 2
    if crop_width > width:
        pad_left, pad_right = (crop_width - width) // 2, (crop_width - width + 1) // 2
    padded_height, padded_width = height + pad_top + pad_bottom, width + pad_left + pad_right
    top = int(round((padded_height - crop_height) / 2.0))
    left = int(round((padded_width - crop_width) / 2.0))
    return (pad_top, pad_bottom, pad_left, pad_right), (top, left)


def _check_crop_size(crop_size: SizeDict) -> tuple[int, int]:
    if crop_size is None or crop_size.height is None or crop_size.width is None:
        raise ValueError(f"`crop_size` must have 'height' and 'width'; got {crop_size}.")
    return int(crop_size.height), int(crop_size.width)


def _resample_to_pil(resample) -> PILImageResampling:
    if resample is None:
        return PILImageResampling.BICUBIC
    if isinstance(resample, (PILImageResampling, int)):
        return PILImageResampling(int(resample))
    name = str(getattr(resample, "value", resample)).upper()
    if name in PILImageResampling.__members__:  # e.g. torchvision's InterpolationMode.BICUBIC
        return PILImageResampling[name]
    raise ValueError(f"Unsupported `resample` {resample!r}; use a PIL.Image.Resampling value.")


# --------------------------------------------------------------------------------------------------------------------
# Shared class-level behaviour
# --------------------------------------------------------------------------------------------------------------------


class _BEiT3ImageProcessingMixin:
    """Defaults, presets and input handling shared by the PIL and torchvision BEiT-3 image processors."""

    model_input_names = ["pixel_values"]
    # The vision-language preset at 224 (`from_preset("vl", size=224)`).
    resample = PILImageResampling.BICUBIC
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    size = {"height": 224, "width": 224}
    crop_size = None
    do_resize = True
    do_center_crop = False
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True

    @classmethod
    def from_preset(cls, preset: str, size: int = 224, **kwargs):
        """Builds the image processor of one of the original evaluation transforms.

        Args:
            preset: `"vl"` (vision-language: VQA, NLVR2, retrieval, captioning) or `"imagenet"` (classification).
            size: the model's input resolution `S`.
            kwargs: further fields that override the preset.

        Example:

        ```python
        >>> BEiT3ImageProcessor.from_preset("vl", size=480).size
        {'height': 480, 'width': 480}
        ```
        """
        return cls(**{**image_processor_kwargs(preset, size), **kwargs})

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        return make_batch_structure(images)

    @staticmethod
    def _check_unsupported(do_pad=None) -> None:
        if do_pad:
            raise ValueError("BEiT-3 images are resized to a fixed size; `do_pad=True` is not supported.")

    @staticmethod
    def _rgb(image, do_convert_rgb, input_data_format) -> np.ndarray:
        if do_convert_rgb is False and isinstance(image, Image.Image) and image.mode != "RGB":
            raise ValueError(
                f"`do_convert_rgb=False` but got a {_describe(image)}; BEiT-3 needs RGB input, so leave "
                "`do_convert_rgb` on or convert the image first."
            )
        return to_rgb_uint8(image, input_data_format=input_data_format)

    @staticmethod
    def _finalize(processed: list, return_tensors, data_format) -> BatchFeature:
        if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
            processed = [np.moveaxis(np.asarray(item), -3, -1) for item in processed]
        if return_tensors is not None:
            shapes = {tuple(item.shape) for item in processed}
            if len(shapes) > 1:
                raise ValueError(
                    f"Cannot stack images of different output shapes {sorted(shapes)} into one tensor; keep "
                    "`do_resize=True` (or `do_center_crop=True`), or use `return_tensors=None`."
                )
            processed = np.stack(processed) if isinstance(processed[0], np.ndarray) else torch.stack(processed)
        return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)


# --------------------------------------------------------------------------------------------------------------------
# PIL backend (default)
# --------------------------------------------------------------------------------------------------------------------


class BEiT3ImageProcessor(_BEiT3ImageProcessingMixin, PilBackend):
    r"""
    BEiT-3 image processor (PIL + NumPy backend), bit-exact with the original evaluation transforms.

    The defaults are the vision-language preset at 224 (bicubic resize to 224x224, no crop, rescale by 1/255,
    mean = std = 0.5). Use `BEiT3ImageProcessor.from_preset("vl" | "imagenet", size=S)` for the released checkpoints,
    or set the fields directly:

    Args:
        do_resize (`bool`, defaults to `True`): resize with `resample` to `size`.
        size (`dict[str, int]`, defaults to `{"height": 224, "width": 224}`): `{"height", "width"}` (exact output
            size) or `{"shortest_edge"}` (shorter side to this length, aspect ratio kept, as torchvision's
            `Resize(int)`).
        resample (`PILImageResampling`, defaults to `BICUBIC`): PIL resampling filter.
        do_center_crop (`bool`, defaults to `False`): centre crop to `crop_size` with torchvision's offsets (zero
            padding if the image is smaller).
        crop_size (`dict[str, int]`, *optional*): `{"height", "width"}` of the crop.
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to `1/255`): scaling of the
            uint8 pixels, computed like `ToTensor` (float32 result of the exact quotient).
        do_normalize (`bool`, defaults to `True`), image_mean / image_std (defaults to 0.5 / 0.5): per-channel
            `(x - mean) / std` in float32.
        do_convert_rgb (`bool`, defaults to `True`): convert any input to RGB. With `False`, PIL images that are not
            RGB raise instead.

    Returns `pixel_values` of shape `(batch, 3, H, W)`, or `(batch, K, 3, H, W)` for a list of K-image lists (e.g.
    NLVR2 pairs), as float32. See the module docstring for accepted inputs and errors.
    """

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One raw image → `(3, H, W)` uint8 array (validated, RGB)."""
        return self._rgb(image, do_convert_rgb, input_data_format).transpose(2, 0, 1)

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, **kwargs) -> np.ndarray:
        """Resizes a `(3, H, W)` uint8 array with PIL, as torchvision's `Resize` does on PIL images."""
        height, width = image.shape[-2:]
        new_height, new_width = get_resize_output_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        pil_image = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        resized = pil_image.resize((new_width, new_height), resample=_resample_to_pil(resample))
        return np.asarray(resized).transpose(2, 0, 1)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """Centre-crops a `(C, H, W)` array with torchvision's offsets (`int(round((H - h) / 2))`)."""
        crop_height, crop_width = _check_crop_size(size)
        height, width = image.shape[-2:]
        (pad_top, pad_bottom, pad_left, pad_right), (top, left) = get_center_crop_box(
            height, width, crop_height, crop_width
        )
        if pad_top or pad_bottom or pad_left or pad_right:
            image = np.pad(image, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right)))
        return image[:, top : top + crop_height, left : left + crop_width]

    def rescale(self, image: np.ndarray, scale: float, **kwargs) -> np.ndarray:
        """`image * scale` as float32. The product is formed in float64 and rounded once, which for uint8 input and
        `scale = 1/255` equals torchvision's float32 `x / 255` bit for bit."""
        return np.multiply(image, scale, dtype=np.float64).astype(np.float32)

    def normalize(self, image: np.ndarray, mean, std, **kwargs) -> np.ndarray:
        """`(image - mean) / std` per channel, in float32 like torchvision's `Normalize`."""
        channels = image.shape[0]
        mean = _per_channel(mean, channels, "image_mean")
        std = _per_channel(std, channels, "image_std")
        if (std == 0).any():
            raise ValueError(f"image_std must not contain zeros, got {std.ravel().tolist()}.")
        image = image.astype(np.float32, copy=False)
        return (image - mean) / std

    def _process_one(
        self,
        image: np.ndarray,
        *,
        do_resize,
        size,
        resample,
        do_center_crop,
        crop_size,
        do_rescale,
        rescale_factor,
        do_normalize,
        image_mean,
        image_std,
    ) -> np.ndarray:
        if do_resize:
            image = self.resize(image, size=size, resample=resample)
        if do_center_crop:
            image = self.center_crop(image, crop_size)
        if do_rescale:
            image = self.rescale(image, rescale_factor)
        if do_normalize:
            image = self.normalize(image, image_mean, image_std)
        if image.dtype != np.float32:
            image = image.astype(np.float32)
        return np.ascontiguousarray(image)

    def _preprocess(
        self,
        images: list,
        do_resize: bool,
        size: SizeDict,
        resample,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool | None = None,
        return_tensors: str | TensorType | None = None,
        data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Resize → centre crop → rescale → normalize each image; stacks K-image groups to `(K, 3, H, W)`."""
        self._check_unsupported(do_pad=do_pad)
        settings = dict(
            do_resize=do_resize,
            size=size,
            resample=resample,
            do_center_crop=do_center_crop,
            crop_size=crop_size,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
        )
        processed = process_examples(images, lambda image: self._process_one(image, **settings), np.stack)
        return self._finalize(processed, return_tensors, data_format)


def process_examples(images: list, process_one, stack) -> list:
    """Processes every example: a single image, or a list of images (NLVR2 pairs) stacked to `(K, 3, H, W)`."""
    processed = []
    for item in images:
        if isinstance(item, list):
            group = [process_one(image) for image in item]
            shapes = {tuple(image.shape) for image in group}
            if len(shapes) > 1:
                raise ValueError(f"The images of one example have different output shapes {sorted(shapes)}.")
            processed.append(stack(group))
        else:
            processed.append(process_one(item))
    return processed


def _per_channel(values, channels: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise ValueError(f"{name} has {array.size} values for {channels} channels: {values!r}.")
    return array.reshape(channels, 1, 1)


# --------------------------------------------------------------------------------------------------------------------
# Optional torchvision backend
# --------------------------------------------------------------------------------------------------------------------

BEiT3ImageProcessorTorchvision = None

if is_torchvision_available():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF
    from transformers.image_processing_backends import TorchvisionBackend

    _PIL_TO_TORCHVISION = {
        PILImageResampling.NEAREST: InterpolationMode.NEAREST_EXACT,
        PILImageResampling.BILINEAR: InterpolationMode.BILINEAR,
        PILImageResampling.BICUBIC: InterpolationMode.BICUBIC,
        PILImageResampling.BOX: InterpolationMode.BOX,
        PILImageResampling.HAMMING: InterpolationMode.HAMMING,
        PILImageResampling.LANCZOS: InterpolationMode.LANCZOS,
    }

    class BEiT3ImageProcessorTorchvision(_BEiT3ImageProcessingMixin, TorchvisionBackend):
        r"""
        BEiT-3 image processor on torch tensors (torchvision backend; can run on a GPU via `device=`).

        Same fields, presets, inputs and outputs as [`BEiT3ImageProcessor`]. Resizing uses torchvision's
        antialiased bicubic kernel, which differs from PIL's by up to a few 1/255 per pixel; everything else
        (centre-crop offsets, rescaling, normalization) matches the original transforms exactly. Use
        [`BEiT3ImageProcessor`] (`AutoImageProcessor.from_pretrained(..., backend="pil")`) for bit-exact parity.
        """

        def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
            """One raw image → `(3, H, W)` uint8 tensor (validated, RGB), on `device` if given."""
            tensor = torch.from_numpy(self._rgb(image, do_convert_rgb, input_data_format)).permute(2, 0, 1)
            return tensor.to(device) if device is not None else tensor

        def _resize_tensor(self, image: torch.Tensor, size: SizeDict, resample) -> torch.Tensor:
            height, width = image.shape[-2:]
            new_height, new_width = get_resize_output_size(height, width, size)
            if (new_height, new_width) == (height, width):
                return image
            interpolation = _PIL_TO_TORCHVISION.get(_resample_to_pil(resample), InterpolationMode.BICUBIC)
            return tvF.resize(image, [new_height, new_width], interpolation=interpolation, antialias=True)

        def _crop_tensor(self, image: torch.Tensor, crop_size: SizeDict) -> torch.Tensor:
            crop_height, crop_width = _check_crop_size(crop_size)
            height, width = image.shape[-2:]
            (pad_top, pad_bottom, pad_left, pad_right), (top, left) = get_center_crop_box(
                height, width, crop_height, crop_width
            )
            if pad_top or pad_bottom or pad_left or pad_right:
                image = torch.nn.functional.pad(image, (pad_left, pad_right, pad_top, pad_bottom))
            return image[..., top : top + crop_height, left : left + crop_width]

        def _process_one(
            self,
            image: torch.Tensor,
            *,
            do_resize,
            size,
            resample,
            do_center_crop,
            crop_size,
            do_rescale,
            rescale_factor,
            do_normalize,
            image_mean,
            image_std,
        ) -> torch.Tensor:
            if do_resize:
                image = self._resize_tensor(image, size, resample)
            if do_center_crop:
                image = self._crop_tensor(image, crop_size)
            if do_rescale:
                image = (image.to(torch.float64) * rescale_factor).to(torch.float32)
            image = image.to(torch.float32)
            if do_normalize:
                channels = image.shape[0]
                mean = torch.from_numpy(_per_channel(image_mean, channels, "image_mean")).to(image.device)
                std = torch.from_numpy(_per_channel(image_std, channels, "image_std")).to(image.device)
                if (std == 0).any():
                    raise ValueError(f"image_std must not contain zeros, got {std.ravel().tolist()}.")
                image = (image - mean) / std
            return image.contiguous()

        def _preprocess(
            self,
            images: list,
            do_resize: bool,
            size: SizeDict,
            resample,
            do_center_crop: bool,
            crop_size: SizeDict,
            do_rescale: bool,
            rescale_factor: float,
            do_normalize: bool,
            image_mean,
            image_std,
            do_pad: bool | None = None,
            return_tensors: str | TensorType | None = None,
            data_format=None,
            **kwargs,
        ) -> BatchFeature:
            self._check_unsupported(do_pad=do_pad)
            settings = dict(
                do_resize=do_resize,
                size=size,
                resample=resample,
                do_center_crop=do_center_crop,
                crop_size=crop_size,
                do_rescale=do_rescale,
                rescale_factor=rescale_factor,
                do_normalize=do_normalize,
                image_mean=image_mean,
                image_std=image_std,
            )
            processed = process_examples(images, lambda image: self._process_one(image, **settings), torch.stack)
            if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
                processed = [torch.movedim(item, -3, -1) for item in processed]
            if return_tensors is not None:
                if len({tuple(item.shape) for item in processed}) > 1:
                    raise ValueError("Cannot stack images of different output shapes into one tensor.")
                processed = torch.stack(processed)
            return BatchFeature(data={"pixel_values": processed}, tensor_type=return_tensors)

    __all__.append("BEiT3ImageProcessorTorchvision")
