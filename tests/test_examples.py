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
from transformers import TrainerCallback

from beit3_hf import BEiT3ForCaptioning, BEiT3ForImageClassification, BEiT3ForVisualQuestionAnswering
from beit3_hf.collators import ImageTextCollator, VQACollator
from beit3_hf.data import generate_shapes_dataset, load_shapes
from conftest import TINY, tiny_config

pytest.importorskip("datasets", reason="the example scripts need the optional `datasets` package")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from trainer_utils import ModelArguments, load_processor  # noqa: E402  (the examples' helpers, not the library)
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


def logged(output_dir, key="loss"):
    """The `key` (loss, grad_norm: before clipping) of every training step in `trainer_state.json`."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if "loss" in entry]


def weights(output_dir):
    return load_file(Path(output_dir) / "model.safetensors")


def assert_close_tensors(actual, expected, scale_rtol=0.0, atol=None):
    """
    Every tensor of `actual` equals `expected`'s within `scale_rtol` x its module's scale (the largest |value| of
    `expected` over the module's tensors, a weight and its bias together) plus `atol[name]`. A tolerance on the scale
    of the sums that made the values, not on each entry: a sum can cancel to ~0 and keep the rounding of its large
    terms (the key projection's bias gets exactly zero gradient, softmax ignoring a shift). A failure names every
    tensor off, its largest difference, where, and the limit.
    """
    assert actual.keys() == expected.keys(), sorted(actual.keys() ^ expected.keys())
    module_scale = {}
    for name, tensor in expected.items():
        module = name.rpartition(".")[0]
        module_scale[module] = max(module_scale.get(module, 0.0), tensor.abs().max().item())
    failures = []
    for name, want in expected.items():
        got = actual[name]
        diff = (got.double() - want.double()).abs()
        limit = scale_rtol * module_scale[name.rpartition(".")[0]] + (atol or {}).get(name, 0.0)
        if diff.max() > limit:
            where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
            failures.append(f"{name}: max |diff| {diff.max():.3g} at {where} (actual {got[where]:.8g}, expected "
                            f"{want[where]:.8g}) > limit {limit:.3g}")
    assert not failures, f"{len(failures)} of {len(expected)} tensors differ:\n" + "\n".join(failures)


class FirstStepRecorder(TrainerCallback):
    """The weights a run starts from, and the gradients its first optimiser step applies: accumulated over the
    micro-batches, averaged over the processes and clipped, i.e. what `optimizer.step()` sees."""

    def __init__(self):
        self.initial_weights = self.gradients = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial_weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()
                              if parameter.grad is not None}


# fp32 gradients summed in another order (micro-batches, processes, the CPU kernels' blocking) differ by a few
# roundings (2**-24) of the largest terms: measured up to 5e-7 of the module's largest |gradient| under
# ATEN_CPU_CAPABILITY=default, avx2 and avx512 alike; a wrong loss scale or other examples are off by ~1.
GRADIENT_RTOL = 1e-5


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
    assert len(logged(output_dir)) == 2
    assert (output_dir / "model.safetensors").is_file()
    processor_file = "preprocessor_config.json" if task == "image_classification" else "processor_config.json"
    assert (output_dir / processor_file).is_file()


def test_captioning_drop_worst_starts_after_its_step(shapes_dir, tmp_path):
    """--drop_worst_ratio applies from the first step whose global step exceeds --drop_worst_after (unilm's test)."""
    script = load_script("run_captioning")
    seen = []
    real_loss = script.captioning_smoothed_loss

    def recording(logits, labels, label_smoothing, drop_worst_ratio=0.0):
        seen.append((label_smoothing, drop_worst_ratio))
        return real_loss(logits, labels, label_smoothing, drop_worst_ratio)

    script.captioning_smoothed_loss = recording
    script.main(task_args("captioning", shapes_dir, None) + common_args(
        tmp_path / "out", "--drop_worst_ratio", "0.5", "--drop_worst_after", "1", steps=3))
    assert seen == [(0.0, 0.0), (0.0, 0.0), (0.0, 0.5)]


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
    assert_close_tensors({n: captions[n] for n in backbone}, {n: vqa[n] for n in backbone})  # lr 0: equal
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


@pytest.mark.kernel_sensitive
def test_gradient_accumulation_does_not_rescale_the_loss(shapes_dir, tmp_path):
    """
    GA=2 x batch 2 logs the losses of GA=1 x batch 4 on the same examples and hands the optimiser the same gradient.
    Not the same weights after AdamW: it divides by sqrt(v), so a 1e-7 change of a near-zero gradient moves its
    weight by up to a full learning rate.
    """
    script = load_script("run_vqa")
    data = task_args("vqa", shapes_dir, None)
    recorders = {}
    for ga, batch_size in ((1, 4), (2, 2)):
        recorders[ga] = FirstStepRecorder()
        script.main(data + common_args(tmp_path / f"ga{ga}", "--gradient_accumulation_steps", str(ga), steps=2,
                                       batch_size=batch_size), callbacks=[recorders[ga]])
    for key in ("loss", "grad_norm"):  # the norm before clipping: clipping (to 1) would hide a wrong scale
        np.testing.assert_allclose(logged(tmp_path / "ga2", key), logged(tmp_path / "ga1", key), rtol=1e-5)
    assert_close_tensors(recorders[2].gradients, recorders[1].gradients, scale_rtol=GRADIENT_RTOL)


def test_resume_from_checkpoint_matches_uninterrupted_run(classification_dir, tmp_path):
    script = load_script("run_image_classification")
    data = task_args("image_classification", None, classification_dir)
    checkpoints = ["--save_strategy", "steps", "--save_steps", "2", "--do_eval", "False"]
    script.main(data + common_args(tmp_path / "full", *checkpoints, steps=4))
    assert (tmp_path / "full" / "checkpoint-2").is_dir()
    script.main(data + common_args(tmp_path / "resumed", *checkpoints,
                                   "--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-2"), steps=4))
    # the same kernels on the same batches, from the saved weights, optimiser state and RNG states: bit-exact
    # (under ATEN_CPU_CAPABILITY=default, avx2 and avx512 alike), so any difference is a resume bug
    assert_close_tensors(weights(tmp_path / "resumed"), weights(tmp_path / "full"))
    # and the resumed run did train: its weights are not the checkpoint's
    checkpoint = load_file(tmp_path / "full" / "checkpoint-2" / "model.safetensors")
    assert not torch.equal(checkpoint["classifier.weight"], weights(tmp_path / "full")["classifier.weight"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# SGD, not AdamW, where the runs compare weights computed in different orders: its update is linear in the gradient,
# so weights that differ in rounding only stay close (AdamW's sqrt(v) turns a 1e-7 change of a near-zero gradient
# into a step of the full learning rate), and a wrong gradient scale shows in the weights (AdamW would hide it).
SGD = ("--optim", "sgd")


@pytest.fixture(scope="module")
def single_process_run(classification_dir, tmp_path_factory):
    """One process, batch 4: its output directory and its initial weights."""
    output_dir = tmp_path_factory.mktemp("single")
    recorder = FirstStepRecorder()
    load_script("run_image_classification").main(
        task_args("image_classification", None, classification_dir)
        + common_args(output_dir, "--do_eval", "False", *SGD, steps=3, batch_size=4),
        callbacks=[recorder],
    )
    return output_dir, recorder.initial_weights


@pytest.mark.kernel_sensitive
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(launcher, single_process_run, classification_dir, tmp_path):
    """2 processes (gloo on CPU) with batch 2 each = 1 process with batch 4: same logged losses and gradient norms,
    same SGD updates."""
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--main_process_port", str(free_port())]
    command += [str(ROOT / "examples" / "run_image_classification.py"),
                *task_args("image_classification", None, classification_dir),
                *common_args(tmp_path, "--do_eval", "False", *SGD, steps=3, batch_size=2)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    single_dir, initial = single_process_run
    assert len(logged(tmp_path)) == 3
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(logged(tmp_path, key), logged(single_dir, key), rtol=1e-4)
    # the updates (-lr x the sum of the steps' gradients and weight decay), and the rounding of each of the 3 steps'
    # new weights to fp32 in either run: 2 x 3 x 2**-24 = 3 eps of the tensor's largest weight
    final = weights(single_dir)
    rounding = {name: 3 * torch.finfo(torch.float32).eps * weight.abs().max().item() for name, weight in final.items()}
    assert_close_tensors({name: weight - initial[name] for name, weight in weights(tmp_path).items()},
                         {name: weight - initial[name] for name, weight in final.items()},
                         scale_rtol=GRADIENT_RTOL, atol=rounding)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["log_history"][0]["epoch"] == pytest.approx(4 / 16)  # 2 processes x 2 of the 16 images per step


RUN_AS_SCRIPT = """
import atexit, os, sys, torch
from pathlib import Path
from trainer_utils import run_as_script

def main():
    torch.distributed.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))  # keeps gloo's threads running
    model(torch.ones(2, 3)).sum().backward()
    rank = os.environ["RANK"]
    atexit.register(Path(sys.argv[1], rank).write_text, "exit handlers ran")
    print(f"rank {rank} done", end="")  # unflushed
    if sys.argv[2] == "raise":
        raise RuntimeError(f"rank {rank} failed")

class Teardown:
    def __del__(self):  # runs when the interpreter tears the module down
        print(" teardown ran", flush=True)

sentinel = Teardown()
run_as_script(main)
"""


@pytest.mark.parametrize("outcome", ["finish", "raise"])
def test_run_as_script_ends_a_distributed_run(outcome, tmp_path):
    """After `main()`, a 2-process script destroys its process group, runs the exit handlers, flushes and exits 0
    without the interpreter's teardown (a module-level `__del__` never runs); an exception still fails the run."""
    script = tmp_path / "script.py"
    script.write_text(RUN_AS_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "--tee", "3", str(script), str(tmp_path), outcome],
                            env=env, capture_output=True, text=True, timeout=120)
    if outcome == "raise":
        assert result.returncode != 0 and "rank 0 failed" in result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in "01":
        assert (tmp_path / rank).read_text() == "exit handlers ran"
        assert f"rank {rank} done" in result.stdout
    assert "teardown ran" not in result.stdout


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


# ----------------------------------------------------------------------------------------------------------------
# The visual tokenizer (VQ-KD) script

VISUAL_TOKENIZER = dict(image_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                        decoder_num_attention_heads=4, decoder_intermediate_size=64, codebook_dim=8)  # fmt: skip


def visual_tokenizer_overrides(**overrides):
    return ",".join(f"{k}={v}" for k, v in {**VISUAL_TOKENIZER, **overrides}.items())


@pytest.fixture(scope="module")
def beit3_teacher_dir(tmp_path_factory):
    """A tiny BEiT3Model (32px, patch 8: a 4x4 grid, 32 wide) and its image processor (mean = std = 0.5)."""
    from beit3_hf import BEiT3ImageProcessor, BEiT3Model
    from beit3_hf.processor_presets import TASK_PRESETS

    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    BEiT3Model(tiny_config()).save_pretrained(path)
    BEiT3ImageProcessor.from_preset(TASK_PRESETS["retrieval"], size=32).save_pretrained(path)
    return path


def visual_tokenizer_args(output_dir, teacher_dir, classification_dir, *extra, steps=3):
    return ["--dataset_dir", str(classification_dir), "--teacher_name_or_path", str(teacher_dir),
            *common_args(output_dir, *extra, steps=steps)]


def test_visual_tokenizer_teacher_features():
    """CLIP's release target `visual_projection(post_layernorm(patch tokens))`, brought to other grids by area
    averaging (coarser) or bilinear interpolation (finer); the teacher stays in eval mode."""
    import torch.nn.functional as F
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    script = load_script("run_visual_tokenizer")
    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32,
        patch_size=8, projection_dim=12))  # fmt: skip
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    teacher = script.FrozenTeacher(clip, mean, std, "clip_projection")
    teacher.train()
    assert not teacher.training and not clip.training
    assert not any(parameter.requires_grad for parameter in clip.parameters())

    pixels = torch.rand(2, 3, 32, 32)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = clip.vision_model(pixel_values=normalised).last_hidden_state[:, 1:]
        expected = clip.visual_projection(clip.vision_model.post_layernorm(tokens))  # (2, 16, 12)
    torch.testing.assert_close(teacher(pixels, (4, 4)), expected)
    maps = expected.transpose(1, 2).reshape(2, 12, 4, 4)
    torch.testing.assert_close(teacher(pixels, (2, 2)), F.avg_pool2d(maps, 2).flatten(2).transpose(1, 2))
    finer = F.interpolate(maps, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(teacher(pixels, (8, 8)), finer.flatten(2).transpose(1, 2))

    plain = script.FrozenTeacher(clip, mean, std, "last_hidden_state")
    torch.testing.assert_close(plain(pixels, (4, 4)), tokens)
    with pytest.raises(ValueError, match="clip_projection"):
        script.FrozenTeacher(clip.vision_model, mean, std, "clip_projection")
    with pytest.raises(ValueError, match="'cls'"):
        script.FrozenTeacher(clip, mean, std, "cls")


def test_visual_tokenizer_trains_against_a_frozen_teacher(beit3_teacher_dir, classification_dir, tmp_path,
                                                          monkeypatch):
    """A new tokenizer (2x2 code grid: the teacher's 4x4 features are averaged down) trains for 3 steps; the
    output directory is the tokenizer alone, which AutoModel reloads; the teacher is untouched; every log has the
    codebook figures."""
    from transformers import AutoImageProcessor, AutoModel

    from beit3_hf import BEiT3VisualTokenizer

    script = load_script("run_visual_tokenizer")
    teachers = []

    def load_teacher(*args, **kwargs):
        teachers.append(original(*args, **kwargs))
        return teachers[-1]

    original = script.load_teacher
    monkeypatch.setattr(script, "load_teacher", load_teacher)
    output_dir = tmp_path / "vqkd"
    metrics = script.main(visual_tokenizer_args(
        output_dir, beit3_teacher_dir, classification_dir,
        "--config_overrides", visual_tokenizer_overrides(patch_size=16, codebook_size=16), "--do_eval", "True"))

    tokenizer = AutoModel.from_pretrained(output_dir)
    assert isinstance(tokenizer, BEiT3VisualTokenizer)
    assert tokenizer.config.teacher_hidden_size == 32 and bool(tokenizer.quantizer.initialized)
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert processor.do_normalize is False and processor.crop_size == {"height": 32, "width": 32}
    saved = weights(output_dir)
    assert all(name.split(".")[0] in {"encoder", "encoder_task_layer", "quantizer", "decoder", "decoder_task_layer"}
               for name in saved), sorted(saved)

    (teacher,) = teachers
    assert not teacher.training and not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    # the teacher normalised with its own processor's mean / std (0.5), not the tokenizer's CLIP default
    assert teacher.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert_close_tensors({name: tensor.cpu() for name, tensor in teacher.model.state_dict().items()},
                         weights(beit3_teacher_dir))

    state = json.loads((output_dir / "trainer_state.json").read_text())
    train_logs = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(train_logs) == 3
    for entry in train_logs:
        assert 0 < entry["codebook_usage"] <= 1 and 1 <= entry["perplexity"] <= 16, entry
        assert entry["loss"] == pytest.approx(entry["reconstruction_loss"] + entry["quantization_loss"], rel=1e-5)
        assert "restarted_codes" not in entry
    assert 0 < metrics["eval_codebook_usage"] <= 1 and 1 <= metrics["eval_perplexity"] <= 16
    assert np.isfinite(metrics["eval_loss"])


def collapsed_tokenizer(path, codebook_size=32):
    """A tokenizer whose codebook has collapsed: every code the same vector, so all patches take code 0, whose
    usage average is the only non-zero one."""
    from beit3_hf import BEiT3ImageProcessor, BEiT3VisualTokenizer, BEiT3VisualTokenizerConfig
    from beit3_hf.configuration_visual_tokenizer import visual_tokenizer_processor_kwargs

    torch.manual_seed(0)
    config = BEiT3VisualTokenizerConfig(**VISUAL_TOKENIZER, patch_size=8, codebook_size=codebook_size,
                                        teacher_hidden_size=32)
    model = BEiT3VisualTokenizer(config)
    with torch.no_grad():
        model.quantizer.codebook.copy_(torch.nn.functional.normalize(torch.ones(codebook_size, 8), dim=-1))
        model.quantizer.initialized.fill_(True)
        model.quantizer.cluster_size.zero_()[0] = 1.0
    model.save_pretrained(path)
    BEiT3ImageProcessor(**visual_tokenizer_processor_kwargs(32)).save_pretrained(path)
    return path


def test_visual_tokenizer_restart_dead_codes_revives_a_collapsed_codebook(beit3_teacher_dir, classification_dir,
                                                                           tmp_path):
    """From a codebook with one live code of 32, --restart_dead_codes restarts the 31 dead ones after the first
    step and the next batches use many codes; without it usage stays at a few codes."""
    script = load_script("run_visual_tokenizer")
    collapsed = collapsed_tokenizer(tmp_path / "collapsed")
    usage, restarted = {}, {}
    for name, flags in (("plain", []), ("restart", ["--restart_dead_codes"])):
        script.main(visual_tokenizer_args(tmp_path / name, beit3_teacher_dir, classification_dir,
                                          "--model_name_or_path", str(collapsed), "--do_eval", "False",
                                          "--learning_rate", "1e-4", *flags, steps=4))
        usage[name] = logged(tmp_path / name, "codebook_usage")
        if flags:
            restarted[name] = logged(tmp_path / name, "restarted_codes")
    assert usage["plain"][0] == usage["restart"][0] == 1 / 32  # the first batch, before any restart
    assert restarted["restart"][0] == 31
    assert max(usage["plain"]) <= 4 / 32, usage
    assert min(usage["restart"][1:]) > 4 * max(usage["plain"]), usage


def test_visual_tokenizer_bad_arguments(beit3_teacher_dir, classification_dir, tmp_path):
    script = load_script("run_visual_tokenizer")
    overrides = ["--config_overrides", visual_tokenizer_overrides(patch_size=8, codebook_size=16)]
    with pytest.raises(ValueError, match="--teacher_name_or_path"):
        script.main(["--dataset_dir", str(classification_dir), *overrides, *common_args(tmp_path / "a")])
    with pytest.raises(ValueError, match="teacher_hidden_size=32"):
        script.main(visual_tokenizer_args(tmp_path / "b", beit3_teacher_dir, classification_dir, "--config_overrides",
                                          visual_tokenizer_overrides(patch_size=8, teacher_hidden_size=24)))
    with pytest.raises(ValueError, match="BEiT3Model"):
        script.main(visual_tokenizer_args(tmp_path / "c", beit3_teacher_dir, classification_dir, *overrides,
                                          "--teacher_features", "clip_projection"))
    with pytest.raises(ValueError, match="-1.0"):
        script.main(visual_tokenizer_args(tmp_path / "d", beit3_teacher_dir, classification_dir, *overrides,
                                          "--restart_dead_codes", "--dead_code_threshold", "-1"))


def load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visual_tokenizer_probe_labels_and_scores():
    """The probe benchmark's patch labels (the object covering >= min_coverage of the patch, else background) and
    its code -> majority-label probe, on constructed inputs."""
    from beit3_hf.data.shapes import LABEL_NAMES, Scene, ShapeObject, render_label_map

    probe = load_benchmark("visual_tokenizer_probe")
    scene = Scene(objects=(ShapeObject("square", "red", "large", "top left"),
                           ShapeObject("circle", "blue", "small", "bottom right")))
    label_map = np.asarray(render_label_map(scene, 32))
    for min_coverage in (0.05, 0.5):
        labels = probe.patch_labels([scene], 32, 8, min_coverage)[0]
        for index, label in enumerate(labels):
            row, column = divmod(index, 4)
            patch = label_map[row * 8:(row + 1) * 8, column * 8:(column + 1) * 8]
            counts = {kind: int((patch == kind).sum()) for kind in range(1, len(LABEL_NAMES))}
            best = max(counts, key=counts.get)
            assert label == (best if counts[best] >= min_coverage * 64 else 0), (min_coverage, index, counts)
    assert LABEL_NAMES.index("red square") in labels and 0 in labels

    train_labels = np.array([[0, 0, 1, 2], [0, 0, 0, 2]])
    test_labels = np.array([[0, 1, 2, 0]])
    # code 5 was always 0, code 7 label 1, code 9 label 2; code 3 never seen -> the majority class (0)
    train_codes = np.array([[5, 5, 7, 9], [5, 5, 5, 9]])
    assert probe.probe_accuracy(train_codes, train_labels, np.array([[5, 7, 9, 3]]), test_labels, 16) == 1.0
    assert probe.probe_accuracy(train_codes, train_labels, np.array([[7, 7, 7, 7]]), test_labels, 16) == 0.25


def test_visual_tokenizer_probe_runs_on_a_saved_tokenizer(beit3_teacher_dir, tmp_path):
    """End to end on a tiny random tokenizer (32 px, patch 8, 16 codes) and the tiny teacher: every figure is in
    range, and the usage is the fraction of codes the test patches hit."""
    from beit3_hf import BEiT3VisualTokenizer, BEiT3VisualTokenizerConfig

    probe = load_benchmark("visual_tokenizer_probe")
    torch.manual_seed(0)
    config = BEiT3VisualTokenizerConfig(**{**VISUAL_TOKENIZER, "patch_size": 8, "codebook_size": 16,
                                           "teacher_hidden_size": 32})
    tokenizer = probe.control_tokenizer(config, probe.split_scenes("train", 8, 0), 32, seed=0)
    tokenizer.save_pretrained(tmp_path / "vqkd")
    results = probe.main(["--tokenizer", str(tmp_path / "vqkd"), "--teacher", str(beit3_teacher_dir),
                          "--num-train", "12", "--num-test", "6", "--batch-size", "4"])
    (figures,) = results["tokenizers"]
    assert figures["test_patches"] == 6 * 16
    assert figures["codebook_usage"] == figures["codes_used"] / 16
    assert 0 <= figures["probe_accuracy"] <= 1 and 0 <= figures["majority_baseline"] <= 1
    assert -1 <= figures["reconstruction_cosine"] <= 1
