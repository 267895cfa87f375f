"""Dense-prediction splits of the shapes world: semantic segmentation and object detection, for the same scenes.

[`generate_dense_shapes_dataset`] (or `python -m beit3_hf.data.shapes_dense --output-dir data/shapes`) draws the scenes
of [`shapes.split_scenes`] (same seed and count: the same images, with the same `image_id`s, as the captioning, VQA
and retrieval splits) and writes two `imagefolder` tasks that `datasets.load_dataset("imagefolder", ...)` reads
offline ([`load_dense_shapes`]):

```
<output_dir>/{segmentation,detection}/id2label.json    class names by id (the example scripts read them)
<output_dir>/segmentation/{train,test}/metadata.jsonl   file_name, label_file_name, image_id
                                       images/*.png     the scene (RGB)
                                       labels/*.png     per-pixel class ("L"): 0 background, 1-12 "colour shape"
<output_dir>/detection/{train,test}/metadata.jsonl      file_name, image_id, width, height,
                                                        objects = {id, bbox, category, area} (COCO boxes)
                                    annotations.json    the same boxes as a COCO detection file (pycocotools)
                                    images/*.png
```

Classes: [`SEGMENTATION_LABELS`] = [`shapes.LABEL_NAMES`] (background + the 12 colour x shape kinds) and
[`DETECTION_CATEGORIES`] (the 12 kinds, category id = `SEGMENTATION_LABELS` index - 1). Boxes are COCO
`[x, y, width, height]` in pixels, the tight extent of the object's pixels in the label map (objects never touch:
each stays inside its grid cell), so a box, its label-map pixels and the rendered pixels agree exactly.
"""

from __future__ import annotations

import argparse
import json
import logging as std_logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers.utils import logging

from .shapes import LABEL_NAMES, POSITIONS, SPLITS, Scene, _write_images, _write_jsonl, render_label_map, split_scenes

logger = logging.get_logger(__name__)

DENSE_TASKS = ("segmentation", "detection")
SEGMENTATION_LABELS = LABEL_NAMES
"""Per-pixel classes of the segmentation split: 0 = background, then "red circle", "red square", ..."""
DETECTION_CATEGORIES = LABEL_NAMES[1:]
"""Detection categories (COCO `category_id` = index here = segmentation label - 1)."""


def scene_objects(scene: Scene, label_map: np.ndarray) -> list[dict]:
    """One dict per object of `scene`: `category` (id in [`DETECTION_CATEGORIES`]), COCO `bbox` and `area` (pixels
    of the object in `label_map`, the scene's [`render_label_map`] as an array)."""
    half_height, half_width = label_map.shape[0] / 2, label_map.shape[1] / 2
    objects = []
    for obj in scene.objects:
        label = LABEL_NAMES.index(f"{obj.color} {obj.shape}")
        row, col = divmod(POSITIONS.index(obj.position), 2)
        top, left = round(row * half_height), round(col * half_width)
        cell = label_map[top : round((row + 1) * half_height), left : round((col + 1) * half_width)]
        ys, xs = np.nonzero(cell == label)
        if len(ys) == 0:  # too small to cover a pixel at this resolution
            continue
        x0, y0 = int(xs.min()) + left, int(ys.min()) + top
        width, height = int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1
        objects.append(dict(category=label - 1, bbox=[x0, y0, width, height], area=int(len(ys))))
    return objects


def coco_annotations(rows: Sequence[dict], category_names: Sequence[str] = DETECTION_CATEGORIES) -> dict:
    """A COCO detection file (`images`, `annotations`, `categories`) from detection rows (`image_id`, `width`,
    `height`, `objects` with `bbox`, `category`, `area` lists: this split's layout and the Hub's cppe-5). Box ids
    are 1, 2, ... in row order (pycocotools takes a matched box id of 0 for "unmatched")."""
    images, annotations = [], []
    for row in rows:
        images.append(
            dict(id=row["image_id"], file_name=row.get("file_name", ""), width=row["width"], height=row["height"])
        )
        objects = row["objects"]
        for bbox, category, area in zip(objects["bbox"], objects["category"], objects["area"]):
            annotations.append(
                dict(id=len(annotations) + 1, image_id=row["image_id"], category_id=category, bbox=bbox, area=area,
                     iscrowd=0)
            )
    categories = [dict(id=index, name=name) for index, name in enumerate(category_names)]
    return dict(images=images, annotations=annotations, categories=categories)


def generate_dense_shapes_dataset(
    output_dir: str | os.PathLike, num_train: int = 20000, num_test: int = 1000, seed: int = 0, image_size: int = 64
) -> dict[str, dict[str, int]]:
    """Writes the segmentation and detection tasks (module docstring) under `output_dir`, replacing existing ones;
    returns the number of rows (images) per task and split."""
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    output_dir = Path(output_dir)
    sizes: dict[str, dict[str, int]] = {task: {} for task in DENSE_TASKS}
    for split, num_scenes in (("train", num_train), ("test", num_test)):
        scenes = split_scenes(split, num_scenes, seed)
        split_dirs = {task: output_dir / task / split for task in DENSE_TASKS}
        for split_dir in split_dirs.values():
            if split_dir.exists():
                shutil.rmtree(split_dir)
        file_names = _write_images(
            scenes, list(split_dirs.values()), image_size, desc=f"Drawing {split} scenes in {output_dir}"
        )
        (split_dirs["segmentation"] / "labels").mkdir(parents=True)
        segmentation_rows, detection_rows = [], []
        next_box_id = 1  # COCO ids start at 1 (see `coco_annotations`)
        for image_id, (scene, file_name) in enumerate(zip(scenes, file_names)):
            label_map = render_label_map(scene, image_size)
            label_file = f"labels/{image_id:06d}.png"
            label_map.save(split_dirs["segmentation"] / label_file)
            segmentation_rows.append(dict(file_name=file_name, label_file_name=label_file, image_id=image_id))
            objects = scene_objects(scene, np.asarray(label_map))
            ids = list(range(next_box_id, next_box_id + len(objects)))
            next_box_id += len(objects)
            detection_rows.append(
                dict(
                    file_name=file_name,
                    image_id=image_id,
                    width=image_size,
                    height=image_size,
                    objects=dict(
                        id=ids,
                        bbox=[o["bbox"] for o in objects],
                        category=[o["category"] for o in objects],
                        area=[o["area"] for o in objects],
                    ),
                )
            )
        _write_jsonl(split_dirs["segmentation"] / "metadata.jsonl", segmentation_rows)
        _write_jsonl(split_dirs["detection"] / "metadata.jsonl", detection_rows)
        with open(split_dirs["detection"] / "annotations.json", "w", encoding="utf-8") as f:
            json.dump(coco_annotations(detection_rows), f)
        sizes["segmentation"][split] = len(segmentation_rows)
        sizes["detection"][split] = len(detection_rows)
    for task, names in (("segmentation", SEGMENTATION_LABELS), ("detection", DETECTION_CATEGORIES)):
        with open(output_dir / task / "id2label.json", "w", encoding="utf-8") as f:
            json.dump({str(index): name for index, name in enumerate(names)}, f, indent=1)
    logger.info(f"Wrote the shapes segmentation and detection datasets to {output_dir}: {sizes}")
    return sizes


def load_dense_shapes(task: str, data_dir: str | os.PathLike, **load_dataset_kwargs):
    """
    One task written by [`generate_dense_shapes_dataset`] as a `datasets.DatasetDict` (`train`, `test`):

    * `segmentation`: `image` (RGB), `label` (the class map, an "L" image), `image_id`
    * `detection`: `image`, `image_id`, `width`, `height`, `objects` (`id`, `bbox`, `category`, `area` lists)

    Extra keyword arguments (e.g. `cache_dir`) go to `datasets.load_dataset`.
    """
    import datasets

    if task not in DENSE_TASKS:
        raise ValueError(f"Unknown dense shapes task {task!r}; expected one of {DENSE_TASKS}.")
    metadata_files = {split: Path(data_dir) / task / split / "metadata.jsonl" for split in SPLITS}
    for path in metadata_files.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"No shapes {task} data: {path} is missing. Generate it with `python -m beit3_hf.data.shapes_dense "
                f"--output-dir {data_dir}`."
            )
    return datasets.load_dataset(
        "imagefolder", data_files={split: str(path) for split, path in metadata_files.items()}, **load_dataset_kwargs
    )


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where to write segmentation/ and detection/")
    parser.add_argument("--num-train", type=int, default=20000, help="training scenes (images)")
    parser.add_argument("--num-test", type=int, default=1000, help="test scenes (images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="side of the square PNG images")
    args = parser.parse_args(argv)
    std_logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=std_logging.INFO)
    return generate_dense_shapes_dataset(
        args.output_dir, num_train=args.num_train, num_test=args.num_test, seed=args.seed, image_size=args.image_size
    )


if __name__ == "__main__":
    main()
