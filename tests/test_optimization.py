"""Layer-wise learning-rate decay parameter groups (`beit3_hf.optimization`) and the example scripts' `--recipe`,
`--layer_decay`, `--task_head_lr_weight` and `--drop_path_rate` flags."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from beit3_hf import BEiT3ForImageTextRetrieval, BEiT3ForVisualQuestionAnswering, BEiT3Model
from beit3_hf.optimization import layer_decay_parameter_groups, layer_id
from conftest import tiny_config

L = tiny_config().num_hidden_layers


def expected_layer_id(name: str) -> int:
    """The rule, written out independently: embeddings 0, layer k -> k + 1, the rest L + 1."""
    name = name.removeprefix("base_model.model.").removeprefix("beit3.")
    if name.startswith("embeddings."):
        return 0
    match = re.match(r"encoder\.layers\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else L + 1


def group_of(groups):
    """parameter id -> its group, asserting each parameter is in exactly one group."""
    owner = {}
    for group in groups:
        for parameter in group["params"]:
            assert id(parameter) not in owner, "a parameter is in two groups"
            owner[id(parameter)] = group
    return owner


@pytest.mark.parametrize("model_class", [BEiT3ForVisualQuestionAnswering, BEiT3ForImageTextRetrieval, BEiT3Model])
def test_layer_ids(model_class):
    model = model_class(tiny_config())
    ids = {name: layer_id(name, L) for name, _ in model.named_parameters()}
    assert ids == {name: expected_layer_id(name) for name in ids}
    assert set(ids.values()) == set(range(L + 2))
    prefix = "" if model_class is BEiT3Model else "beit3."
    for name, expected in [("embeddings.cls_token", 0), ("embeddings.mask_token", 0),
                           ("embeddings.patch_embedding.weight", 0), ("embeddings.text_position_embedding.weight", 0),
                           ("embeddings.image_position_embedding.weight", 0), ("embeddings.token_embedding.weight", 0),
                           ("encoder.layers.0.self_attn.q_proj.image.weight", 1),
                           ("encoder.layers.1.mlp.text.fc2.weight", 2), ("final_layer_norm.image.weight", L + 1)]:
        assert ids[prefix + name] == expected, name
    if model_class is BEiT3ForVisualQuestionAnswering:
        assert ids["classifier.dense2.weight"] == ids["pooler.dense.weight"] == L + 1
    if model_class is BEiT3ForImageTextRetrieval:
        assert ids["logit_scale"] == ids["image_projection.weight"] == L + 1


@pytest.mark.parametrize("model_class", [BEiT3ForVisualQuestionAnswering, BEiT3ForImageTextRetrieval])
def test_scales_weight_decay_and_head_lr(model_class):
    model = model_class(tiny_config())
    groups = layer_decay_parameter_groups(model, 1e-3, 0.05, layer_decay=0.65, head_lr_scale=20.0)
    owner = group_of(groups)
    no_decay_expected = {"beit3.embeddings.image_position_embedding.weight", "beit3.embeddings.cls_token",
                         "logit_scale"}
    for name, parameter in model.named_parameters():
        group = owner.pop(id(parameter))
        is_head = name.startswith("classifier.")
        scale = 0.65 ** (L + 1 - expected_layer_id(name)) * (20.0 if is_head else 1.0)
        assert group["lr_scale"] == pytest.approx(scale), name
        assert group["lr"] == pytest.approx(1e-3 * scale), name
        assert group["layer_id"] == expected_layer_id(name)
        no_decay = parameter.ndim <= 1 or name.endswith(".bias") or name in no_decay_expected
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert not owner
    owner = group_of(groups)
    weight_decay = {name: owner[id(parameter)]["weight_decay"] for name, parameter in model.named_parameters()}
    # unilm decays the text position table, the mask token and the token embedding
    for name in ("beit3.embeddings.text_position_embedding.weight", "beit3.embeddings.mask_token",
                 "beit3.embeddings.token_embedding.weight"):
        assert weight_decay[name] == 0.05
    for name in no_decay_expected & set(weight_decay):
        assert weight_decay[name] == 0.0


def test_head_lr_weight_only_on_the_classifier():
    model = BEiT3ForVisualQuestionAnswering(tiny_config())
    owner = group_of(layer_decay_parameter_groups(model, 1.0, 0.0, head_lr_scale=20.0))
    boosted = {name for name, parameter in model.named_parameters() if owner[id(parameter)]["lr"] == 20.0}
    assert boosted == {name for name, _ in model.named_parameters() if name.startswith("classifier.")}
    assert all(owner[id(p)]["lr"] == 1.0 for n, p in model.named_parameters() if n not in boosted)  # pooler too


def test_frozen_parameters_are_left_out():
    model = BEiT3ForImageTextRetrieval(tiny_config())
    for parameter in model.beit3.embeddings.parameters():
        parameter.requires_grad_(False)
    owner = group_of(layer_decay_parameter_groups(model, 1e-3, 0.05, layer_decay=0.5))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(owner) == trainable
    assert all(group["layer_id"] > 0 for group in owner.values())


def test_peft_wrapped_model():
    pytest.importorskip("peft")
    from beit3_hf.peft_utils import apply_lora

    model = apply_lora(BEiT3ForVisualQuestionAnswering(tiny_config()))
    groups = layer_decay_parameter_groups(model, 1e-3, 0.05, layer_decay=0.5, head_lr_scale=10.0)
    owner = group_of(groups)
    named = dict(model.named_parameters())
    assert set(owner) == {id(p) for p in named.values() if p.requires_grad}
    lora = [name for name in named if "lora_" in name]
    assert lora
    for name in lora:
        assert owner[id(named[name])]["layer_id"] == expected_layer_id(name) > 0, name
    heads = [name for name, p in named.items() if p.requires_grad and ".modules_to_save." in name]
    assert any(name.startswith("base_model.model.classifier.") for name in heads)
    for name in heads:
        group = owner[id(named[name])]
        assert group["layer_id"] == L + 1
        assert group["lr_scale"] == pytest.approx(10.0 if ".classifier." in name else 1.0), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer_decay=0.0), "layer_decay.*0.0"),
    (dict(layer_decay=1.5), "layer_decay.*1.5"),
    (dict(layer_decay=float("nan")), "layer_decay.*nan"),
    (dict(head_lr_scale=0.0), "head_lr_scale.*0.0"),
    (dict(weight_decay=-0.1), "weight_decay.*-0.1"),
    (dict(learning_rate=-1.0), "learning_rate.*-1.0"),
    (dict(head_prefixes="classifier"), "head_prefixes.*'classifier'"),
    (dict(num_layers=0), "num_layers.*0"),
])
def test_bad_values(kwargs, match):
    model = BEiT3ForVisualQuestionAnswering(tiny_config())
    arguments = {"learning_rate": 1e-3, "weight_decay": 0.05, **kwargs}
    with pytest.raises(ValueError, match=match):
        layer_decay_parameter_groups(model, **arguments)


def test_layer_id_rejects_a_layer_beyond_the_model():
    with pytest.raises(ValueError, match="layer 5"):
        layer_id("beit3.encoder.layers.5.mlp.image.fc1.weight", 2)
    with pytest.raises(ValueError, match="num_layers.*-1"):
        layer_id("logit_scale", -1)
    model = BEiT3ForVisualQuestionAnswering(tiny_config())
    assert not any(math.isnan(g["lr"]) for g in layer_decay_parameter_groups(model, 0.0, 0.0))


# ---------------------------------------------------------------------------------------------------------------
# The example scripts
# ---------------------------------------------------------------------------------------------------------------

pytest.importorskip("datasets", reason="the example scripts need the optional `datasets` package")
from test_examples import TEXT_OVERRIDES, common_args, load_script  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import trainer_utils  # noqa: E402


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from beit3_hf.data import generate_shapes_dataset

    path = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(path, num_train=8, num_test=4, image_size=32)
    return path


class OptimizerRecorder(TrainerCallback):
    def __init__(self):
        self.groups = self.model = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model = model
        self.groups = [{k: v for k, v in group.items()} for group in optimizer.param_groups]


def test_vqa_script_recipe_layer_decay_and_explicit_flags(shapes_dir, tmp_path, caplog):
    recorder = OptimizerRecorder()
    args = ["--dataset_dir", str(shapes_dir / "vqa"), "--tokenizer_dir", str(shapes_dir / "tokenizer"),
            "--config_overrides", TEXT_OVERRIDES, "--recipe", "vqav2_base", "--layer_decay", "0.65",
            "--log_level", "info", *common_args(tmp_path, "--do_eval", "False", steps=1)]
    with caplog.at_level("INFO", logger="trainer_utils"):
        load_script("run_vqa").main(args, callbacks=[recorder])
    model, groups = recorder.model, recorder.groups
    owner = group_of(groups)
    assert set(owner) == {id(p) for p in model.parameters() if p.requires_grad}
    for name, parameter in model.named_parameters():
        group = owner[id(parameter)]
        # --learning_rate 0.01 and --layer_decay 0.65 given explicitly win over the recipe's 3e-5 and 1.0
        scale = 0.65 ** (L + 1 - expected_layer_id(name)) * (20.0 if name.startswith("classifier.") else 1.0)
        assert group["initial_lr"] == pytest.approx(0.01 * scale), name
        assert group["betas"] == (0.9, 0.98)  # the recipe's
        assert group["weight_decay"] in (0.0, 0.01)  # the recipe's
    assert model.config.drop_path_rate == pytest.approx(0.1)  # the recipe's
    line = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("Recipe vqav2"))
    assert "task_head_lr_weight=20.0" in line and "overridden on the command line: " in line
    assert "learning_rate=0.01" in line.split("overridden")[1] and "layer_decay=0.65" in line.split("overridden")[1]


def test_drop_path_flag_and_recipe_parsing(tmp_path):
    data = ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    model_args, _, training_args = trainer_utils.parse_arguments(
        load_script("run_visual_reasoning").VisualReasoningArguments,
        data + ["--recipe", "nlvr2_large", "--drop_path_rate", "0.3"], task="visual_reasoning",
    )
    assert model_args.drop_path_rate == 0.3 and model_args.layer_decay == 0.85
    assert (training_args.learning_rate, training_args.weight_decay, training_args.warmup_steps) == (3e-4, 0.2, 0.25)
    assert training_args.lr_scheduler_type == "cosine_with_min_lr" and training_args.num_train_epochs == 20
    # without a recipe: the scripts' defaults
    model_args, _, training_args = trainer_utils.parse_arguments(trainer_utils.DataArguments, data, task="vqa")
    assert (model_args.layer_decay, model_args.task_head_lr_weight, model_args.drop_path_rate) == (1.0, 1.0, None)
    assert training_args.weight_decay == 0.05
    # from a .json file, where the file's values win likewise
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"),
                                  "recipe": "imagenet_base", "learning_rate": 1e-3}))
    classification_arguments = load_script("run_image_classification").ImageClassificationArguments
    model_args, data_args, training_args = trainer_utils.parse_arguments(classification_arguments, [str(config)],
                                                                         task="image_classification")
    assert (data_args.augment, data_args.mixup, data_args.cutmix, data_args.reprob) == ("imagenet", 0.8, 1.0, 0.25)
    assert training_args.learning_rate == 1e-3 and training_args.label_smoothing_factor == 0.1
    assert model_args.layer_decay == 0.65 and training_args.remove_unused_columns is False


def test_drop_path_rate_reaches_the_model(tmp_path):
    model_args = trainer_utils.ModelArguments(config_overrides=TEXT_OVERRIDES + ",vocab_size=100", drop_path_rate=0.2)
    training_args = trainer_utils.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model = trainer_utils.prepare_model(BEiT3ForVisualQuestionAnswering, model_args, training_args, num_labels=3)
    assert model.config.drop_path_rate == 0.2
    assert model.beit3.encoder.layers[-1].drop_path.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize("extra, match", [
    (["--layer_decay", "0"], "--layer_decay.*0.0"),
    (["--layer_decay", "1.2"], "--layer_decay.*1.2"),
    (["--task_head_lr_weight", "-1"], "--task_head_lr_weight.*-1.0"),
    (["--drop_path_rate", "1.0"], "--drop_path_rate.*1.0"),
    (["--recipe", "nlvr2_base"], "'nlvr2_base' is for the visual_reasoning script"),
])
def test_bad_flags(tmp_path, extra, match):
    data = ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=match):
        trainer_utils.parse_arguments(trainer_utils.DataArguments, data + extra, task="vqa")
    with pytest.raises(ValueError, match="Unknown --recipe 'vqav3'"):
        trainer_utils.recipe_defaults("vqav3", "vqa", set())


def test_every_recipe_fits_its_script():
    scripts = {"vqa": "run_vqa", "visual_reasoning": "run_visual_reasoning", "retrieval": "run_retrieval",
               "image_classification": "run_image_classification", "captioning": "run_captioning"}
    for name, recipe in trainer_utils.RECIPES.items():
        assert name.split("_")[0] in {"vqav2", "nlvr2", "retrieval", "imagenet", "captioning"}
        script = load_script(scripts[recipe["task"]])
        data_class = next(value for key, value in vars(script).items()
                          if isinstance(value, type) and issubclass(value, trainer_utils.DataArguments)
                          and value is not trainer_utils.DataArguments)
        parser = trainer_utils.HfArgumentParser((trainer_utils.ModelArguments, data_class,
                                                 trainer_utils.TrainingArguments))
        values = trainer_utils.recipe_defaults(name, recipe["task"], {action.dest for action in parser._actions})
        assert 0 < values["layer_decay"] <= 1 and 0 <= values["drop_path_rate"] < 1
