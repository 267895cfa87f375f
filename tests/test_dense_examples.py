"""Smoke tests of examples/run_semantic_segmentation.py and examples/run_object_detection.py on tiny shapes data,
the pipelines on what they save, and their layer-wise learning-rate decay."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import beit3_hf
from beit3_hf.data import shapes_dense
from conftest import TINY, tiny_config

pytest.importorskip("datasets", reason="the example scripts need the optional `datasets` package")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
OVERRIDES = ",".join(f"{key}={value}" for key, value in TINY.items())


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dense_shapes")
    shapes_dense.generate_dense_shapes_dataset(path, num_train=16, num_test=8, image_size=32)
    return path


def common_args(output_dir, *extra):
    return [
        "--output_dir", str(output_dir), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
        "--logging_steps", "1", "--disable_tqdm", "True", "--dataloader_num_workers", "0",
        "--learning_rate", "0.005", "--warmup_steps", "0", "--backbone_neck_channels", "16", *extra,
    ]


SEGMENTATION_HEAD = json.dumps(dict(hidden_size=16, auxiliary_channels=16, pool_scales=[1, 2]))
DETECTION_HEAD = json.dumps(dict(
    encoder_hidden_dim=16, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32, decoder_layers=1,
    encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_denoising=5,
))


def test_semantic_segmentation_script_from_a_beit3_checkpoint(tmp_path, dense_dir):
    """A converted (here: tiny, random) BEiT-3 checkpoint's image path becomes UperNet's backbone; mIoU is reported,
    and the saved model runs in the image-segmentation pipeline."""
    torch.manual_seed(0)
    checkpoint = beit3_hf.BEiT3ForImageTextRetrieval(tiny_config())
    checkpoint.save_pretrained(tmp_path / "beit3")
    script = load_script("run_semantic_segmentation")
    model = script.build_model(
        script.DenseModelArguments(model_name_or_path=str(tmp_path / "beit3"), backbone_neck_channels=16,
                                   head_config_overrides=SEGMENTATION_HEAD),
        list(shapes_dense.SEGMENTATION_LABELS),
    )
    for name, value in checkpoint.beit3.state_dict().items():
        if name in model.backbone.beit3.state_dict():
            torch.testing.assert_close(model.backbone.beit3.state_dict()[name], value, rtol=0, atol=0)

    metrics = script.main(common_args(
        tmp_path / "out", "--model_name_or_path", str(tmp_path / "beit3"), "--head_config_overrides",
        SEGMENTATION_HEAD, "--dataset_dir", str(dense_dir / "segmentation"),
    ))
    assert 0 <= metrics["eval_mean_iou"] <= 1 and 0 <= metrics["eval_overall_accuracy"] <= 1
    assert "eval_iou_background" in metrics and np.isfinite(metrics["train_loss"])
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "out"))
    image = Image.open(dense_dir / "segmentation" / "test" / "images" / "000000.png")
    segments = segmenter(image, subtask="semantic")
    assert segments and all(s["label"] in shapes_dense.SEGMENTATION_LABELS for s in segments)
    assert segments[0]["mask"].size == image.size


def test_object_detection_script_and_pipeline(tmp_path, dense_dir):
    """Random init, three steps: COCO mAP from pycocotools, then the object-detection pipeline on the saved model,
    and training on from that directory."""
    script = load_script("run_object_detection")
    data = ["--dataset_dir", str(dense_dir / "detection"), "--head_config_overrides", DETECTION_HEAD]
    metrics = script.main(common_args(tmp_path / "out", "--config_overrides", OVERRIDES, *data))
    for name in ("eval_map", "eval_map_50", "eval_map_75"):
        assert 0 <= metrics[name] <= 1
    assert np.isfinite(metrics["eval_loss"]) and np.isfinite(metrics["train_loss"])
    detector = pipeline("object-detection", model=str(tmp_path / "out"), threshold=0.0)
    detections = detector(Image.open(dense_dir / "detection" / "test" / "images" / "000000.png"))
    assert len(detections) == 10 and detections[0]["label"] in shapes_dense.DETECTION_CATEGORIES
    assert set(detections[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    # a saved detector is trained further as it is
    again = script.main(common_args(tmp_path / "again", "--model_name_or_path", str(tmp_path / "out"), *data))
    assert np.isfinite(again["eval_map"])


def test_map_is_one_for_perfect_boxes(dense_dir):
    """The metric itself: a 'model' that returns the ground truth scores mAP 1 (and 0 with the categories shifted)."""
    script = load_script("run_object_detection")
    dataset = shapes_dense.load_dense_shapes("detection", dense_dir)["test"]
    names = list(shapes_dense.DETECTION_CATEGORIES)

    class Oracle(torch.nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.weight, self.shift, self.calls = torch.nn.Parameter(torch.zeros(1)), shift, 0

        def forward(self, pixel_values):
            rows = dataset[self.calls * 8:(self.calls + 1) * 8]["objects"]
            self.calls += 1
            logits = torch.full((len(rows), 3, len(names)), -20.0)
            boxes = torch.full((len(rows), 3, 4), 0.5)
            for i, objects in enumerate(rows):
                for j, ((x, y, w, h), category) in enumerate(zip(objects["bbox"], objects["category"])):
                    logits[i, j, (category + self.shift) % len(names)] = 20.0
                    boxes[i, j] = torch.tensor([x + w / 2, y + h / 2, w, h]) / 32
            return type("Output", (), dict(logits=logits, pred_boxes=boxes))()

    processor = script.RTDetrImageProcessorPil(size={"height": 32, "width": 32})
    assert script.coco_map(Oracle(0), processor, dataset, names, batch_size=8)["map_50"] == pytest.approx(1.0)
    assert script.coco_map(Oracle(1), processor, dataset, names, batch_size=8)["map_50"] == pytest.approx(0.0)


def test_layer_decay_reaches_the_backbone_blocks_only(tmp_path):
    from dense_utils import DenseTrainer
    from test_backbone import tiny_upernet
    from transformers import TrainingArguments

    model = tiny_upernet()
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1.0, weight_decay=0.1, report_to="none",
                             use_cpu=True)
    optimizer = DenseTrainer(model=model, args=args, layer_decay=0.5).create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter exactly once
    # 2 blocks: embeddings 0.5^3, block k 0.5^(2 - k), neck and head 1
    assert lr_of[id(named["backbone.beit3.embeddings.patch_embedding.weight"])] == pytest.approx(0.125)
    assert lr_of[id(named["backbone.beit3.encoder.layers.0.mlp.image.fc1.weight"])] == pytest.approx(0.25)
    assert lr_of[id(named["backbone.beit3.encoder.layers.1.mlp.image.fc1.weight"])] == pytest.approx(0.5)
    assert lr_of[id(named["backbone.neck.levels.0.0.weight"])] == 1.0
    assert lr_of[id(named["decode_head.classifier.weight"])] == 1.0
    assert decay_of[id(named["decode_head.classifier.bias"])] == 0.0
    assert decay_of[id(named["backbone.beit3.embeddings.cls_token"])] == 0.0
    assert decay_of[id(named["decode_head.classifier.weight"])] == 0.1
