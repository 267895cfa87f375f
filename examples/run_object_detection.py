#!/usr/bin/env python
"""
Object detection with a BEiT-3 backbone inside transformers' RT-DETR (`RTDetrForObjectDetection`), trained with the
Trainer and evaluated by COCO mAP (pycocotools' `COCOeval`).

    python -m beit3_hf.data.shapes_dense --output-dir data/shapes
    python examples/run_object_detection.py --model_name_or_path runs/retrieval_p8 \
        --dataset_dir data/shapes/detection --output_dir runs/detection

RT-DETR because it is the DETR-family detector of transformers that converges fastest (IoU-aware query selection
and denoising queries: 72 COCO epochs against DETR's 500 and Deformable DETR's 50 at a lower mAP), takes a multi-scale
`backbone_config` (the simple pyramid's strides 8/16/32 for patch 16) and needs neither timm nor torchvision; its
multi-scale deformable attention runs in plain PyTorch.

Data: rows with `image`, `image_id`, `width`, `height` and `objects` (`id`, `bbox` as COCO `[x, y, width, height]`
pixels, `category`, `area` lists), as the shapes world and the Hub's cppe-5 have them; category names from
`<dataset_dir>/id2label.json` (or `--num_labels`). The saved directory holds the model and an `RTDetrImageProcessor`,
so `pipeline("object-detection", model=...)` works.
"""

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessorPil

from beit3_hf.data.shapes_dense import coco_annotations

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dense_utils import (  # noqa: E402
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
class DetectionArguments(DataArguments):
    objects_column: str = field(default="objects", metadata={"help": "Column with the boxes and categories."})
    num_labels: int | None = field(default=None, metadata={"help": "Categories, when there is no id2label.json."})
    image_size: int | None = field(
        default=None, metadata={"help": "Side images are resized to (default: the backbone's image_size)."}
    )


# RT-DETR sizes for small images on a CPU (transformers' defaults: 256 wide, 6 decoder layers, 300 queries)
RT_DETR_DEFAULTS = dict(
    encoder_hidden_dim=128, encoder_ffn_dim=256, d_model=128, decoder_ffn_dim=256, decoder_layers=3,
    num_queries=30, num_denoising=30,
)


class DetectionCollator:
    def __init__(self, processor, image_column: str, objects_column: str):
        self.processor, self.image_column, self.objects_column = processor, image_column, objects_column

    def __call__(self, rows: list[dict]) -> dict:
        images = [row[self.image_column].convert("RGB") for row in rows]
        annotations = []
        for index, row in enumerate(rows):
            objects = row[self.objects_column]
            boxes = [
                dict(bbox=bbox, category_id=category, area=area, iscrowd=0)
                for bbox, category, area in zip(objects["bbox"], objects["category"], objects["area"])
            ]
            annotations.append(dict(image_id=row.get("image_id", index), annotations=boxes))
        return dict(self.processor(images, annotations=annotations, return_tensors="pt"))


def category_names(data_args: DetectionArguments) -> list[str]:
    path = os.path.join(data_args.dataset_dir, "id2label.json")
    if os.path.isfile(path):
        with open(path) as f:
            id2label = json.load(f)
        return [id2label[str(index)] for index in range(len(id2label))]
    if data_args.num_labels is None:
        raise ValueError(f"No {path}: pass --num_labels.")
    return [str(index) for index in range(data_args.num_labels)]


@torch.no_grad()
def coco_map(model, processor, dataset, names, image_column="image", batch_size=32) -> dict:
    """COCO box mAP (pycocotools) of `model` on `dataset`: every detection the processor's post-processing keeps."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model.eval()
    device = next(model.parameters()).device
    rows = [{key: row[key] for key in ("image_id", "width", "height", "objects")} for row in dataset]
    ground_truth = COCO()
    ground_truth.dataset = coco_annotations(rows, names)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    detections = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        images = [image.convert("RGB") for image in batch[image_column]]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(device)
        outputs = model(pixel_values=pixel_values)
        sizes = [(image.height, image.width) for image in images]
        results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
        for image_id, result in zip(batch["image_id"], results):
            for score, label, (x0, y0, x1, y1) in zip(
                result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()
            ):
                detections.append(
                    dict(image_id=image_id, category_id=label, bbox=[x0, y0, x1 - x0, y1 - y0], score=score)
                )
    if not detections:
        return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    names = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    return {name: float(value) for name, value in zip(names, evaluation.stats)}


def build_model(model_args, names: list[str]) -> RTDetrForObjectDetection:
    labels = dict(num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if saved_model_type(model_args) == "rt_detr":
        return RTDetrForObjectDetection.from_pretrained(model_args.model_name_or_path, **labels)
    # three levels at strides 8/16/32 (patch 16), as RT-DETR's ResNet gives
    backbone = load_backbone(model_args, backbone_neck_scales=[2.0, 1.0, 0.5])
    head = {**RT_DETR_DEFAULTS, **head_overrides(model_args)}
    hidden = head["encoder_hidden_dim"]
    config = RTDetrConfig(
        backbone_config=backbone.config,
        encoder_in_channels=backbone.channels,
        feat_strides=backbone.strides,
        decoder_in_channels=[hidden] * len(backbone.channels),
        **head,
        **labels,
    )
    model = RTDetrForObjectDetection(config)
    model.model.backbone.model.load_state_dict(backbone.state_dict())
    return model


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_dense_arguments(
        DetectionArguments, args, learning_rate=2e-4, prediction_loss_only=True
    )
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    names = category_names(data_args)
    model = build_model(model_args, names)
    size = data_args.image_size or model.config.backbone_config.image_size
    processor = RTDetrImageProcessorPil(
        size={"height": size, "width": size}, do_normalize=True, **image_normalisation(model_args)
    )
    trainer = DenseTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DetectionCollator(processor, data_args.image_column, data_args.objects_column),
        processing_class=processor,
        callbacks=callbacks,
        layer_decay=model_args.layer_decay,
    )

    def evaluate(trainer) -> dict:
        metrics = trainer.evaluate()  # the loss
        scores = coco_map(trainer.model, processor, eval_dataset, names, data_args.image_column,
                          training_args.per_device_eval_batch_size)
        metrics.update({f"eval_{name}": value for name, value in scores.items()})
        return metrics

    return train_and_evaluate(trainer, model_args, training_args, evaluate=evaluate)


if __name__ == "__main__":
    run_as_script(main)
