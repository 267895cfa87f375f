"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, as a `datasets.DatasetDict`, fully offline.

`apt-get install -y dataset-fashion-mnist` puts the four IDX files of Zalando's release (MIT licence) in
`/usr/share/datasets/fashion-mnist/`. [`load_fashion_mnist`] reads them with numpy into `train` (60,000) and `test`
(10,000) splits with an `image` column (28x28 PIL images, mode "L") and a `label` column
(`ClassLabel(names=FASHION_MNIST_LABELS)`, the official id order).

`python -m beit3_hf.data.fashion_mnist --output-dir data/fashion_mnist` exports the same data as an `imagefolder`
(`<split>/<class>/<index>.png`), the layout any user image-classification dataset has, so that the classification
example runs on it exactly as it would on a user's folder. Note that `imagefolder` numbers the classes in the
alphabetical order of the folder names (and only knows the classes that have images), not in the official order;
read `features["label"].names` for the mapping.
"""

from __future__ import annotations

import argparse
import logging as std_logging
import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers.utils import logging


logger = logging.get_logger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {"train": "train", "test": "t10k"}  # split -> file prefix
_INSTALL_HINT = "Install it with `apt-get update && apt-get install -y dataset-fashion-mnist`."
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST format; gzipped when the name ends in `.gz`) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: bad magic number {data[:4].hex()}.")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path} holds {len(data)} bytes but its header {shape} implies {expected}.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_fashion_mnist_split(split: str, data_dir: str | os.PathLike = DEFAULT_FASHION_MNIST_DIR):
    """`(images, labels)` of one split (`"train"` or `"test"`): uint8 arrays of shape (N, 28, 28) and (N,)."""
    if split not in _FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}; expected one of {tuple(_FILES)}.")
    paths = [Path(data_dir) / f"{_FILES[split]}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {path} not found. {_INSTALL_HINT}")
    images, labels = (read_idx(path) for path in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split} files in {data_dir} do not match: images {images.shape}, labels {labels.shape}."
        )
    if labels.max(initial=0) >= len(FASHION_MNIST_LABELS):
        raise ValueError(f"Fashion-MNIST {split} labels in {data_dir} go up to {labels.max()}, expected at most 9.")
    return images, labels


def load_fashion_mnist(
    data_dir: str | os.PathLike = DEFAULT_FASHION_MNIST_DIR,
    max_train: int | None = None,
    max_test: int | None = None,
):
    """
    Fashion-MNIST as a `datasets.DatasetDict` with `train` and `test` splits and columns `image` (PIL, mode "L",
    28x28) and `label` (`ClassLabel(names=FASHION_MNIST_LABELS)`).

    `max_train` / `max_test` keep the first examples of a split (the release is already shuffled, and its first
    thousands are close to class-balanced). Raises `FileNotFoundError` naming the missing file and the `apt-get`
    command when the Debian package is not installed.
    """
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_LABELS))}
    )
    splits = {}
    for split, limit in (("train", max_train), ("test", max_test)):
        if limit is not None and limit < 1:
            raise ValueError(f"`max_{split}` must be a positive number of examples or None, got {limit}.")
        images, labels = read_fashion_mnist_split(split, data_dir)
        images, labels = images[:limit], labels[:limit]
        # Each image is stored as a binary PGM (a 15-byte header + the raw pixels), which PIL decodes to a mode-"L"
        # image on access: 50x faster to build than letting the Image feature encode PNGs, and lossless all the same.
        height, width = images.shape[1:]
        header = f"P5 {width} {height} 255\n".encode()
        splits[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": header + image.tobytes(), "path": None} for image in images], "label": labels},
            features=features,
            split=split,
        )
    return datasets.DatasetDict(splits)


def _folder_name(label: str) -> str:
    return label.replace("/", "_").replace(" ", "_")


def export_imagefolder(
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike = DEFAULT_FASHION_MNIST_DIR,
    max_train: int | None = None,
    max_test: int | None = None,
) -> dict[str, int]:
    """
    Writes Fashion-MNIST as `<output_dir>/<split>/<class>/<index>.png` (class folders such as `T-shirt_top`), which
    `datasets.load_dataset("imagefolder", data_dir=output_dir)` reads back. Existing split folders are replaced.
    Returns the number of images per split.
    """
    from PIL import Image

    output_dir = Path(output_dir)
    sizes = {}
    for split, limit in (("train", max_train), ("test", max_test)):
        images, labels = read_fashion_mnist_split(split, data_dir)
        images, labels = images[:limit], labels[:limit]
        split_dir = output_dir / split
        if split_dir.exists():
            shutil.rmtree(split_dir)
        for label in np.unique(labels):
            (split_dir / _folder_name(FASHION_MNIST_LABELS[label])).mkdir(parents=True)
        for index, (image, label) in enumerate(
            zip(logging.tqdm(images, desc=f"Writing Fashion-MNIST {split}", unit="image", mininterval=1.0), labels)
        ):
            path = split_dir / _folder_name(FASHION_MNIST_LABELS[label]) / f"{index:05d}.png"
            Image.fromarray(image).save(path)  # uint8 (28, 28) -> mode "L"
        sizes[split] = len(images)
    logger.info(f"Wrote Fashion-MNIST as an imagefolder to {output_dir}: {sizes}")
    return sizes


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description="Export Fashion-MNIST (Debian package) as an imagefolder.")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=DEFAULT_FASHION_MNIST_DIR, help="where the IDX .gz files are")
    parser.add_argument("--max-train", type=int, default=None, help="keep only the first N training images")
    parser.add_argument("--max-test", type=int, default=None, help="keep only the first N test images")
    args = parser.parse_args(argv)
    std_logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=std_logging.INFO)
    return export_imagefolder(args.output_dir, args.data_dir, args.max_train, args.max_test)


if __name__ == "__main__":
    main()
