#!/usr/bin/env python
"""
Semantic segmentation with a BEiT-3 backbone inside transformers' UperNet (`UperNetForSemanticSegmentation`), trained
with the Trainer and evaluated by mean IoU (torchmetrics' `MulticlassJaccardIndex`: classes absent from both the
predictions and the labels are left out of the mean, as in `evaluate`'s mean_iou).

    python -m beit3_hf.data.shapes_dense --output-dir data/shapes
    python examples/run_semantic_segmentation.py --model_name_or_path runs/retrieval_p8 \
        --dataset_dir data/shapes/segmentation --output_dir runs/segmentation

Data: an `imagefolder` whose metadata.jsonl has `file_name` and `label_file_name` (the class map, an "L" PNG; 255 =
ignore), as the shapes world writes it, or a `save_to_disk` dataset with `image` and `label` columns. Class names
come from `<dataset_dir>/id2label.json` (or `--num_labels`). `--model_name_or_path` is any converted BEiT-3 checkpoint
(its image path becomes the backbone, with the neck `--backbone_neck` adds) or a directory this script wrote. The
saved directory holds the model and a `SegformerImageProcessor`, so `pipeline("image-segmentation", model=...)` works.
"""

import json
import os
import sys
from dataclasses import dataclass, field

from transformers import SegformerImageProcessorPil, UperNetConfig, UperNetForSemanticSegmentation

from beit3_hf.metrics import mean_iou

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dense_utils import (  # noqa: E402
    DenseModelArguments,
    DenseTrainer,
    head_overrides,
    image_normalisation,
    load_backbone,
    parse_dense_arguments,
    saved_model_type,
)
from trainer_utils import (  # noqa: E402
    DataArguments,
    load_task_dataset,
    run_as_script,
    setup_logging,
    train_and_evaluate,
)


@dataclass
class SegmentationArguments(DataArguments):
    label_column: str = field(default="label", metadata={"help": "Column with the class map (an image)."})
    num_labels: int | None = field(default=None, metadata={"help": "Classes, when there is no id2label.json."})
    image_size: int | None = field(
        default=None, metadata={"help": "Side images are resized to (default: the backbone's image_size)."}
    )


# UperNet sizes for small images on a CPU (transformers' defaults: hidden_size 512, auxiliary_channels 256)
UPERNET_DEFAULTS = dict(hidden_size=128, auxiliary_channels=64, loss_ignore_index=255)


class SegmentationCollator:
    def __init__(self, processor, image_column: str, label_column: str):
        self.processor, self.image_column, self.label_column = processor, image_column, label_column

    def __call__(self, rows: list[dict]) -> dict:
        images = [row[self.image_column].convert("RGB") for row in rows]
        label_maps = [row[self.label_column] for row in rows]
        return dict(self.processor(images, segmentation_maps=label_maps, return_tensors="pt"))


def label_names(data_args: SegmentationArguments) -> list[str]:
    path = os.path.join(data_args.dataset_dir, "id2label.json")
    if os.path.isfile(path):
        with open(path) as f:
            id2label = json.load(f)
        return [id2label[str(index)] for index in range(len(id2label))]
    if data_args.num_labels is None:
        raise ValueError(f"No {path}: pass --num_labels.")
    return [str(index) for index in range(data_args.num_labels)]


def mean_iou_metrics(names: list[str], ignore_index: int = 255):
    """`compute_metrics` for arg-max class maps: mIoU, per-class IoU (`iou_<name>`) and pixel accuracy
    (`beit3_hf.metrics.mean_iou`, torchmetrics)."""

    def compute(prediction) -> dict:
        scores = mean_iou(prediction.predictions, prediction.label_ids, len(names), ignore_index)
        metrics = {"mean_iou": scores["mean_iou"], "overall_accuracy": scores["overall_accuracy"]}
        metrics.update({f"iou_{name.replace(' ', '_')}": value for name, value in zip(names, scores["per_class_iou"])})
        return metrics

    return compute


def build_model(model_args: DenseModelArguments, names: list[str]) -> UperNetForSemanticSegmentation:
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if saved_model_type(model_args) == "upernet":
        return UperNetForSemanticSegmentation.from_pretrained(model_args.model_name_or_path, **labels)
    backbone = load_backbone(model_args)
    head = {**UPERNET_DEFAULTS, **head_overrides(model_args)}
    config = UperNetConfig(backbone_config=backbone.config, **head, **labels)
    model = UperNetForSemanticSegmentation(config)
    model.backbone.load_state_dict(backbone.state_dict())
    return model


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_dense_arguments(SegmentationArguments, args, learning_rate=2e-4)
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    names = label_names(data_args)
    model = build_model(model_args, names)
    size = data_args.image_size or model.config.backbone_config.image_size
    processor = SegformerImageProcessorPil(
        size={"height": size, "width": size}, do_reduce_labels=False, **image_normalisation(model_args)
    )
    trainer = DenseTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=SegmentationCollator(processor, data_args.image_column, data_args.label_column),
        processing_class=processor,
        callbacks=callbacks,
        layer_decay=model_args.layer_decay,
        compute_metrics=mean_iou_metrics(names, model.config.loss_ignore_index),
        preprocess_logits_for_metrics=lambda logits, labels: (logits[0] if isinstance(logits, tuple) else logits).argmax(1),
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    run_as_script(main)
