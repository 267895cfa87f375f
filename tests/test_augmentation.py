"""beit3_hf.augmentation: unilm's vision-language training transform, timm's ImageNet one, mixup / cutmix / random
erasing and the soft-target and smoothed captioning losses."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from beit3_hf import augmentation as A

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def random_image(height=48, width=64, seed=0, low=0, high=256):
    return Image.fromarray(np.random.RandomState(seed).randint(low, high, (height, width, 3), dtype=np.uint8))


def gradient_image(height=40, width=40):
    """Left dark, right bright: a horizontal flip is visible in the column means."""
    row = np.linspace(0, 255, width).astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(row[None, :, None], height, 0), 3, 2))


@pytest.mark.parametrize("kind", ["crop", "randaug", "imagenet"])
def test_train_transform_shape_mode_and_determinism(kind):
    transform = A.build_train_transform(kind, 32, backend="pil")
    image = random_image().convert("L")  # grey-scale input becomes RGB
    torch.manual_seed(0)
    first = [np.asarray(transform(image, ["a cat"])) for _ in range(4)]
    torch.manual_seed(0)
    second = [np.asarray(transform(image, ["a cat"])) for _ in range(4)]
    assert all(a.shape == (32, 32, 3) and a.dtype == np.uint8 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))  # same seed, same images
    assert not all(np.array_equal(first[0], a) for a in first[1:])  # but random from call to call
    generator = torch.Generator().manual_seed(3)  # an explicit generator works too
    seeded = A.build_train_transform(kind, 32, generator=generator, backend="pil")
    assert np.asarray(seeded(image)).shape == (32, 32, 3)


def test_build_train_transform_none_and_errors():
    assert A.build_train_transform("none", 32) is None
    with pytest.raises(ValueError, match="'blur'"):
        A.build_train_transform("blur", 32)
    with pytest.raises(ValueError, match="'sideways'"):
        A.build_train_transform("crop", 32, flip="sideways")
    with pytest.raises(ValueError, match="-1"):
        A.RandomResizedCrop(-1)
    with pytest.raises(ValueError, match="PIL"):
        A.build_train_transform("crop", 32)(np.zeros((4, 4, 3)))


def test_random_resized_crop_params_within_scale_and_ratio():
    crop = A.RandomResizedCrop(16, scale=(0.5, 1.0), backend="pil")
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop.get_params(64, 48, rng)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.5 * 64 * 48 * 0.9 <= h * w <= 64 * 48  # the area scale (rounding aside)
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # an image too elongated for every attempt: the central crop at the nearest allowed ratio
    assert crop.get_params(400, 10, rng) == (0, (400 - 13) // 2, 10, 13)


def test_mentions_left_or_right():
    assert A.mentions_left_or_right("The dog on the LEFT")
    assert A.mentions_left_or_right(["a cat", "the rightmost ball"])
    assert A.mentions_left_or_right("the left-hand side")
    assert not A.mentions_left_or_right("a bright red leftover", "copyright", None)


@pytest.mark.parametrize("flip, texts, may_flip", [
    ("never", ["a cat"], False),
    ("auto", ["the cat on the left"], False),
    ("auto", ["a cat"], True),
    ("always", ["the cat on the left"], True),
])
def test_flip_policy(flip, texts, may_flip):
    transform = A.build_train_transform("crop", 40, flip=flip, backend="pil")
    transform.crop = A.RandomResizedCrop(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), backend="pil")  # crop = identity
    image = gradient_image()
    torch.manual_seed(0)
    flipped = [np.asarray(transform(image, texts)).mean(axis=(0, 2))[0] > 128 for _ in range(40)]
    assert any(flipped) == may_flip
    if may_flip:
        assert not all(flipped)  # with probability 1/2


def test_dataset_transform_flips_pairs_together_and_keeps_columns():
    transform = A.build_train_transform("crop", 40, backend="pil")
    transform.crop = A.RandomResizedCrop(40, scale=(1.0, 1.0), ratio=(1.0, 1.0), backend="pil")
    fn = transform.dataset_transform(["left", "right"], ["text"])
    batch = {"left": [gradient_image()] * 30, "right": [gradient_image()] * 30, "text": ["two cats"] * 29 + ["left"],
             "label": list(range(30))}
    torch.manual_seed(0)
    out = fn(batch)
    assert out["label"] == batch["label"] and out["text"] == batch["text"]
    left = [np.asarray(image).mean(axis=(0, 2))[0] > 128 for image in out["left"]]
    right = [np.asarray(image).mean(axis=(0, 2))[0] > 128 for image in out["right"]]
    assert left == right and any(left) and not all(left)
    assert not left[-1]  # the text names a side: never flipped
    with pytest.raises(ValueError, match="caption"):
        transform.dataset_transform(["left"], ["caption"])(batch)


def test_set_transform_on_a_dataset():
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"image": [random_image(seed=i) for i in range(3)], "text": ["a", "b", "c"]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "text": datasets.Value("string")}))
    data.set_transform(A.build_train_transform("randaug", 24, backend="pil").dataset_transform(["image"], ["text"]))
    example = data[1]
    assert example["image"].size == (24, 24) and example["text"] == "b"


@pytest.mark.parametrize("name", A.UNILM_VL_OPS)
def test_every_unilm_op_runs(name):
    image = random_image(low=40, high=200)  # low contrast: AutoContrast changes it
    out = A._unilm_op(name, image, np.random.default_rng(0), 7)
    assert out.size == image.size and out.mode == "RGB"
    if name != "Identity":
        assert not np.array_equal(np.asarray(out), np.asarray(image))


def test_unilm_ops_match_their_references():
    image = random_image(seed=1, low=30, high=220)
    array = np.asarray(image)
    # unilm's autocontrast / equalize are documented as PIL's, which are independent implementations
    np.testing.assert_array_equal(A.unilm_autocontrast(array), np.asarray(ImageOps.autocontrast(image)))
    np.testing.assert_array_equal(A.unilm_equalize(array), np.asarray(ImageOps.equalize(image)))
    np.testing.assert_array_equal(A.unilm_brightness(array, 1.36), np.clip(array * np.float32(1.36), 0, 255).astype(
        np.uint8))
    # sharpness: PIL's, except on the border (unilm's note), up to rounding
    ours = A.unilm_sharpness(array, 1.36).astype(int)[1:-1, 1:-1]
    pil = np.asarray(ImageEnhance.Sharpness(image).enhance(1.36)).astype(int)[1:-1, 1:-1]
    assert np.abs(ours - pil).max() <= 1
    # an integer translation of the OpenCV matrix is an exact shift (content moves left by the offset), grey fill
    shifted = np.asarray(A._warp_affine(image, np.array([[1, 0, -7], [0, 1, 0]], float), (128, 128, 128)))
    np.testing.assert_array_equal(shifted[:, :-7], array[:, 7:])
    assert (shifted[:, -7:] == 128).all()


def test_unilm_randaugment_applies_each_op_with_probability_half():
    calls = []
    augment = A.UnilmRandAugment(num_ops=2, magnitude=7, ops=("Brightness",))
    rng = np.random.default_rng(0)
    image = random_image()
    for _ in range(200):
        calls.append(np.array_equal(np.asarray(augment(image, rng)), np.asarray(image)))
    assert 0.15 < np.mean(calls) < 0.35  # untouched only when both draws skip: 1/4
    with pytest.raises(ValueError, match="Blur"):
        A.UnilmRandAugment(ops=("Blur",))


@pytest.mark.parametrize("name", sorted(set(A.TIMM_INCREASING_OPS + A.TIMM_OPS)))
def test_every_timm_op_runs(name):
    image = random_image(low=40, high=200)
    out = A.TimmRandAugment(backend="pil").apply(name, image, 7, np.random.default_rng(0))
    assert out.size == image.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize("level", [0.0, 10.0])
def test_timm_ops_at_the_extreme_magnitudes(level):
    image = random_image(low=40, high=200)
    augment = A.TimmRandAugment(backend="pil")
    for name in sorted(set(A.TIMM_INCREASING_OPS + A.TIMM_OPS)):
        assert augment.apply(name, image, level, np.random.default_rng(0)).size == image.size, name
    # PosterizeIncreasing at 10 keeps 0 bits: black
    assert np.asarray(augment.apply("PosterizeIncreasing", image, 10.0, np.random.default_rng(0))).max() == 0


def test_timm_randaugment_config():
    augment = A.TimmRandAugment("rand-m9-mstd0.5-inc1", backend="pil")
    assert (augment.magnitude, augment.std, augment.num_ops, augment.op_names) == (9, 0.5, 2, A.TIMM_INCREASING_OPS)
    assert A.TimmRandAugment("rand-m7-n3").op_names == A.TIMM_OPS
    for bad in ("auto-m9", "rand-w0", "rand-mX"):
        with pytest.raises(ValueError, match="config"):
            A.TimmRandAugment(bad)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not installed (it would pull a CUDA torch here)")
def test_torchvision_backend_matches_pil():
    image = random_image(seed=2)
    tv, pil = A._TorchvisionOps(), A._PilOps
    pairs = [
        (tv.resized_crop(image, 3, 5, 30, 40, 24), pil.resized_crop(image, 3, 5, 30, 40, 24)),
        (tv.hflip(image), pil.hflip(image)),
        (tv.rotate(image, 17.0, (124, 116, 104)), pil.rotate(image, 17.0, (124, 116, 104))),
        (tv.posterize(image, 2), pil.posterize(image, 2)),
        (tv.solarize(image, 100), pil.solarize(image, 100)),
    ]
    for name in ("autocontrast", "equalize", "invert"):
        pairs.append((getattr(tv, name)(image), getattr(pil, name)(image)))
    for name in ("color", "contrast", "brightness", "sharpness"):
        pairs.append((getattr(tv, name)(image, 1.5), getattr(pil, name)(image, 1.5)))
    for ours, theirs in pairs:
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    torch.manual_seed(0)
    a = np.asarray(A.build_train_transform("imagenet", 32, backend="torchvision")(image))
    torch.manual_seed(0)
    b = np.asarray(A.build_train_transform("imagenet", 32, backend="pil")(image))
    np.testing.assert_array_equal(a, b)


def test_batch_augment_soft_targets_sum_to_one_and_mix_images():
    torch.manual_seed(0)
    batch = {"pixel_values": torch.randn(6, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 3, 4, 0])}
    augment = A.ClassificationBatchAugment(num_classes=5, random_erasing=0.0)
    seen_cutmix = seen_mixup = False
    for _ in range(20):
        out = augment(batch)
        labels = out["labels"]
        assert labels.shape == (6, 5) and labels.dtype == torch.float32
        torch.testing.assert_close(labels.sum(-1), torch.ones(6))
        assert (labels >= 0.1 / 5 - 1e-6).all()  # smoothing keeps every class above eps / C
        changed = (out["pixel_values"] != batch["pixel_values"]).float().mean().item()
        seen_cutmix |= 0 < changed < 0.999  # a pasted box
        seen_mixup |= changed > 0.999  # every pixel blended
    assert seen_cutmix and seen_mixup
    assert torch.equal(batch["labels"], torch.tensor([0, 1, 2, 3, 4, 0]))  # the input is not modified
    off = A.ClassificationBatchAugment(5, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0, random_erasing=0)
    out = off(batch)
    assert torch.equal(out["pixel_values"], batch["pixel_values"])
    assert torch.equal(out["labels"], F.one_hot(batch["labels"], 5).float())
    with pytest.raises(ValueError, match="class ids"):
        augment({"pixel_values": batch["pixel_values"], "labels": out["labels"]})
    with pytest.raises(ValueError, match="1.5"):
        A.ClassificationBatchAugment(5, prob=1.5)


def test_batch_augment_is_deterministic_under_a_seed():
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 3])}
    augment = A.ClassificationBatchAugment(num_classes=4)
    torch.manual_seed(1)
    first = augment(batch)
    torch.manual_seed(1)
    second = augment(batch)
    assert torch.equal(first["pixel_values"], second["pixel_values"]) and torch.equal(first["labels"], second["labels"])


def test_random_erasing():
    pixels = torch.zeros(8, 3, 20, 20)
    erased = A.random_erasing(pixels, 1.0, np.random.default_rng(0))
    fractions = (erased != 0).float().mean(dim=(1, 2, 3))
    assert ((fractions > 0.015) & (fractions < 0.34)).all() and torch.equal(pixels, torch.zeros(8, 3, 20, 20))
    assert torch.equal(A.random_erasing(pixels, 0.0, np.random.default_rng(0)), pixels)


def test_soft_target_cross_entropy():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 3, 1, 4])
    torch.testing.assert_close(A.soft_target_cross_entropy(logits, F.one_hot(labels, 5).float()),
                               F.cross_entropy(logits, labels))
    torch.testing.assert_close(A.soft_target_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="shape"):
        A.soft_target_cross_entropy(logits, torch.ones(4, 3) / 3)


def test_captioning_smoothed_loss_is_unilms():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, -100, 7, -100], [-100, -100, 1, -100, -100]])
    plain = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(A.captioning_smoothed_loss(logits, labels, 0.0), plain)
    # unilm: one_hot * (1 - eps) + (1 - one_hot) * eps / (n - 1), KLDiv summed over classes, averaged
    eps, selected = 0.1, labels.ne(-100)
    one_hot = F.one_hot(labels[selected], 11).float()
    target = one_hot * (1 - eps) + (1 - one_hot) * eps / 10
    expected = (target * (target.log() - F.log_softmax(logits[selected], -1))).sum(-1).mean()
    torch.testing.assert_close(A.captioning_smoothed_loss(logits, labels, eps), expected)
    assert A.captioning_smoothed_loss(logits, torch.full((2, 5), -100), eps).item() == 0.0


def test_captioning_drop_worst_keeps_the_smallest_token_losses_as_unilm():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 8, 11), torch.randint(0, 11, (3, 8))
    labels[0, :3] = -100  # 21 labelled tokens: unilm keeps int(21 * 0.8) = 16
    eps, selected = 0.1, labels.ne(-100)
    one_hot = F.one_hot(labels[selected], 11).float()
    target = one_hot * (1 - eps) + (1 - one_hot) * eps / 10
    per_token = (target * (target.log() - F.log_softmax(logits[selected], -1))).sum(-1)
    expected = per_token.sort().values[:16].mean()
    torch.testing.assert_close(A.captioning_smoothed_loss(logits, labels, eps, drop_worst_ratio=0.2), expected)
    assert A.captioning_smoothed_loss(logits, labels, eps, 0.2) < A.captioning_smoothed_loss(logits, labels, eps)
    with pytest.raises(ValueError, match="drop_worst_ratio"):
        A.captioning_smoothed_loss(logits, labels, eps, drop_worst_ratio=1.0)
