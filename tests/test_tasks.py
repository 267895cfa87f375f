"""The task table (`beit3_hf.tasks`): every released file converts as its key layout says, detection tells the
layouts apart by name and shape, everything derived from the table agrees with it, and adding a task is one entry."""

import logging

import pytest
import torch
from torch import nn
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.testing_utils import CaptureLogger

from beit3_hf import (
    BEiT3Config,
    BEiT3ForImageTextRetrieval,
    BEiT3ForMaskedDataModeling,
    BEiT3Model,
    BEiT3PreTrainedModel,
    convert,
    tasks,
)
from beit3_hf.configuration_beit3 import BEIT3_PRESETS
from beit3_hf.convert import (
    convert_checkpoint,
    convert_state_dict,
    detect_layout,
    detect_task,
    infer_config,
    load_converted,
)
from beit3_hf.model_cards import render_card
from beit3_hf.processor_presets import PRESETS, processor_config_for
from beit3_hf.tasks import MIM_CODEBOOK_SIZE, RELEASED_CHECKPOINTS, TASKS, BEiT3Task, layouts

from conftest import tiny_config
from official import build_official, needs_official

PRETRAINING_HEADS = ("mlm_head.weight", "mlm_head.bias", "mim_head.weight", "mim_head.bias")


def build_layout(layout: str, **dims) -> dict[str, torch.Tensor]:
    """An original-format state dict in `layout`: the official model of that task (for "pretraining", the official
    backbone plus the masked-data-modeling heads: text over the vocabulary, image over the codebook)."""
    return build_official(layout, **dims).state_dict()


def _is_text_parameter(key: str) -> bool:
    return ".B." in key or key.startswith("beit3.text_embed.")


@needs_official
@pytest.mark.parametrize("name", list(RELEASED_CHECKPOINTS))
def test_released_file_converts_as_its_key_layout_says(name):
    """A full-size checkpoint (on the meta device) in the layout the row states is detected as the row's task,
    converts strictly into that task's model, and has the parameter count the unilm README publishes."""
    row = RELEASED_CHECKPOINTS[name]
    task = TASKS[row.task]
    size = BEIT3_PRESETS[row.size]
    with torch.device("meta"):
        state_dict = build_layout(
            row.layout, num_labels=task.num_labels or 2, hidden_size=size["hidden_size"],
            layers=size["num_hidden_layers"], heads=size["num_attention_heads"], ffn=size["intermediate_size"],
            image_size=row.image_size, patch_size=16, vocab_size=BEiT3Config().vocab_size,
        )
        assert detect_layout(state_dict) == row.layout
        config, detected = infer_config(state_dict)
        assert detected == row.task
        assert config.image_size == row.image_size and config.use_final_layer_norm == task.final_layer_norm
        assert {key: getattr(config, key) for key in size} == size
        model = task.model_class(config)
        with CaptureLogger(convert.logger) as captured:
            load_converted(model, convert_state_dict(state_dict, row.task))
    assert type(model) is task.model_class
    dropped = layouts()[row.layout].dropped_keys
    assert all(key in captured.out for key in dropped) and (captured.out == "") == (not dropped)

    # the README counts whole millions, rounded or truncated; for ImageNet it counts the vision parameters only
    counted = [
        value.numel() for key, value in state_dict.items()
        if row.task != "image_classification" or not _is_text_parameter(key)
    ]
    millions = sum(counted) / 1e6
    assert row.param_count - 0.5 <= millions < row.param_count + 1, (name, millions, row.param_count)


@needs_official
def test_itc_file_is_a_retrieval_checkpoint(tmp_path):
    """The ITC files hold unilm's retrieval heads at 224px: they convert to the retrieval model, card and all."""
    official = build_official("retrieval", image_size=224, patch_size=16)
    checkpoint = tmp_path / "beit3_base_itc_patch16_224.pth"
    torch.save({"model": official.state_dict()}, checkpoint)
    model = convert_checkpoint(checkpoint, tmp_path / "out", num_attention_heads=4)
    assert type(model) is BEiT3ForImageTextRetrieval and model.config.image_size == 224
    assert torch.equal(model.image_projection.weight, official.vision_head.weight)
    assert torch.equal(model.text_projection.weight, official.language_head.weight)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "BEiT3ForImageTextRetrieval" in card and "pipeline_tag: zero-shot-image-classification" in card


@needs_official
def test_pretraining_layout_converts_with_its_heads_or_to_a_backbone_without_exactly_them(tmp_path):
    state_dict = build_layout("pretraining", vocab_size=100)
    assert detect_layout(state_dict) == "pretraining" and detect_task(state_dict) == "pretraining"
    checkpoint = tmp_path / "pretrained.pth"
    torch.save({"model": state_dict}, checkpoint)
    with CaptureLogger(convert.logger) as captured:
        model = convert_checkpoint(checkpoint, num_attention_heads=4)
    assert type(model) is BEiT3ForMaskedDataModeling and captured.out == ""  # nothing dropped, nothing to warn
    convert.logger.setLevel(logging.INFO)
    try:
        with CaptureLogger(convert.logger) as captured:
            convert_checkpoint(checkpoint, num_attention_heads=4)
    finally:
        convert.logger.setLevel(logging.NOTSET)
    assert "pretraining layout (mlm_head.weight (100, 32), mim_head.weight (8192, 32))" in captured.out
    assert model.config.visual_vocab_size == MIM_CODEBOOK_SIZE and model.config.vocab_size == 100
    for ours, theirs in (("text_head", "mlm_head"), ("image_head", "mim_head")):
        for part in ("weight", "bias"):
            assert torch.equal(getattr(getattr(model, ours), part), state_dict[f"{theirs}.{part}"])

    with CaptureLogger(convert.logger) as captured:
        backbone = convert_checkpoint(checkpoint, task="backbone", num_attention_heads=4)
    assert type(backbone) is BEiT3Model
    assert all(key in captured.out for key in PRETRAINING_HEADS) and "--task pretraining" in captured.out

    bare = {key: value for key, value in state_dict.items() if key not in PRETRAINING_HEADS}
    assert detect_layout(bare) == "backbone"
    expected = convert_state_dict(bare, "backbone")
    converted = backbone.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[key], value) for key, value in expected.items())
    # the same backbone as inside the pretraining model, bit for bit
    assert all(torch.equal(model.beit3.state_dict()[key], value) for key, value in converted.items())

    # another task's model keeps its strictness: only the backbone drops the pretraining heads
    with pytest.raises(ValueError, match=r"no place in a BEiT-3 captioning model: \['mim_head.bias', 'mim_head.w"):
        convert_state_dict(state_dict, "captioning")


@needs_official
def test_detection_reads_shapes_not_only_names(tmp_path):
    """mlm_head over the vocabulary AND an 8192-row mim_head make the pretraining layout; with another codebook
    size detection does not guess (it names `--task pretraining`, which takes any codebook), and an mlm_head not over
    the vocabulary is no text head. A captioning file (mlm_head alone) stays captioning."""
    assert detect_task(build_layout("captioning", vocab_size=100)) == "captioning"

    state_dict = build_layout("pretraining", vocab_size=100, codebook_size=64)
    assert detect_task(state_dict) == "captioning"  # mlm_head over the vocabulary, an unknown mim_head
    with pytest.raises(ValueError, match=r"\['mim_head.bias', 'mim_head.weight'\]\. They fit the pretraining task"):
        convert_state_dict(state_dict, "captioning")
    with pytest.raises(ValueError, match=r"4 checkpoint key\(s\) have no place in a BEiT-3 backbone model"):
        convert_state_dict(state_dict, "backbone")  # not a released pretraining file: nothing is dropped silently
    checkpoint = tmp_path / "codebook64.pth"
    torch.save(state_dict, checkpoint)
    model = convert_checkpoint(checkpoint, task="pretraining", num_attention_heads=4)
    assert model.config.visual_vocab_size == 64 and model.image_head.weight.shape == (64, 32)

    state_dict = build_layout("pretraining", vocab_size=100)
    hidden_size = state_dict["mlm_head.weight"].shape[1]
    state_dict["mlm_head.weight"], state_dict["mlm_head.bias"] = torch.randn(7, hidden_size), torch.randn(7)
    assert detect_task(state_dict) == "backbone"  # an mlm_head not over the vocabulary is no text head
    with pytest.raises(ValueError, match=r"4 checkpoint key\(s\) have no place in a BEiT-3 backbone model"):
        convert_state_dict(state_dict, "backbone")
    model = BEiT3ForMaskedDataModeling(infer_config(state_dict, task="pretraining", num_attention_heads=4)[0])
    with pytest.raises(ValueError, match=r"text_head.weight: checkpoint \(7, 32\) vs model \(100, 32\)"):
        load_converted(model, convert_state_dict(state_dict, "pretraining"))

    del state_dict["mim_head.weight"], state_dict["mim_head.bias"]
    with pytest.raises(ValueError, match=r"checkpoint holds 'mim_head.weight' \(it sets `visual_vocab_size`\)"):
        infer_config(state_dict, task="pretraining")


def test_tables_are_consistent():
    assert all(name == task.name for name, task in TASKS.items())
    assert {layout.task for layout in layouts().values()} <= set(TASKS)
    for name, task in TASKS.items():
        assert task.processor_preset in PRESETS, name
        config = processor_config_for(name)
        assert config["crop_size" if task.processor_preset == "imagenet" else "size"]["height"] == task.image_size
        assert (task.label_key is None) == (task.num_labels is None), name
    for name, row in RELEASED_CHECKPOINTS.items():
        assert row.layout in layouts() and row.size in BEIT3_PRESETS, name
        assert ("_itc_" in name) == (row.layout == "retrieval" and row.image_size == 224), name


@pytest.mark.parametrize("name", list(TASKS))
def test_auto_class_and_pipeline_tag_fit_the_model(name):
    """`import beit3_hf` registered each task's model with its Auto class, and the card's pipeline tag loads it."""
    task = TASKS[name]
    if task.auto_class is not None:
        assert type(task.auto_class.from_config(tiny_config())) is task.model_class
    if task.pipeline_tag is not None:
        _, targeted, _ = PIPELINE_REGISTRY.check_task(task.pipeline_tag)
        assert task.auto_class in targeted["pt"], (task.pipeline_tag, targeted["pt"])


class MaskedDataModelingExample(BEiT3PreTrainedModel):
    """A head class as docs/adding_a_task.md writes one (conversion needs its parameters, not a forward)."""

    def __init__(self, config):
        super().__init__(config)
        self.beit3 = BEiT3Model(config)
        self.mlm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.mim_head = nn.Linear(config.hidden_size, config.visual_vocab_size)
        self.post_init()


@needs_official
def test_adding_a_task_is_one_entry(monkeypatch, tmp_path):
    """docs/adding_a_task.md: one `TASKS` entry (plus its head class) and the files of its layout convert into it;
    the converter, presets and cards need no change."""
    real = TASKS["pretraining"]
    entry = BEiT3Task(
        "pretraining", MaskedDataModelingExample, None, None, "masked data modeling (pretrained)",
        signature=real.signature,
        head_key_mapping={r"^(mlm|mim)_head\.(weight|bias)$": r"\1_head.\2"},
        config_from_rows=real.config_from_rows,
    )
    monkeypatch.setitem(TASKS, "pretraining", entry)

    state_dict = build_layout("pretraining", vocab_size=100)
    checkpoint = tmp_path / "pretrained.pth"
    torch.save(state_dict, checkpoint)
    model = convert_checkpoint(checkpoint, num_attention_heads=4)
    assert type(model) is MaskedDataModelingExample
    assert torch.equal(model.mim_head.weight, state_dict["mim_head.weight"])
    assert RELEASED_CHECKPOINTS["beit3_base_patch16_224"].task == "pretraining"
    assert processor_config_for("pretraining")["size"] == {"height": 224, "width": 224}
    card = render_card("beit3_base_patch16_224", RELEASED_CHECKPOINTS["beit3_base_patch16_224"])
    assert "MaskedDataModelingExample" in card and "Not converted" not in card


def test_pretrained_files_are_the_pretraining_task():
    pretrained = [name for name, row in RELEASED_CHECKPOINTS.items() if not row.result]
    assert len(pretrained) == 6
    for name in pretrained:
        expected = "retrieval" if "_itc_" in name else "pretraining"
        assert RELEASED_CHECKPOINTS[name].task == expected, name
    assert tasks.EXTRA_LAYOUTS == {}  # every released head has a model
    card = render_card("beit3_large_indomain_patch16_224", RELEASED_CHECKPOINTS["beit3_large_indomain_patch16_224"])
    assert "BEiT3ForMaskedDataModeling" in card and "masked data modeling" in card
    assert "pipeline_tag" not in card and "Not converted" not in card
