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

Accepted inputs (for both classes; the conversion rules are in `beit3_hf.image_inputs`): PIL images of any mode,
NumPy arrays and torch tensors (`(H, W)`, `(H, W, C)` or `(C, H, W)`, `C` in {1, 3, 4}, uint8/bool/16-bit/integer/
float pixels, or a batch `(B, ...)` of those), and local paths or URLs. Pass one image, a list of images, or a list
of equally long lists of images (e.g. NLVR2 pairs), giving `pixel_values` of shape `(B, 3, S, S)` or
`(B, K, 3, S, S)`; images of different sizes can be mixed.

Bad input raises `ValueError` naming the offending value: `None`, an empty list, an empty (zero-size) image,
unsupported objects, a channel count other than 1/3/4, NaN or infinite values, or out-of-range values. A 1x1 image
works (it becomes a constant image). There is no size limit: a very large image is processed as any other and only
costs memory and time (about 3 bytes per pixel plus PIL's resampling buffers); PIL's decompression-bomb check
still applies when a file is opened from a path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.utils import TensorType, is_torch_available, is_torchvision_available, logging

from .image_inputs import make_batch_structure, to_rgb_uint8
from .processor_presets import image_processor_kwargs

if is_torch_available():
    import torch

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

logger = logging.get_logger(__name__)

__all__ = [
    "BEiT3ImageProcessor",
    "get_center_crop_box",
    "get_resize_output_size",
    "make_batch_structure",
    "to_rgb_uint8",
]


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


def _per_channel(values, channels: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise ValueError(f"{name} has {array.size} values for {channels} channels: {values!r}.")
    return array.reshape(channels, 1, 1)


# --------------------------------------------------------------------------------------------------------------------
# The pipeline, written once over backend primitives
# --------------------------------------------------------------------------------------------------------------------


class _BEiT3ImageProcessingMixin:
    """Defaults, presets and the preprocessing pipeline shared by the PIL and torchvision BEiT-3 image processors.

    The pipeline (convert → resize → centre crop → rescale → normalize → stack) is written here once, with the
    geometry and arithmetic of the original transforms. A backend only supplies the array primitives it is made of,
    for NumPy arrays or torch tensors: `_from_rgb`, `_resize_to`, `_pad`, `_cast`, `_like`, `_stack`,
    `_channels_last` and `_contiguous`.
    """

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

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device=None,
        **kwargs,
    ):
        """One raw image → `(3, H, W)` uint8 in the backend's format (validated, RGB; on `device` for tensors)."""
        return self._from_rgb(to_rgb_uint8(image, input_data_format, do_convert_rgb=do_convert_rgb), device)

    def resize(self, image, size: SizeDict, resample=None, **kwargs):
        """Resizes a `(3, H, W)` uint8 image to the output size of torchvision's `Resize` (a no-op if it has it)."""
        height, width = image.shape[-2:]
        new_height, new_width = get_resize_output_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        return self._resize_to(image, new_height, new_width, _resample_to_pil(resample))

    def center_crop(self, image, size: SizeDict, **kwargs):
        """Centre-crops a `(C, H, W)` image with torchvision's offsets (`int(round((H - h) / 2))`), zero padding first
        if the image is smaller than the crop."""
        crop_height, crop_width = _check_crop_size(size)
        height, width = image.shape[-2:]
        padding, (top, left) = get_center_crop_box(height, width, crop_height, crop_width)
        if any(padding):
            image = self._pad(image, *padding)
        return image[..., top : top + crop_height, left : left + crop_width]

    def rescale(self, image, scale: float, **kwargs):
        """`image * scale` as float32. The product is formed in float64 and rounded once, which for uint8 input and
        `scale = 1/255` equals torchvision's float32 `x / 255` bit for bit."""
        return self._cast(self._cast(image, "float64") * scale, "float32")

    def normalize(self, image, mean, std, **kwargs):
        """`(image - mean) / std` per channel, in float32 like torchvision's `Normalize`."""
        channels = image.shape[-3]
        mean = _per_channel(mean, channels, "image_mean")
        std = _per_channel(std, channels, "image_std")
        if (std == 0).any():
            raise ValueError(f"image_std must not contain zeros, got {std.ravel().tolist()}.")
        return (self._cast(image, "float32") - self._like(mean, image)) / self._like(std, image)

    def _stack_same_shape(self, images: list, error: str):
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(error.format(shapes=sorted(shapes)))
        return self._stack(images)

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
        if do_pad:
            raise ValueError("BEiT-3 images are resized to a fixed size; `do_pad=True` is not supported.")

        def process_one(image):
            if do_resize:
                image = self.resize(image, size, resample)
            if do_center_crop:
                image = self.center_crop(image, crop_size)
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            return self._contiguous(self._cast(image, "float32"))

        def process_example(item):
            if not isinstance(item, list):
                return process_one(item)
            group = [process_one(image) for image in item]
            return self._stack_same_shape(group, "The images of one example have different output shapes {shapes}.")

        processed = [process_example(item) for item in images]
        if data_format is not None and ChannelDimension(data_format) == ChannelDimension.LAST:
            processed = [self._channels_last(item) for item in processed]
        if return_tensors is not None:
            processed = self._stack_same_shape(
                processed,
                "Cannot stack images of different output shapes {shapes} into one tensor; keep `do_resize=True` (or "
                "`do_center_crop=True`), or use `return_tensors=None`.",
            )
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

    # NumPy primitives of the pipeline; images are (C, H, W) arrays, uint8 until rescaled.

    def _from_rgb(self, rgb: np.ndarray, device=None) -> np.ndarray:
        return rgb.transpose(2, 0, 1)

    def _resize_to(self, image: np.ndarray, height: int, width: int, resample: PILImageResampling) -> np.ndarray:
        """PIL resizing, as torchvision's `Resize` does on PIL images."""
        resized = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).resize((width, height), resample)
        return np.asarray(resized).transpose(2, 0, 1)

    def _pad(self, image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        return np.pad(image, [(0, 0)] * (image.ndim - 2) + [(top, bottom), (left, right)])

    def _cast(self, image: np.ndarray, dtype: str) -> np.ndarray:
        return image.astype(dtype, copy=False)

    def _like(self, values: np.ndarray, image: np.ndarray) -> np.ndarray:
        return values

    def _stack(self, images: list) -> np.ndarray:
        return np.stack(images)

    def _channels_last(self, image: np.ndarray) -> np.ndarray:
        return np.moveaxis(image, -3, -1)

    def _contiguous(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------------------------------
# Optional torchvision backend
# --------------------------------------------------------------------------------------------------------------------


class _TensorPrimitives:
    """Torch primitives of the pipeline; images are (C, H, W) tensors, uint8 until rescaled.

    Only `_resize_to` needs torchvision, so the rest is defined (and tested) without it.
    """

    def _from_rgb(self, rgb: np.ndarray, device=None) -> torch.Tensor:
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)
        return tensor.to(device) if device is not None else tensor

    def _resize_to(self, image: torch.Tensor, height: int, width: int, resample: PILImageResampling) -> torch.Tensor:
        interpolation = _PIL_TO_TORCHVISION.get(resample, InterpolationMode.BICUBIC)
        return tvF.resize(image, [height, width], interpolation=interpolation, antialias=True)

    def _pad(self, image: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        return torch.nn.functional.pad(image, (left, right, top, bottom))

    def _cast(self, image: torch.Tensor, dtype: str) -> torch.Tensor:
        return image.to(getattr(torch, dtype))

    def _like(self, values: np.ndarray, image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(values).to(image.device)

    def _stack(self, images: list) -> torch.Tensor:
        return torch.stack(images)

    def _channels_last(self, image: torch.Tensor) -> torch.Tensor:
        return torch.movedim(image, -3, -1)

    def _contiguous(self, image: torch.Tensor) -> torch.Tensor:
        return image.contiguous()


BEiT3ImageProcessorTorchvision = None

if is_torchvision_available():

    class BEiT3ImageProcessorTorchvision(_TensorPrimitives, _BEiT3ImageProcessingMixin, TorchvisionBackend):
        r"""
        BEiT-3 image processor on torch tensors (torchvision backend; can run on a GPU via `device=`).

        Same fields, presets, inputs and outputs as [`BEiT3ImageProcessor`]. Resizing uses torchvision's
        antialiased bicubic kernel, which differs from PIL's by up to a few 1/255 per pixel; everything else
        (centre-crop offsets, rescaling, normalization) matches the original transforms exactly. Use
        [`BEiT3ImageProcessor`] (`AutoImageProcessor.from_pretrained(..., backend="pil")`) for bit-exact parity.
        """

    __all__.append("BEiT3ImageProcessorTorchvision")
