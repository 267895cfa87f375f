"""Throughput of the BEiT-3 image processors on real photos (scikit-image sample images).

Usage:
    python benchmarks/bench_image_processor.py [--repeats 5] [--batch-size 16]

Prints images/s for each available backend (the PIL backend always; the torchvision backend only when torchvision
is installed) and each preset at the released resolutions. Not a test. On a machine whose cores are busy, torch's
intra-op threads contend with each other; `--torch-threads 1` then gives the torchvision backend's real speed.
"""

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from beit3_hf.image_processing_beit3 import BEiT3ImageProcessor, BEiT3ImageProcessorTorchvision  # noqa: E402


def load_photos() -> list:
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "camera", "rocket", "immunohistochemistry")
    photos = []
    for name in names:
        try:
            photos.append(Image.fromarray(getattr(data, name)()))
        except Exception as error:  # some sample images may need an optional download
            print(f"skipping skimage.data.{name}: {error}")
    return photos


def bench(processor, images, repeats: int) -> float:
    processor(images[:2], return_tensors="pt")  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        processor(images, return_tensors="pt")
    return repeats * len(images) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads for the torchvision backend (on a busy machine, 1 avoids thread contention)",
    )
    args = parser.parse_args()
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)

    photos = load_photos()
    images = [photos[i % len(photos)] for i in range(args.batch_size)]
    sizes = sorted({im.size for im in photos})
    import torch

    print(
        f"{len(photos)} photos, sizes {sizes}, batch of {len(images)}, {args.repeats} repeats, "
        f"{torch.get_num_threads()} torch threads"
    )

    backends = {"pil": BEiT3ImageProcessor}
    if BEiT3ImageProcessorTorchvision is None:
        print("torchvision backend: skipped (torchvision is not installed)")
    else:
        backends["torchvision"] = BEiT3ImageProcessorTorchvision

    settings = [("vl", 224), ("vl", 384), ("vl", 480), ("imagenet", 224)]
    for backend, cls in backends.items():
        for preset, size in settings:
            processor = cls.from_preset(preset, size=size)
            rate = bench(processor, images, args.repeats)
            print(f"{backend:12s} {preset:9s} S={size:<4d} {rate:8.1f} images/s")
    # The same photos as uint8 arrays (skips the PIL → array conversion cost of the input).
    arrays = [np.asarray(im) for im in images]
    rate = bench(BEiT3ImageProcessor.from_preset("vl", size=224), arrays, args.repeats)
    print(f"{'pil (numpy)':12s} {'vl':9s} S=224  {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
