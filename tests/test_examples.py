"""The Trainer example scripts on a tiny BEiT-3 and small generated data: every script, LoRA/QLoRA flags,
2-process torchrun vs 1 process, resuming from a checkpoint, and gradient accumulation."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from beit3_hf import BEiT3ForCaptioning, BEiT3ForImageClassification, BEiT3ForVisualQuestionAnswering
from beit3_hf.data import generate_shapes_dataset, load_shapes
from beit3_hf.training import ImageTextCollator, ModelArguments, VQACollator, load_processor
from conftest import TINY, tiny_config

pytest.importorskip("datasets", reason="the example scripts need the optional `datasets` package")

ROOT = Path(__file__).resolve().parents[1]
# Text tasks size the vocabulary to the shapes tokenizer; image classification has no tokenizer.
TEXT_OVERRIDES = ",".join(f"{k}={v}" for k, v in TINY.items() if k != "vocab_size")
IMAGE_OVERRIDES = ",".join(f"{k}={v}" for k, v in TINY.items())


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(path, num_train=16, num_test=8, image_size=32)
    return path


@pytest.fixture(scope="module")
def classification_dir(tmp_path_factory):
    """An imagefolder of grey images, two classes (dark, bright), 8 train and 4 test images each."""
    path = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for label, low in (("dark", 0), ("bright", 128)):
            (path / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(low, low + 128, size=(28, 28), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(path / split / label / f"{i}.png")
    return path


def common_args(output_dir, *extra, steps=2, batch_size=4):
    return [
        "--output_dir", str(output_dir),
        "--max_steps", str(steps),
        "--per_device_train_batch_size", str(batch_size),
        "--per_device_eval_batch_size", "8",
        "--max_eval_samples", "8",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--disable_tqdm", "True",
        "--dataloader_num_workers", "0",
        "--learning_rate", "0.01",  # large enough that the logged losses move within a few steps
        "--warmup_steps", "0",
        *extra,
    ]


def task_args(task, shapes_dir, classification_dir):
    """The data, tokenizer and tiny random-init arguments of one task."""
    if task == "image_classification":
        return ["--dataset_dir", str(classification_dir), "--config_overrides", IMAGE_OVERRIDES]
    folder = {"visual_reasoning": "nlvr2"}.get(task, task)
    return ["--dataset_dir", str(shapes_dir / folder), "--tokenizer_dir", str(shapes_dir / "tokenizer"),
            "--config_overrides", TEXT_OVERRIDES]


def logged_losses(output_dir):
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def weights(output_dir):
    return load_file(Path(output_dir) / "model.safetensors")


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


EXPECTED_METRICS = {
    "image_classification": ["eval_accuracy"],
    "vqa": ["eval_vqa_score", "eval_vqa_score_count"],
    "visual_reasoning": ["eval_accuracy"],
    "retrieval": [f"eval_{d}_r{k}" for d in ("tr", "ir") for k in (1, 5, 10)],
    "captioning": ["eval_bleu4", "eval_cider"],
}


@pytest.mark.parametrize("task", list(EXPECTED_METRICS))
def test_script_trains_and_evaluates(task, shapes_dir, classification_dir, tmp_path):
    script = load_script(f"run_{task}")
    output_dir = tmp_path / "out"
    metrics = script.main(task_args(task, shapes_dir, classification_dir) + common_args(output_dir))

    results = json.loads((output_dir / "all_results.json").read_text())
    for key in ["train_loss", "eval_loss", *EXPECTED_METRICS[task]]:
        assert key in results and np.isfinite(results[key]), key
        assert results[key] == pytest.approx(metrics[key])
    assert len(logged_losses(output_dir)) == 2
    assert (output_dir / "model.safetensors").is_file()
    processor_file = "preprocessor_config.json" if task == "image_classification" else "processor_config.json"
    assert (output_dir / processor_file).is_file()


def test_each_run_starts_the_next(shapes_dir, tmp_path):
    """captions -> VQA -> NLVR2 (docs/results.md): each script loads the previous output's backbone, new head."""
    text_data = ["--tokenizer_dir", str(shapes_dir / "tokenizer")]
    load_script("run_captioning").main(
        ["--dataset_dir", str(shapes_dir / "captioning"), *text_data, "--config_overrides", TEXT_OVERRIDES]
        + common_args(tmp_path / "captions")
    )
    load_script("run_vqa").main(
        ["--dataset_dir", str(shapes_dir / "vqa"), "--model_name_or_path", str(tmp_path / "captions")]
        + common_args(tmp_path / "vqa", "--learning_rate", "0")
    )
    captions, vqa = weights(tmp_path / "captions"), weights(tmp_path / "vqa")
    backbone = [name for name in captions if name.startswith("beit3.")]
    assert backbone and all(name in vqa for name in backbone)
    assert_same_weights({n: captions[n] for n in backbone}, {n: vqa[n] for n in backbone}, atol=0)  # lr 0
    assert "classifier.dense2.weight" in vqa and "lm_head.weight" not in vqa

    metrics = load_script("run_visual_reasoning").main(
        ["--dataset_dir", str(shapes_dir / "nlvr2"), "--model_name_or_path", str(tmp_path / "vqa"),
         "--ignore_mismatched_sizes"] + common_args(tmp_path / "nlvr2")
    )
    assert np.isfinite(metrics["eval_accuracy"])
    config = json.loads((tmp_path / "nlvr2" / "config.json").read_text())
    assert config["architectures"] == ["BEiT3ForVisualReasoning"] and len(config["id2label"]) == 2


def test_vqa_lora_8bit_and_merge_flags(shapes_dir, tmp_path):
    """--lora (text experts) saves adapters and a merged model; --load_in_8bit trains adapters over int8 experts."""
    pytest.importorskip("peft", reason="LoRA needs the optional `peft` package")
    pytest.importorskip("bitsandbytes", reason="8-bit needs the optional `bitsandbytes` package")
    script = load_script("run_vqa")
    data = task_args("vqa", shapes_dir, None)
    script.main(data + common_args(tmp_path / "lora", "--lora", "--lora_target", "text", "--merge_lora"))
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert all(name.endswith((".text", ".text.fc1", ".text.fc2")) for name in adapter["target_modules"])
    assert sorted(adapter["modules_to_save"]) == ["classifier", "pooler"]
    assert (tmp_path / "lora" / "merged" / "model.safetensors").is_file()

    metrics = script.main(data + common_args(tmp_path / "qlora", "--lora", "--load_in_8bit"))
    assert np.isfinite(metrics["train_loss"]) and (tmp_path / "qlora" / "adapter_model.safetensors").is_file()
    with pytest.raises(ValueError, match="add --lora"):
        script.main(data + common_args(tmp_path / "bad", "--load_in_4bit"))


def test_gradient_accumulation_does_not_rescale_the_loss(shapes_dir, tmp_path):
    """GA=2 x batch 2 logs the loss (and takes the step) of GA=1 x batch 4 on the same examples."""
    script = load_script("run_vqa")
    data = task_args("vqa", shapes_dir, None)
    script.main(data + common_args(tmp_path / "ga1", steps=2, batch_size=4))
    script.main(data + common_args(tmp_path / "ga2", "--gradient_accumulation_steps", "2", steps=2, batch_size=2))
    np.testing.assert_allclose(logged_losses(tmp_path / "ga2"), logged_losses(tmp_path / "ga1"), rtol=1e-5)
    assert_same_weights(weights(tmp_path / "ga2"), weights(tmp_path / "ga1"), atol=1e-5)


def test_resume_from_checkpoint_matches_uninterrupted_run(classification_dir, tmp_path):
    script = load_script("run_image_classification")
    data = task_args("image_classification", None, classification_dir)
    checkpoints = ["--save_strategy", "steps", "--save_steps", "2", "--do_eval", "False"]
    script.main(data + common_args(tmp_path / "full", *checkpoints, steps=4))
    assert (tmp_path / "full" / "checkpoint-2").is_dir()
    script.main(data + common_args(tmp_path / "resumed", *checkpoints,
                                   "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-2"), steps=4))
    assert_same_weights(weights(tmp_path / "resumed"), weights(tmp_path / "full"), atol=1e-6)
    # and the resumed run did train: its weights are not the checkpoint's
    checkpoint = load_file(tmp_path / "full" / "checkpoint-2" / "model.safetensors")
    assert not torch.equal(checkpoint["classifier.weight"], weights(tmp_path / "full")["classifier.weight"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_process_run(classification_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("single")
    script = load_script("run_image_classification")
    script.main(task_args("image_classification", None, classification_dir)
                + common_args(output_dir, "--do_eval", "False", steps=3, batch_size=4))
    return output_dir


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(launcher, single_process_run, classification_dir, tmp_path):
    """2 processes (gloo on CPU) with batch 2 each = 1 process with batch 4: same logged losses, same weights."""
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--main_process_port", str(free_port())]
    command += [str(ROOT / "examples" / "run_image_classification.py"),
                *task_args("image_classification", None, classification_dir),
                *common_args(tmp_path, "--do_eval", "False", steps=3, batch_size=2)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    losses = logged_losses(tmp_path)
    assert len(losses) == 3
    np.testing.assert_allclose(losses, logged_losses(single_process_run), rtol=1e-4)
    assert_same_weights(weights(tmp_path), weights(single_process_run), atol=1e-5)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["log_history"][0]["epoch"] == pytest.approx(4 / 16)  # 2 processes x 2 of the 16 images per step


def test_fsdp_config_wraps_encoder_layers():
    """The accelerate FSDP config parses and names the layer class every head has as `_no_split_modules`."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils.dataclasses import get_module_class_from_name

    from beit3_hf.modeling_beit3 import BEiT3EncoderLayer

    config = ClusterConfig.from_yaml_file(str(ROOT / "examples" / "accelerate_fsdp.yaml"))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    layer_class = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    for model_class in (BEiT3ForImageClassification, BEiT3ForVisualQuestionAnswering, BEiT3ForCaptioning):
        model = model_class(tiny_config())
        assert set(model._no_split_modules) == {layer_class}
        assert get_module_class_from_name(model, layer_class) is BEiT3EncoderLayer


# ----------------------------------------------------------------------------------------------------------------
# Collators


def test_collators(shapes_dir):
    model_args = ModelArguments(tokenizer_dir=str(shapes_dir / "tokenizer"), config_overrides=TEXT_OVERRIDES)
    processor = load_processor(model_args, "vqa")
    vqa = load_shapes("vqa", shapes_dir)["train"]
    examples = [vqa[i] for i in range(4)]
    label2id = {answer: i for i, answer in enumerate(sorted({e["answer"] for e in examples}))}
    batch = VQACollator(processor, label2id=label2id)(examples)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["labels"].shape == (4, len(label2id))
    for row, example in enumerate(examples):  # the majority answer (>= 7 of 10 votes) scores 1
        assert batch["labels"][row, label2id[example["answer"]]] == 1.0
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max()  # padded to the longest question only
    assert (batch["input_ids"][:, 0] == 0).all()

    nlvr2 = load_shapes("nlvr2", shapes_dir)["train"]
    batch = ImageTextCollator(processor, label_column="label", pair_columns=("left_image", "right_image"))(
        [nlvr2[i] for i in range(3)]
    )
    assert batch["pixel_values"].shape == (3, 2, 3, 32, 32)
    assert batch["labels"].tolist() == nlvr2["label"][:3]
