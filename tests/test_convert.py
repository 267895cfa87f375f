"""The converter: inference from tensors, key mapping, error messages, the released-checkpoint table, the CLI."""

import json
import subprocess
import sys

import pytest
import torch
import transformers

import beit3_hf
from beit3_hf.convert import (
    convert_checkpoint,
    convert_state_dict,
    detect_task,
    infer_config,
    load_original_state_dict,
)
from beit3_hf.tasks import RELEASED_CHECKPOINTS

from official import build_official, needs_official

TASKS = {
    "backbone": beit3_hf.BEiT3Model,
    "image_classification": beit3_hf.BEiT3ForImageClassification,
    "vqa": beit3_hf.BEiT3ForVisualQuestionAnswering,
    "visual_reasoning": beit3_hf.BEiT3ForVisualReasoning,
    "retrieval": beit3_hf.BEiT3ForImageTextRetrieval,
    "captioning": beit3_hf.BEiT3ForCaptioning,
    "pretraining": beit3_hf.BEiT3ForMaskedDataModeling,
}


@needs_official
@pytest.mark.parametrize("task", sorted(TASKS))
def test_infers_everything_from_the_tensors(task):
    official = build_official(task, num_labels=5, hidden_size=64, layers=3, heads=1, ffn=96, image_size=48,
                              patch_size=16, vocab_size=120, codebook_size=8192)
    state_dict = official.state_dict()
    assert detect_task(state_dict) == task
    config, detected = infer_config(state_dict)
    assert detected == task
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 3, 96)
    assert config.num_attention_heads == 1  # hidden / 64
    assert (config.image_size, config.patch_size, config.vocab_size) == (48, 16, 120)
    assert config.max_text_positions == 1022
    assert config.use_final_layer_norm == (task not in ("image_classification", "vqa"))
    if task in ("image_classification", "vqa"):
        assert config.num_labels == 5
    assert config.visual_vocab_size == 8192  # from `mim_head` for pretraining, the default elsewhere


@needs_official
def test_cli_writes_a_loadable_directory(tmp_path):
    official = build_official("vqa", num_labels=4)
    checkpoint = tmp_path / "beit3_tiny_vqa.pth"
    torch.save({"model": official.state_dict(), "epoch": torch.tensor(3)}, checkpoint)
    answers = tmp_path / "answer2label.txt"
    answers.write_text("".join(json.dumps({"answer": a, "label": i}) + "\n" for i, a in enumerate("wxyz")))
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "beit3_hf.convert", str(checkpoint), str(output_dir), "--num-attention-heads", "4",
         "--answer2label", str(answers)],
        capture_output=True, text=True, check=True,
    )
    assert "BEiT3ForVisualQuestionAnswering" in result.stdout
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == ["BEiT3ForVisualQuestionAnswering"] and config["model_type"] == "beit3"
    assert config["id2label"]["2"] == "y"
    assert (output_dir / "model.safetensors").exists()
    model = beit3_hf.BEiT3ForVisualQuestionAnswering.from_pretrained(output_dir)
    assert torch.equal(model.classifier.dense2.weight, official.head[3].weight)


@needs_official
def test_task_override_and_backbone_from_a_head_checkpoint(tmp_path):
    official = build_official("retrieval")
    checkpoint = tmp_path / "ret.pth"
    torch.save(official.state_dict(), checkpoint)  # a bare state dict
    with pytest.raises(ValueError, match=r"have no place in a BEiT-3 backbone model: \['language_head.weight'"):
        convert_checkpoint(checkpoint, task="backbone", num_attention_heads=4)
    with pytest.raises(ValueError, match="Unknown task"):
        convert_checkpoint(checkpoint, task="segmentation", num_attention_heads=4)


@needs_official
def test_cli_converts_a_pretrained_file_both_ways(tmp_path):
    """`--task pretraining` (also the default) keeps the heads equal to the original tensors; `--task backbone`
    writes a bare backbone without them, and warns naming the dropped keys."""
    official = build_official("pretraining", vocab_size=100)
    state_dict = official.state_dict()
    checkpoint = tmp_path / "beit3_tiny_patch8_32.pth"
    torch.save({"model": state_dict}, checkpoint)
    for task, expected in (("pretraining", "BEiT3ForMaskedDataModeling"), (None, "BEiT3ForMaskedDataModeling"),
                           ("backbone", "BEiT3Model")):
        output_dir = tmp_path / str(task)
        task_args = [] if task is None else ["--task", task]
        result = subprocess.run(
            [sys.executable, "-m", "beit3_hf.convert", str(checkpoint), str(output_dir), "--num-attention-heads", "4",
             *task_args],
            capture_output=True, text=True, check=True,
        )
        # DeepSpeed, where installed, logs a line when accelerate's `unwrap_model` (inside save_pretrained) imports it
        summary = [line for line in result.stdout.splitlines() if "[real_accelerator.py" not in line]
        assert summary and summary[0].startswith(expected), result.stdout
        config = json.loads((output_dir / "config.json").read_text())
        assert config["architectures"] == [expected]
        dropped = ("mlm_head.bias", "mlm_head.weight", "mim_head.bias", "mim_head.weight")
        assert all(key in result.stderr for key in dropped) == (task == "backbone"), result.stderr
    model = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "pretraining")
    assert type(model) is beit3_hf.BEiT3ForMaskedDataModeling and model.config.visual_vocab_size == 8192
    for ours, theirs in ((model.text_head, official.mlm_head), (model.image_head, official.mim_head)):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    backbone = transformers.AutoModel.from_pretrained(tmp_path / "backbone")
    assert type(backbone) is beit3_hf.BEiT3Model
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, model.beit3.state_dict()[key]), key


@needs_official
def test_unknown_and_missing_keys_are_listed(tmp_path):
    state_dict = build_official("captioning").state_dict()
    state_dict["beit3.encoder.layers.0.ffn.C.fc1.weight"] = torch.zeros(1)
    state_dict["decoder.extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        convert_state_dict(state_dict, "captioning")
    assert "2 checkpoint key(s)" in str(error.value)
    assert "decoder.extra" in str(error.value) and "ffn.C.fc1.weight" in str(error.value)

    state_dict = build_official("captioning").state_dict()
    del state_dict["beit3.encoder.layers.1.self_attn.k_proj.B.bias"]
    checkpoint = tmp_path / "missing.pth"
    torch.save({"model": state_dict}, checkpoint)
    with pytest.raises(ValueError, match=r"parameters left unfilled: \['beit3.encoder.layers.1.self_attn.k_proj.text.bias'\]"):
        convert_checkpoint(checkpoint, num_attention_heads=4)


def test_corrupt_or_foreign_files(tmp_path):
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_original_state_dict(not_a_dict)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(ValueError, match="Not a BEiT-3 checkpoint"):
        convert_checkpoint(foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(Exception):
        load_original_state_dict(garbage)


def test_released_checkpoint_table():
    fine_tuned = {name: row for name, row in RELEASED_CHECKPOINTS.items() if row.result}  # the rest: pretrained
    assert len(fine_tuned) == 23 and len(RELEASED_CHECKPOINTS) == 29
    assert RELEASED_CHECKPOINTS["beit3_large_indomain_patch16_768_vgqaaug_vqa"].image_size == 768
    assert RELEASED_CHECKPOINTS["beit3_base_patch16_384_f30k_retrieval"].task == "retrieval"
    assert {row.task for row in fine_tuned.values()} == set(TASKS) - {"backbone", "pretraining"}
    pretrained = {name: row.task for name, row in RELEASED_CHECKPOINTS.items() if not row.result}
    assert pretrained == {name: "retrieval" if "_itc_" in name else "pretraining" for name in pretrained}
    for name, row in RELEASED_CHECKPOINTS.items():
        assert f"_{row.image_size}" in name and row.size in name


@needs_official
def test_released_name_checks_resolution_and_writes_a_card(tmp_path):
    official = build_official("visual_reasoning", num_labels=2)
    wrong = tmp_path / "beit3_base_patch16_224_nlvr2.pth"
    torch.save({"model": official.state_dict()}, wrong)
    with pytest.raises(ValueError, match="released at 224px but its position table says 32px"):
        convert_checkpoint(wrong, tmp_path / "out", num_attention_heads=4)

    from beit3_hf.model_cards import render_card, write_cards

    card = render_card("beit3_base_patch16_224_nlvr2", RELEASED_CHECKPOINTS["beit3_base_patch16_224_nlvr2"])
    assert "BEiT3ForVisualReasoning" in card and "NLVR2 dev 83.6" in card and "224x224" in card
    assert len(write_cards(tmp_path / "cards")) == len(RELEASED_CHECKPOINTS)


@needs_official
def test_converted_directory_carries_its_preprocessing(tmp_path):
    """With --spm the output holds model, image processor and tokenizer: AutoProcessor + the model run end to end."""
    from transformers import AutoImageProcessor, AutoProcessor

    from test_tokenization import train_spm

    official = build_official("captioning", vocab_size=100)
    checkpoint = tmp_path / "tiny_captioning.pth"
    torch.save({"model": official.state_dict()}, checkpoint)
    spm_path = train_spm(tmp_path / "beit3.spm")
    output_dir = tmp_path / "out"
    convert_checkpoint(checkpoint, output_dir, num_attention_heads=4, spm_path=spm_path)

    image_processor = AutoImageProcessor.from_pretrained(output_dir)
    assert image_processor.size == {"height": 32, "width": 32} and list(image_processor.image_mean) == [0.5] * 3
    processor = AutoProcessor.from_pretrained(output_dir)
    model = beit3_hf.BEiT3ForCaptioning.from_pretrained(output_dir)
    from skimage import data

    inputs = processor(images=data.astronaut(), text="a photo", return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 100)
