"""Tests of `BEiT3ImageProcessor`: parity with the original evaluation transforms, inputs, errors and presets.

The official unilm eval transforms are reproduced below without torchvision, from torchvision's own code paths
for PIL input: `Resize((S, S), interpolation=3)` is `img.resize((S, S), Image.BICUBIC)`; `Resize(S)` resizes the
shorter side to S and the longer to `int(S * long / short)`; `CenterCrop(S)` crops at `int(round((h - S) / 2.0))`;
`ToTensor` is `uint8 → float32 / 255` in CHW; `Normalize` is float32 `(x - mean) / std`. Tolerance: 1e-6 (the PIL
backend is in fact bit-exact: the measured difference is 0.0). When torchvision is installed the real
`torchvision.transforms` pipelines are compared too.
"""

import importlib.util
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.image_utils import SizeDict

from beit3_hf.image_inputs import to_rgb_uint8
from beit3_hf.image_processing_beit3 import (
    BEiT3ImageProcessor,
    BEiT3ImageProcessorTorchvision,
    _TensorPrimitives,
    get_center_crop_box,
    get_resize_output_size,
)
from beit3_hf.processor_presets import DEFAULT_IMAGE_SIZES, TASK_PRESETS, processor_config_for

skimage_data = pytest.importorskip("skimage.data")

TOLERANCE = 1e-6
VL_MEAN = VL_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "chelsea", "coffee", "camera")
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)())


# ---------------------------------------------------------------------------------------------------------------------
# The original transforms (unilm beit3/datasets.py build_transform(is_train=False)), re-implemented
# ---------------------------------------------------------------------------------------------------------------------


def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for a uint8 PIL image."""
    array = torch.from_numpy(np.array(image, np.uint8, copy=True))
    array = array.view(image.size[1], image.size[0], len(image.getbands())).permute(2, 0, 1).contiguous()
    return array.to(torch.float32).div(255)


def normalize(tensor: torch.Tensor, mean, std) -> torch.Tensor:
    """torchvision.transforms.functional.normalize."""
    mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return tensor.clone().sub_(mean).div_(std)


def official_vl(image: Image.Image, size: int) -> torch.Tensor:
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return normalize(to_tensor(image), VL_MEAN, VL_STD)


def official_imagenet(image: Image.Image, size: int) -> torch.Tensor:
    image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.BICUBIC)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return normalize(to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [224, 480])
def test_vl_preset_matches_official_transform(name, size):
    processor = BEiT3ImageProcessor.from_preset("vl", size=size)
    image = photo(name)
    got = processor(image, return_tensors="pt").pixel_values[0]
    expected = official_vl(image, size)
    assert got.shape == (3, size, size) and got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [224, 384])
def test_imagenet_preset_matches_official_transform(name, size):
    processor = BEiT3ImageProcessor.from_preset("imagenet", size=size)
    image = photo(name)
    got = processor(image, return_tensors="pt").pixel_values[0]
    expected = official_imagenet(image, size)
    assert got.shape == (3, size, size)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_parity_is_bit_exact_for_the_pil_backend():
    for preset, official in (("vl", official_vl), ("imagenet", official_imagenet)):
        processor = BEiT3ImageProcessor.from_preset(preset, size=224)
        for name in PHOTOS:
            image = photo(name)
            assert torch.equal(processor(image, return_tensors="pt").pixel_values[0], official(image, 224))


def test_numpy_and_torch_inputs_match_pil_input():
    processor = BEiT3ImageProcessor.from_preset("imagenet", size=224)
    array = skimage_data.chelsea()  # (300, 451, 3) uint8
    expected = processor(Image.fromarray(array), return_tensors="np").pixel_values
    for image in (array, array.transpose(2, 0, 1), torch.from_numpy(array.transpose(2, 0, 1).copy()), array / 255.0):
        np.testing.assert_array_equal(processor(image, return_tensors="np").pixel_values, expected)
    grey = skimage_data.camera()
    np.testing.assert_array_equal(
        processor(grey, return_tensors="np").pixel_values,
        processor(Image.fromarray(grey), return_tensors="np").pixel_values,
    )


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (optional dependency)")
@pytest.mark.parametrize("name", PHOTOS)
def test_pil_backend_matches_real_torchvision_transforms(name):
    from torchvision import transforms

    image = photo(name).convert("RGB")
    vl = transforms.Compose(
        [transforms.Resize((480, 480), interpolation=3), transforms.ToTensor(), transforms.Normalize(VL_MEAN, VL_STD)]
    )
    imagenet = transforms.Compose(
        [
            transforms.Resize(224, interpolation=3),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    for preset, size, transform in (("vl", 480, vl), ("imagenet", 224, imagenet)):
        got = BEiT3ImageProcessor.from_preset(preset, size=size)(image, return_tensors="pt").pixel_values[0]
        assert (got - transform(image)).abs().max().item() <= TOLERANCE


@pytest.mark.skipif(BEiT3ImageProcessorTorchvision is None, reason="torchvision is not installed (optional backend)")
@pytest.mark.parametrize("preset", ["vl", "imagenet"])
def test_torchvision_backend_is_close_to_pil_backend(preset):
    pil = BEiT3ImageProcessor.from_preset(preset, size=224)
    tv = BEiT3ImageProcessorTorchvision.from_preset(preset, size=224)
    images = [photo(name) for name in PHOTOS]
    got = tv(images, return_tensors="pt").pixel_values
    expected = pil(images, return_tensors="pt").pixel_values
    assert got.shape == expected.shape == (4, 3, 224, 224)
    # Different bicubic kernels (PIL a=-0.5 vs torch a=-0.75): a few grey levels at most, tiny on average.
    assert (got - expected).abs().mean().item() < 0.02
    pairs = tv([[images[0], images[1]]], return_tensors="pt").pixel_values
    assert pairs.shape == (1, 2, 3, 224, 224)


@pytest.mark.parametrize("preset", ["vl", "imagenet"])
@pytest.mark.parametrize("size", [97, 384, 480])
def test_pil_backend_is_bit_exact_at_other_sizes(preset, size):
    official = official_vl if preset == "vl" else official_imagenet
    processor = BEiT3ImageProcessor.from_preset(preset, size=size)
    for name in ("astronaut", "coffee", "chelsea"):
        image = photo(name)
        assert torch.equal(processor(image, return_tensors="pt").pixel_values[0], official(image, size))


class TensorPipeline(_TensorPrimitives, BEiT3ImageProcessor):
    """The torchvision backend's tensor primitives with PIL's resize, so the tensor pipeline runs without torchvision
    and must then equal the PIL backend bit for bit."""

    def _resize_to(self, image, height, width, resample):
        return torch.from_numpy(BEiT3ImageProcessor._resize_to(self, image.numpy(), height, width, resample).copy())


@pytest.mark.parametrize("preset", ["vl", "imagenet"])
def test_tensor_primitives_give_the_pil_pipeline(preset):
    pil, tensors = BEiT3ImageProcessor.from_preset(preset, size=48), TensorPipeline.from_preset(preset, size=48)
    images = [photo(name) for name in PHOTOS]
    small = np.arange(10 * 7 * 3, dtype=np.uint8).reshape(10, 7, 3)
    calls = [
        ((images,), {}),
        (([images[:2], images[2:]],), {}),
        ((images,), {"data_format": "channels_last"}),
        ((images[0],), {"do_rescale": False}),
        ((images[1],), {"do_normalize": False, "image_mean": 0.3}),
        ((small,), {"do_resize": False, "do_center_crop": True, "crop_size": {"height": 13, "width": 12}}),
    ]
    for args, kwargs in calls:
        got = tensors(*args, return_tensors="pt", **kwargs).pixel_values
        expected = pil(*args, return_tensors="pt", **kwargs).pixel_values
        assert got.dtype == expected.dtype == torch.float32
        assert torch.equal(got, expected), (args, kwargs)
    unstacked = tensors(images[:2]).pixel_values
    assert all(isinstance(item, torch.Tensor) and item.shape == (3, 48, 48) for item in unstacked)


def test_center_crop_uses_torchvision_rounding():
    # Shorter side already 32, so no resize: a 32x35 image is cropped at top = round(1.5) = 2 (floor would give 1).
    rows = np.repeat(np.arange(35, dtype=np.uint8)[:, None], 32, axis=1) * 7
    image = np.stack([rows] * 3, axis=-1)
    processor = BEiT3ImageProcessor.from_preset("imagenet", size=32, do_normalize=False)
    got = processor(image, return_tensors="np").pixel_values[0, 0]
    np.testing.assert_allclose(got[:, 0] * 255, np.arange(2, 34) * 7, atol=1e-4)
    assert get_center_crop_box(35, 32, 32, 32) == ((0, 0, 0, 0), (2, 0))
    assert get_center_crop_box(33, 32, 32, 32) == ((0, 0, 0, 0), (0, 0))  # round(0.5) = 0
    # A crop larger than the image pads with zeros first, like torchvision.
    assert get_center_crop_box(10, 10, 13, 12) == ((1, 2, 1, 1), (0, 0))


def test_resize_output_size_follows_torchvision():
    assert get_resize_output_size(300, 451, SizeDict(shortest_edge=224)) == (224, int(224 * 451 / 300))
    assert get_resize_output_size(451, 300, SizeDict(shortest_edge=224)) == (int(224 * 451 / 300), 224)
    assert get_resize_output_size(10, 20, SizeDict(height=7, width=9)) == (7, 9)


# ---------------------------------------------------------------------------------------------------------------------
# Presets and serialization
# ---------------------------------------------------------------------------------------------------------------------


def test_default_is_the_vl_preset_at_224():
    assert BEiT3ImageProcessor().to_dict() == BEiT3ImageProcessor.from_preset("vl", size=224).to_dict()


@pytest.mark.parametrize("preset", ["vl", "imagenet"])
def test_preset_round_trips_through_save_pretrained(preset, tmp_path):
    processor = BEiT3ImageProcessor.from_preset(preset, size=96)
    processor.save_pretrained(tmp_path)
    reloaded = BEiT3ImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    image = photo("coffee")
    assert torch.equal(
        reloaded(image, return_tensors="pt").pixel_values, processor(image, return_tensors="pt").pixel_values
    )


def test_preset_fields():
    vl = BEiT3ImageProcessor.from_preset("vl", size=480)
    assert dict(vl.size) == {"height": 480, "width": 480} and not vl.do_center_crop
    assert tuple(vl.image_mean) == VL_MEAN and tuple(vl.image_std) == VL_STD and int(vl.resample) == 3
    imagenet = BEiT3ImageProcessor.from_preset("imagenet", size=224)
    assert dict(imagenet.size) == {"shortest_edge": 224} and imagenet.do_center_crop
    assert dict(imagenet.crop_size) == {"height": 224, "width": 224}
    assert tuple(imagenet.image_mean) == IMAGENET_MEAN and tuple(imagenet.image_std) == IMAGENET_STD
    with pytest.raises(ValueError, match="bogus"):
        BEiT3ImageProcessor.from_preset("bogus")
    with pytest.raises(ValueError, match="-3"):
        BEiT3ImageProcessor.from_preset("vl", size=-3)


def test_processor_config_for_released_tasks():
    assert set(TASK_PRESETS) == {
        "backbone",
        "image_classification",
        "vqa",
        "visual_reasoning",
        "retrieval",
        "captioning",
        "pretraining",
    }
    for task in TASK_PRESETS:
        config = processor_config_for(task, 64)
        processor = BEiT3ImageProcessor(**config)
        assert processor(photo("chelsea"), return_tensors="pt").pixel_values.shape == (1, 3, 64, 64)
        assert config["do_center_crop"] == (task == "image_classification")
    assert DEFAULT_IMAGE_SIZES["vqa"] == 480 and processor_config_for("vqa")["size"] == {"height": 480, "width": 480}
    with pytest.raises(ValueError, match="segmentation"):
        processor_config_for("segmentation", 224)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------

S = 32
VL = BEiT3ImageProcessor.from_preset("vl", size=S)
IMAGENET = BEiT3ImageProcessor.from_preset("imagenet", size=S)
PIL_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
             "I", "I;16", "I;16L", "I;16B", "F")  # fmt: skip


def pil_image(mode: str, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    if mode in ("I;16", "I;16L", "I;16B"):
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)).convert(mode)
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32))
    if mode == "La":  # PIL cannot convert into (or out of) premultiplied "La"
        return Image.frombytes("La", (width, height), rng.bytes(width * height * 2))
    base = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8))
    return base.convert(mode)


@pytest.mark.parametrize("mode", PIL_MODES)
def test_every_pil_mode_gives_rgb_pixel_values(mode):
    image = pil_image(mode, 20, 13, np.random.default_rng(0))
    for processor in (VL, IMAGENET):
        assert processor(image, return_tensors="pt").pixel_values.shape == (1, 3, S, S)


def test_high_bit_depth_images_are_rescaled_not_clipped():
    ramp16 = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    ramp8 = ((ramp16.astype(np.int64) + 128) // 257).astype(np.uint8)
    expected = VL(ramp8, return_tensors="np").pixel_values
    for image in (ramp16, Image.fromarray(ramp16), Image.fromarray(ramp16.astype(np.int32))):
        np.testing.assert_array_equal(VL(image, return_tensors="np").pixel_values, expected)
    as_float = Image.fromarray(ramp8.astype(np.float32) / 255)
    np.testing.assert_array_equal(VL(as_float, return_tensors="np").pixel_values, expected)


def test_dtypes_and_layouts_agree():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    expected = VL(rgb, return_tensors="np").pixel_values
    variants = [
        rgb.transpose(2, 0, 1),
        rgb.astype(np.int64),
        rgb.astype(np.float32) / 255,
        rgb.astype(np.float16) / np.float16(255),
        rgb.astype(np.uint16) * 257,
        torch.from_numpy(rgb.transpose(2, 0, 1).copy()),
        torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).to(torch.bfloat16).float(),
        np.concatenate([rgb, np.full((17, 23, 1), 7, np.uint8)], axis=-1),  # RGBA: alpha dropped
    ]
    for image in variants:
        np.testing.assert_array_equal(VL(image, return_tensors="np").pixel_values, expected)
    mask = rng.random((9, 9)) > 0.5
    np.testing.assert_array_equal(
        VL(mask, return_tensors="np").pixel_values, VL(mask.astype(np.uint8) * 255, return_tensors="np").pixel_values
    )
    # Explicit layout beats inference: a (3, 4, 3) array is HWC by default, CHW when told so.
    ambiguous = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    as_chw = VL(ambiguous, input_data_format="channels_first", return_tensors="np").pixel_values
    np.testing.assert_array_equal(as_chw, VL(ambiguous.transpose(1, 2, 0), return_tensors="np").pixel_values)


def test_batches_pairs_and_mixed_sizes():
    images = [photo("chelsea"), skimage_data.camera(), np.zeros((5, 300, 3), np.uint8), torch.rand(3, 40, 7)]
    for processor in (VL, IMAGENET):
        assert processor(images, return_tensors="pt").pixel_values.shape == (4, 3, S, S)
        pairs = processor([images[:2], images[2:]], return_tensors="pt").pixel_values
        assert pairs.shape == (2, 2, 3, S, S)
        assert torch.equal(pairs[1, 0], processor(images[2], return_tensors="pt").pixel_values[0])
    batch = np.zeros((5, 10, 12, 3), np.uint8)
    assert VL(batch, return_tensors="np").pixel_values.shape == (5, 3, S, S)
    plain = VL(images)  # return_tensors=None: a list of float32 arrays
    assert isinstance(plain.pixel_values, list) and plain.pixel_values[0].shape == (3, S, S)
    assert plain.pixel_values[0].dtype == np.float32
    channels_last = VL(images, data_format="channels_last", return_tensors="np").pixel_values
    assert channels_last.shape == (4, S, S, 3)


def test_paths_load(tmp_path):
    path = tmp_path / "cat.png"
    photo("chelsea").save(path)
    np.testing.assert_array_equal(
        VL(str(path), return_tensors="np").pixel_values, VL(photo("chelsea"), return_tensors="np").pixel_values
    )
    np.testing.assert_array_equal(
        VL(path, return_tensors="np").pixel_values, VL(str(path), return_tensors="np").pixel_values
    )


def test_one_pixel_image_becomes_constant():
    red = np.array([[[255, 0, 0]]], np.uint8)
    for processor in (VL, IMAGENET):
        out = processor(red, return_tensors="np").pixel_values[0]
        assert out.shape == (3, S, S)
        for channel in range(3):
            assert np.ptp(out[channel]) == 0
    np.testing.assert_allclose(VL(red, return_tensors="np").pixel_values[0, :, 0, 0], [1.0, -1.0, -1.0])


def test_huge_image_just_works():
    huge = np.zeros((4000, 6000, 3), np.uint8)  # 24 megapixels
    huge[:, 3000:] = 255
    for processor in (VL, IMAGENET):
        out = processor(huge, return_tensors="pt").pixel_values
        assert out.shape == (1, 3, S, S) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (None, "None"),
        ([], "empty list"),
        ([[]], "empty list"),
        ([[np.zeros((4, 4, 3), np.uint8)] * 2, [np.zeros((4, 4, 3), np.uint8)]], r"\[1, 2\]"),
        ([np.zeros((4, 4, 3), np.uint8), [np.zeros((4, 4, 3), np.uint8)]], "mixes"),
        (42, "int 42"),
        ({"pixels": 1}, "dict"),
        ([np.zeros((4, 4, 3), np.uint8), "not/an/image.png"], "not/an/image.png"),
        (np.zeros((6, 7, 2), np.uint8), r"shape \(6, 7, 2\)"),
        (np.zeros((6, 7, 5), np.uint8), r"shape \(6, 7, 5\)"),
        (np.zeros((5, 6, 7), np.uint8), "channel"),
        (np.zeros((0, 7, 3), np.uint8), "empty"),
        (np.zeros((7, 0), np.uint8), "empty"),
        (Image.new("RGB", (0, 5)), "empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4), np.inf), "infinite"),
        (np.full((4, 4, 3), 255.0), "255"),
        (np.full((4, 4, 3), 300, np.int32), "300"),
        (np.zeros((2, 3, 4, 5, 6), np.uint8), r"shape \(2, 3, 4, 5, 6\)"),
        (np.zeros((4, 4, 3), np.complex64), "complex"),
        (torch.zeros(2, 8, 8), r"torch.Size|\(2, 8, 8\)"),
    ],
)
def test_bad_input_raises_value_error_naming_it(images, message):
    with pytest.raises(ValueError, match=message):
        VL(images, return_tensors="pt")


def test_do_pad_is_rejected():
    with pytest.raises(ValueError, match="do_pad"):
        VL(np.zeros((4, 4, 3), np.uint8), do_pad=True)


def test_unstackable_outputs_and_non_rgb_input_raise():
    tall, wide = np.zeros((8, 4, 3), np.uint8), np.zeros((4, 8, 3), np.uint8)
    for processor in (VL, TensorPipeline.from_preset("vl", size=S)):
        with pytest.raises(ValueError, match=r"different output shapes \[\(3, 4, 8\), \(3, 8, 4\)\]"):
            processor([tall, wide], do_resize=False, return_tensors="pt")
        with pytest.raises(ValueError, match="one example"):
            processor([[tall, wide]], do_resize=False)
        assert [item.shape for item in processor([tall, wide], do_resize=False).pixel_values] == [(3, 8, 4), (3, 4, 8)]
        with pytest.raises(ValueError, match="do_convert_rgb"):
            processor(Image.new("L", (4, 4)), do_convert_rgb=False)
        assert processor(Image.new("RGB", (4, 4)), do_convert_rgb=False).pixel_values[0].shape == (3, S, S)
        with pytest.raises(ValueError, match="int 42"):
            processor([tall, 42])
        with pytest.raises(ValueError, match=r"shape \(1, 4, 4, 3\)"):
            processor([[tall, np.zeros((1, 4, 4, 3), np.uint8)]])


# ---------------------------------------------------------------------------------------------------------------------
# Property test: anything image-like either works (right shape) or raises a documented ValueError
# ---------------------------------------------------------------------------------------------------------------------

DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool")


def _fits(dim: int) -> bool:
    return dim in (1, 3, 4)


@settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.sampled_from(["pil", "numpy", "torch"]),
    mode=st.sampled_from(PIL_MODES),
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["HW", "HWC", "CHW"]),
    channels=st.sampled_from([1, 2, 3, 4, 5]),
    corruption=st.sampled_from([None, None, "nan", "out_of_range"]),
    preset=st.sampled_from(["vl", "imagenet"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_image_works_or_raises_documented_error(
    source, mode, height, width, dtype, layout, channels, corruption, preset, seed
):
    rng = np.random.default_rng(seed)
    processor = VL if preset == "vl" else IMAGENET
    expect_error = None
    if source == "pil":
        image = pil_image(mode, width, height, rng)
    else:
        shape = {"HW": (height, width), "HWC": (height, width, channels), "CHW": (channels, height, width)}[layout]
        if dtype == "bool":
            array = rng.random(shape) > 0.5
        elif dtype.startswith("float"):
            array = rng.random(shape).astype(dtype)
        elif dtype == "uint16":
            array = rng.integers(0, 65536, shape).astype(dtype)
        else:
            array = rng.integers(0, 256, shape).astype(dtype)
        if corruption == "nan" and dtype.startswith("float"):
            array.flat[rng.integers(array.size)] = np.nan
            expect_error = "NaN"
        elif corruption == "out_of_range" and dtype in ("int32", "int64", "float16", "float32", "float64"):
            array.flat[rng.integers(array.size)] = 300 if dtype.startswith("int") else 2.0
            expect_error = "values in"
        if len(shape) == 3:
            first, last = _fits(shape[0]), _fits(shape[-1])
            if not (first or last):
                expect_error = "channel"  # checked before the pixel values
        image = torch.from_numpy(array) if source == "torch" else array

    if expect_error is None:
        pixel_values = processor(image, return_tensors="pt").pixel_values
        assert pixel_values.shape == (1, 3, S, S) and pixel_values.dtype == torch.float32
        assert torch.isfinite(pixel_values).all()
    else:
        with pytest.raises(ValueError, match=expect_error):
            processor(image, return_tensors="pt")


def test_to_rgb_uint8():
    rgb = to_rgb_uint8(Image.new("P", (3, 2)))
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    with pytest.raises(ValueError, match="BytesIO"):
        to_rgb_uint8(io.BytesIO(b"not an image"))
