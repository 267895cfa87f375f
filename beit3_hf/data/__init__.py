"""Offline datasets for fine-tuning and testing BEiT-3: the synthetic shapes world and Fashion-MNIST.

The names below are imported lazily from `beit3_hf.data.shapes`, `beit3_hf.data.shapes_dense` (segmentation and
detection splits) and `beit3_hf.data.fashion_mnist`, so that `python -m beit3_hf.data.shapes` runs its module only
once.
"""

import importlib


_EXPORTS = {
    "fashion_mnist": (
        "DEFAULT_FASHION_MNIST_DIR",
        "FASHION_MNIST_LABELS",
        "export_imagefolder",
        "load_fashion_mnist",
        "read_fashion_mnist_split",
        "read_idx",
    ),
    "shapes_dense": (
        "DENSE_TASKS",
        "DETECTION_CATEGORIES",
        "SEGMENTATION_LABELS",
        "generate_dense_shapes_dataset",
        "load_dense_shapes",
    ),
    "shapes": (
        "COLORS",
        "LABEL_NAMES",
        "NLVR2_LABEL_NAMES",
        "POSITIONS",
        "QUESTION_TYPES",
        "SHAPES",
        "SIZES",
        "TASKS",
        "VQA_ANSWERS",
        "Scene",
        "ShapeObject",
        "caption",
        "generate_shapes_dataset",
        "load_shapes",
        "nlvr2_examples",
        "render_label_map",
        "render_scene",
        "sample_scene",
        "sample_statement",
        "split_scenes",
        "train_shapes_tokenizer",
        "vqa_questions",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
