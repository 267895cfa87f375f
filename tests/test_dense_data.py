"""The shapes world's segmentation and detection splits, checked against the rendered pixels."""

import json

import numpy as np
import pytest
from PIL import Image

from beit3_hf.data import shapes, shapes_dense

@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense")
    sizes = shapes_dense.generate_dense_shapes_dataset(path, num_train=12, num_test=4, image_size=48)
    assert sizes == {"segmentation": {"train": 12, "test": 4}, "detection": {"train": 12, "test": 4}}
    return path


def color_of(pixels: np.ndarray) -> str:
    r, g, b = pixels.astype(int).mean(axis=0)
    return "yellow" if r > 150 and g > 150 else ("red", "green", "blue")[int(np.argmax([r, g, b]))]


def test_segmentation_masks_are_the_drawn_pixels(dense_dir):
    dataset = shapes_dense.load_dense_shapes("segmentation", dense_dir)
    scenes = shapes.split_scenes("train", 12)
    assert dataset["train"]["image_id"] == list(range(12))
    for row, scene in zip(dataset["train"], scenes):
        image = np.asarray(row["image"].convert("RGB"))
        labels = np.asarray(row["label"])
        assert row["label"].mode == "L" and labels.shape == image.shape[:2] == (48, 48)
        grey = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])
        np.testing.assert_array_equal(labels == 0, grey)  # every object pixel is labelled, nothing else
        for value in np.unique(labels[labels > 0]):
            color, shape = shapes_dense.SEGMENTATION_LABELS[value].split()
            assert color_of(image[labels == value]) == color
            assert scene.has(shape=shape, color=color)
        assert len(np.unique(labels[labels > 0])) == len({(o.color, o.shape) for o in scene.objects})


def test_detection_boxes_are_the_tight_extent_of_each_object(dense_dir):
    dataset = shapes_dense.load_dense_shapes("detection", dense_dir)
    coco = json.loads((dense_dir / "detection" / "test" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(shapes.LABEL_NAMES[1:])
    id2label = json.loads((dense_dir / "detection" / "id2label.json").read_text())
    assert id2label == {str(c["id"]): c["name"] for c in coco["categories"]}
    assert json.loads((dense_dir / "segmentation" / "id2label.json").read_text())["0"] == "background"
    for split, num in (("train", 12), ("test", 4)):
        for row, scene in zip(dataset[split], shapes.split_scenes(split, num)):
            image = np.asarray(row["image"].convert("RGB"))
            objects = row["objects"]
            assert len(objects["bbox"]) == len(scene.objects) and (row["width"], row["height"]) == (48, 48)
            non_grey = ~((image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2]))
            for (x, y, w, h), category, area, obj in zip(objects["bbox"], objects["category"], objects["area"],
                                                         scene.objects):
                assert shapes_dense.DETECTION_CATEGORIES[category] == f"{obj.color} {obj.shape}"
                row_index, col_index = divmod(shapes.POSITIONS.index(obj.position), 2)
                cell = np.zeros_like(non_grey)
                cell[row_index * 24:(row_index + 1) * 24, col_index * 24:(col_index + 1) * 24] = True
                ys, xs = np.nonzero(non_grey & cell)
                assert [x, y, w, h] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert area == len(ys) and color_of(image[ys, xs]) == obj.color
    # the COCO file holds the same boxes, with unique ids
    rows = list(dataset["test"])
    assert [a["bbox"] for a in coco["annotations"]] == [b for r in rows for b in r["objects"]["bbox"]]
    assert [a["id"] for a in coco["annotations"]] == [i for r in rows for i in r["objects"]["id"]]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    assert [i["file_name"] for i in coco["images"]] == [f"images/{i:06d}.png" for i in range(4)]


def test_same_scenes_as_the_other_tasks(tmp_path, dense_dir):
    shapes.generate_shapes_dataset(tmp_path, num_train=12, num_test=4, image_size=48, train_tokenizer=False)
    for split in ("train", "test"):
        for name in ("000000.png", "000003.png"):
            ours = np.asarray(Image.open(dense_dir / "detection" / split / "images" / name))
            theirs = np.asarray(Image.open(tmp_path / "captioning" / split / "images" / name))
            np.testing.assert_array_equal(ours, theirs)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="`num_train` must be a positive integer, got 0"):
        shapes_dense.generate_dense_shapes_dataset(tmp_path, num_train=0)
    with pytest.raises(ValueError, match="'masks'"):
        shapes_dense.load_dense_shapes("masks", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m beit3_hf.data.shapes_dense"):
        shapes_dense.load_dense_shapes("detection", tmp_path)
