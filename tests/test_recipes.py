"""The recipes' augmentation in the example scripts: --augment on the training split only (set_transform), mixup /
cutmix with the soft-target loss and captioning's label smoothing in training only (BEiT3Trainer), and the recipes
that set them."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from beit3_hf import BEiT3ForCaptioning, BEiT3ForImageClassification
from beit3_hf.augmentation import ClassificationBatchAugment, captioning_smoothed_loss, soft_target_cross_entropy
from conftest import tiny_config

pytest.importorskip("datasets", reason="the example scripts need the optional `datasets` package")
from test_examples import classification_dir, common_args, load_script, shapes_dir, task_args  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import trainer_utils  # noqa: E402


class DataRecorder(TrainerCallback):
    """The first training example as the training loader serves it, and the evaluation split's format."""

    def __init__(self):
        self.example = self.train_format = self.eval_format = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = train_dataloader.dataset
        self.train_format = dataset.format["type"]
        self.example = dataset[0]


SCRIPT_FLAGS = {
    "image_classification": ["--augment", "imagenet", "--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.25",
                             "--label_smoothing_factor", "0.1"],
    "vqa": ["--augment", "randaug"],
    "visual_reasoning": ["--augment", "crop"],
    "retrieval": ["--augment", "crop", "--augment_flip", "always"],
    "captioning": ["--augment", "randaug", "--label_smoothing", "0.1"],
}


@pytest.mark.parametrize("task", list(SCRIPT_FLAGS))
def test_scripts_augment_the_training_split_only(task, shapes_dir, classification_dir, tmp_path):  # noqa: F811
    recorder = DataRecorder()
    script = load_script(f"run_{task}")
    args = task_args(task, shapes_dir, classification_dir) + common_args(tmp_path / "out", steps=1) + SCRIPT_FLAGS[task]
    metrics = script.main(args, callbacks=[recorder])
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_loss"])
    assert recorder.train_format == "custom"  # set_transform
    train, evaluation = trainer_utils.load_task_dataset(
        trainer_utils.DataArguments(dataset_dir=args[args.index("--dataset_dir") + 1]))
    assert evaluation.format["type"] is None
    columns = ["left_image", "right_image"] if task == "visual_reasoning" else ["image"]
    for column in columns:
        image = recorder.example[column]
        assert image.size == (32, 32) and image.mode == "RGB"  # the model's size, for the processor to normalise
        raw = train[0][column].convert("RGB").resize((32, 32))
        assert not np.array_equal(np.asarray(image), np.asarray(raw))


def classification_trainer(tmp_path, **kwargs):
    model = BEiT3ForImageClassification(tiny_config(num_labels=3))
    args = trainer_utils.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return model, trainer_utils.BEiT3Trainer(model=model, args=args, **kwargs)


def test_trainer_mixes_batches_and_takes_the_soft_loss_in_training_only(tmp_path):
    augment = ClassificationBatchAugment(num_classes=3)
    model, trainer = classification_trainer(tmp_path, train_batch_transform=augment, train_loss=augment.loss)
    torch.manual_seed(0)
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 1])}
    model.train()
    torch.manual_seed(1)
    loss = trainer.compute_loss(model, dict(inputs))
    torch.manual_seed(1)
    mixed = augment(inputs)  # the same draws
    assert mixed["labels"].shape == (4, 3)
    model.train()
    torch.manual_seed(5)  # drop path / dropout are off in the tiny config; any seed
    expected = soft_target_cross_entropy(model(pixel_values=mixed["pixel_values"]).logits, mixed["labels"])
    torch.testing.assert_close(loss, expected)
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, dict(inputs)), model(**inputs).loss)  # untouched


def test_trainer_captioning_label_smoothing_in_training_only(tmp_path):
    model = BEiT3ForCaptioning(tiny_config())
    args = trainer_utils.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")

    def smoothed(outputs, labels):
        return captioning_smoothed_loss(outputs["logits"], labels, 0.1)

    trainer = trainer_utils.BEiT3Trainer(model=model, args=args, train_loss=smoothed)
    torch.manual_seed(0)
    input_ids = torch.randint(3, 100, (2, 6))
    labels = torch.full((2, 6), -100)
    labels[:, 2] = input_ids[:, 2]
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "input_ids": input_ids, "labels": labels}
    model.train()
    smoothed_loss = trainer.compute_loss(model, dict(inputs))
    torch.testing.assert_close(smoothed_loss, smoothed(model(**inputs), labels))
    assert not torch.allclose(smoothed_loss, model(**inputs).loss)
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, dict(inputs)), model(**inputs).loss)


@pytest.mark.parametrize("recipe, task, expected", [
    ("vqav2_base", "vqa", {"augment": "randaug"}),
    ("nlvr2_large", "visual_reasoning", {"augment": "crop"}),
    ("retrieval_base", "retrieval", {"augment": "crop"}),
    ("captioning_base", "captioning", {"augment": "randaug", "label_smoothing": 0.1, "mask_prob": 0.7,
                                       "drop_worst_ratio": 0.2, "drop_worst_after": 12000}),
    ("imagenet_large", "image_classification", {"augment": "imagenet", "mixup": 0.8, "cutmix": 1.0, "reprob": 0.25}),
])
def test_recipes_set_the_augmentation(recipe, task, expected, tmp_path):
    data_class = next(value for value in vars(load_script(f"run_{task}")).values()
                      if isinstance(value, type) and issubclass(value, trainer_utils.DataArguments)
                      and value is not trainer_utils.DataArguments)
    base = ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--recipe", recipe]
    _, data_args, _ = trainer_utils.parse_arguments(data_class, base, task=task)
    assert {key: getattr(data_args, key) for key in expected} == expected
    _, data_args, _ = trainer_utils.parse_arguments(data_class, base + ["--augment", "none"], task=task)
    assert data_args.augment == "none"  # explicit flags win


def test_bad_augment_flags(tmp_path):
    base = ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):  # argparse choices
        trainer_utils.parse_arguments(load_script("run_vqa").VQAArguments, base + ["--augment", "blur"], task="vqa")
    with pytest.raises(ValueError, match="'sideways'"):
        trainer_utils.DataArguments(dataset_dir=str(tmp_path), augment_flip="sideways")
    # a script that does not augment (the base class: the visual tokenizer, detection, ...) refuses the flag
    with pytest.raises(ValueError, match="--augment 'crop': this script does not augment"):
        trainer_utils.DataArguments(dataset_dir=str(tmp_path), augment="crop")


@pytest.mark.parametrize("task, bar, summary", [
    ("captioning", "Generating captions",
     r"Captioning: 8 images captioned and scored in [\d.]+ s \([\d.]+/s\): BLEU-4 "),
    ("retrieval", None, r"Retrieval: \d+ images x 8 texts embedded and ranked in [\d.]+ s: TR@1 [\d.]+, IR@1 "),
])
def test_long_evaluations_show_progress_and_a_summary(task, bar, summary, shapes_dir, classification_dir,  # noqa: F811
                                                      tmp_path, capsys):
    args = task_args(task, shapes_dir, classification_dir) + common_args(tmp_path / "out", "--do_train", "False")
    load_script(f"run_{task}").main(args + ["--disable_tqdm", "False"])
    captured = capsys.readouterr()
    assert len(re.findall(summary, captured.out)) == 1, captured.out
    if bar is not None:
        assert re.search(bar + r".*100%", captured.err), captured.err[-2000:]
    load_script(f"run_{task}").main(args)  # --disable_tqdm True (common_args): no bar, still the summary
    captured = capsys.readouterr()
    assert re.search(summary, captured.out) and (bar is None or bar not in captured.err)
