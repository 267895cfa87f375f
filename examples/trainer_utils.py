"""What the example scripts (`run_*.py`, next to this file) share: the model and data arguments, the scripts'
TrainingArguments defaults, loading the data, the processor and the model (with LoRA / QLoRA flags), and the
train / save / evaluate ending, the official fine-tuning recipes (`--recipe`) and the Trainer with layer-wise
learning-rate decay (`BEiT3Trainer`). Not part of the `beit3_hf` package: the library half (LoRA, quantisation,
loading, collators, parameter groups) is `beit3_hf.peft_utils`, `beit3_hf.collators` and `beit3_hf.optimization`."""

from __future__ import annotations

import argparse
import atexit
import json
import logging as pylogging
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import datasets
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.utils import logging

from beit3_hf import BEiT3Config, BEiT3ImageProcessor, BEiT3PreTrainedModel, BEiT3Processor, load_beit3_tokenizer
from beit3_hf.augmentation import AUGMENTATIONS, FLIP_MODES, build_train_transform
from beit3_hf.optimization import layer_decay_parameter_groups
from beit3_hf.peft_utils import LORA_TARGETS, apply_lora, build_config, load_model, parse_config_overrides
from beit3_hf.processor_presets import TASK_PRESETS

logger = logging.get_logger(__name__)

_COSINE = dict(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-6})
_SOURCE = "unilm beit3/get_started/get_started_for_{}.md"
RECIPES = {
    # VQAv2: 10 epochs, 1 of warmup, 8 GPUs x 16; randaug; 480 px
    "vqav2_base": dict(task="vqa", source=_SOURCE.format("vqav2"), learning_rate=3e-5, num_train_epochs=10,
                       warmup_steps=0.1, weight_decay=0.01, drop_path_rate=0.1, layer_decay=1.0,
                       task_head_lr_weight=20.0, adam_beta2=0.98, augment="randaug", per_device_train_batch_size=16,
                       total_batch_size=128, image_size=480),
    "vqav2_large": dict(task="vqa", source=_SOURCE.format("vqav2"), learning_rate=2e-5, num_train_epochs=10,
                        warmup_steps=0.1, weight_decay=0.01, drop_path_rate=0.15, layer_decay=1.0,
                        task_head_lr_weight=20.0, adam_beta2=0.98, augment="randaug", per_device_train_batch_size=16,
                        total_batch_size=128, image_size=480),
    # NLVR2: 20 epochs, 5 of warmup, 8 GPUs x 32; 224 px
    "nlvr2_base": dict(task="visual_reasoning", source=_SOURCE.format("nlvr2"), learning_rate=7e-4,
                       num_train_epochs=20, warmup_steps=0.25, weight_decay=0.2, drop_path_rate=0.2, layer_decay=0.65,
                       augment="crop", per_device_train_batch_size=32, total_batch_size=256, image_size=224),
    "nlvr2_large": dict(task="visual_reasoning", source=_SOURCE.format("nlvr2"), learning_rate=3e-4,
                        num_train_epochs=20, warmup_steps=0.25, weight_decay=0.2, drop_path_rate=0.2,
                        layer_decay=0.85, augment="crop", per_device_train_batch_size=32, total_batch_size=256,
                        image_size=224),
    # COCO retrieval: 15 epochs, 3 of warmup, 3072 in all (16 GPUs x 192 / 32 GPUs x 96); 384 px
    "retrieval_base": dict(task="retrieval", source=_SOURCE.format("retrieval"), learning_rate=2e-4,
                           num_train_epochs=15, warmup_steps=0.2, weight_decay=0.05, drop_path_rate=0.2,
                           layer_decay=0.65, augment="crop", per_device_train_batch_size=192, total_batch_size=3072,
                           image_size=384),
    "retrieval_large": dict(task="retrieval", source=_SOURCE.format("retrieval"), learning_rate=5e-5,
                            num_train_epochs=15, warmup_steps=0.2, weight_decay=0.05, drop_path_rate=0.2,
                            layer_decay=0.85, augment="crop", per_device_train_batch_size=96, total_batch_size=3072,
                            image_size=384),
    # ImageNet-1k: 50 epochs, 5 of warmup, 8 GPUs x 128; rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 /
    # cutmix 1.0, label smoothing 0.1 (run_beit3_finetuning.py's defaults); 224 px
    "imagenet_base": dict(task="image_classification", source=_SOURCE.format("image_classification"),
                          learning_rate=7e-4, num_train_epochs=50, warmup_steps=0.1, weight_decay=0.05,
                          drop_path_rate=0.15, layer_decay=0.65, label_smoothing_factor=0.1, augment="imagenet",
                          reprob=0.25, mixup=0.8, cutmix=1.0,
                          per_device_train_batch_size=128, total_batch_size=1024, image_size=224),
    "imagenet_large": dict(task="image_classification", source=_SOURCE.format("image_classification"),
                           learning_rate=2e-4, num_train_epochs=50, warmup_steps=0.1, weight_decay=0.05,
                           drop_path_rate=0.25, layer_decay=0.8, label_smoothing_factor=0.1, augment="imagenet",
                           reprob=0.25, mixup=0.8, cutmix=1.0,
                           per_device_train_batch_size=128, total_batch_size=1024, image_size=224),
    # COCO captioning: 10 epochs, 1 of warmup, 8 GPUs x 32, mask prob 0.7, 32 tokens; randaug; label smoothing 0.1
    # (run_beit3_finetuning.py's default); 480 px
    "captioning_base": dict(task="captioning", source=_SOURCE.format("captioning"), learning_rate=4e-5,
                            num_train_epochs=10, warmup_steps=0.1, weight_decay=0.05, drop_path_rate=0.1,
                            layer_decay=1.0, mask_prob=0.7, max_text_length=32, augment="randaug",
                            label_smoothing=0.1, drop_worst_ratio=0.2, drop_worst_after=12000,
                            per_device_train_batch_size=32, total_batch_size=256, image_size=480),
    "captioning_large": dict(task="captioning", source=_SOURCE.format("captioning"), learning_rate=8e-6,
                             num_train_epochs=10, warmup_steps=0.1, weight_decay=0.05, drop_path_rate=0.1,
                             layer_decay=1.0, mask_prob=0.7, max_text_length=32, augment="randaug",
                             label_smoothing=0.1, drop_worst_ratio=0.2, drop_worst_after=12000,
                             per_device_train_batch_size=32, total_batch_size=256, image_size=480),
}
"""The official fine-tuning recipes (`--recipe NAME`), from the unilm BEiT-3 `get_started` guides: their values
become the defaults of the script's arguments, so that flags given on the command line still win. Every recipe also
uses unilm's schedule (cosine to a 1e-6 floor, `_COSINE`) and AdamW with betas (0.9, 0.999) unless it says otherwise.
`warmup_steps` is a fraction of training (unilm's warmup epochs / epochs). `per_device_train_batch_size` is unilm's
per-GPU batch; `total_batch_size` (unilm's GPUs x per-GPU batch) and `image_size` (set by the checkpoint) are only
reported. `augment` is the training augmentation (`--augment`, `beit3_hf.augmentation`: "crop" = unilm's random resized
crop + flip, "randaug" = with its RandAugment, "imagenet" = timm's); the ImageNet recipes add random erasing and
mixup / cutmix (`--reprob`, `--mixup`, `--cutmix`), the captioning ones unilm's label smoothing (`--label_smoothing`)
and drop-worst loss (`--drop_worst_ratio 0.2 --drop_worst_after 12000`: the 20% largest token losses of a batch
left out after 12k steps)."""

_RECIPE_INFO = ("task", "source", "total_batch_size", "image_size")


@dataclass
class ModelArguments:
    """Where the model comes from, and LoRA / quantisation."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A converted BEiT-3 checkpoint directory (see beit3_hf/convert.py). Leave it out to train "
                          "from random weights built from --config_name / --config_overrides."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Random init: a preset (base, large, giant) or a config.json path."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Random init: config fields to change, e.g. "
                          "'hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256'."},
    )
    tokenizer_dir: str | None = field(
        default=None, metadata={"help": "Tokenizer directory, for a checkpoint without one or a random init."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise checkpoint heads whose shape differs (e.g. other labels)."}
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (heads in full) instead of all weights."})
    lora_target: str = field(
        default="all",
        metadata={"help": "Experts that get adapters: all, image (image experts only) or text (text experts only).",
                  "choices": sorted(LORA_TARGETS)},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    merge_lora: bool = field(
        default=False, metadata={"help": "After training, also save the merged model in <output_dir>/merged."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "QLoRA: quantise the backbone to 8 bits."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: quantise the backbone to 4 bits (NF4)."})
    drop_path_rate: float | None = field(
        default=None,
        metadata={"help": "Stochastic depth: the config's `drop_path_rate` (layer i drops its branches with "
                          "probability linspace(0, rate, layers)[i]). Default: the checkpoint's / config's."},
    )
    layer_decay: float = field(
        default=1.0,
        metadata={"help": "Layer-wise learning-rate decay in (0, 1]: layer i of L learns at lr * decay^(L + 1 - i) "
                          "(embeddings 0, heads L + 1). 1 = off."},
    )
    task_head_lr_weight: float = field(
        default=1.0, metadata={"help": "Learning-rate multiplier of the task head's `classifier` (unilm VQAv2: 20)."}
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "An official fine-tuning recipe whose values become the defaults (explicit flags win).",
                  "choices": sorted(RECIPES)},
    )

    def __post_init__(self):
        if self.drop_path_rate is not None and not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"--drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}.")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"--layer_decay must be in (0, 1] (1 = off), got {self.layer_decay!r}.")
        if not self.task_head_lr_weight > 0:
            raise ValueError(f"--task_head_lr_weight must be > 0, got {self.task_head_lr_weight!r}.")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"Unknown --recipe {self.recipe!r}; choose one of {sorted(RECIPES)}.")


@dataclass
class DataArguments:
    """Which data, how much of it, and its column names."""

    dataset_dir: str = field(
        metadata={"help": "An imagefolder directory with train/ and test/ splits: class sub-folders (classification) "
                          "or images plus a metadata.jsonl with the other columns, as each task of the shapes world "
                          "(python -m beit3_hf.data.shapes) is written; or a DatasetDict saved with save_to_disk."},
    )
    train_split: str = field(default="train")
    eval_split: str = field(default="test")
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    image_column: str = field(default="image")
    max_text_length: int = field(default=64, metadata={"help": "Longest text in tokens, <s> and </s> included."})
    augment: str = field(
        default="none",
        metadata={"help": "Training-image augmentation (beit3_hf.augmentation; evaluation is never augmented): none, "
                          "crop (unilm: random resized crop 0.5-1 + flip), randaug (crop + unilm's RandAugment) or "
                          "imagenet (timm: crop 0.08-1 + flip + rand-m9-mstd0.5-inc1).",
                  "choices": list(AUGMENTATIONS)},
    )
    augment_flip: str = field(
        default="auto",
        metadata={"help": "Horizontal flips of --augment: auto (not for examples whose texts say left or right), "
                          "always (unilm) or never.", "choices": list(FLIP_MODES)},
    )

    # whether the script applies --augment (`augment_training_data`); the others refuse anything but "none"
    augments_images: ClassVar[bool] = False

    def __post_init__(self):
        if self.augment != "none" and not self.augments_images:
            raise ValueError(f"--augment {self.augment!r}: this script does not augment its training images (the "
                             "classification, VQA, NLVR2, retrieval and captioning scripts do).")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        if self.augment_flip not in FLIP_MODES:
            raise ValueError(f"--augment_flip must be one of {FLIP_MODES}, got {self.augment_flip!r}.")


SCRIPT_DEFAULTS = dict(
    do_train=True,
    do_eval=True,
    remove_unused_columns=False,  # the collators need the raw `image`/`text` columns
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=10,
    report_to="none",
    weight_decay=0.05,
    warmup_steps=0.1,  # a fraction of the training steps
    seed=42,
)
"""TrainingArguments defaults of the example scripts (each still overridable on the command line). On a machine
without a GPU `use_cpu` is on, so that `torchrun` on CPUs trains one model with gloo (without it every process
trains alone); `bf16` is on where the GPU supports it."""


def parse_arguments(
    data_class: type[DataArguments] = DataArguments, args: Sequence[str] | None = None, task: str | None = None,
    **defaults,
):
    """
    `(ModelArguments, data_class, TrainingArguments)` from the command line (`args`, default `sys.argv[1:]`) or
    from a single `.json` file, with `SCRIPT_DEFAULTS`, the script's own `defaults` (e.g. a learning rate) and, with
    `--recipe`, the recipe's values (`RECIPES`) as defaults: arguments given explicitly win over all of them. A
    recipe must be one of the script's `task`; the values used are logged.
    """
    parser = HfArgumentParser((ModelArguments, data_class, TrainingArguments))
    has_gpu = torch.cuda.is_available()
    defaults = {**SCRIPT_DEFAULTS, "use_cpu": not has_gpu, "bf16": has_gpu and torch.cuda.is_bf16_supported(),
                **defaults}
    args = sys.argv[1:] if args is None else list(args)
    from_file = len(args) == 1 and args[0].endswith(".json")
    if from_file:
        with open(os.path.abspath(args[0])) as file:
            file_values = json.load(file)
        recipe = file_values.get("recipe")
    else:
        recipe_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        recipe_parser.add_argument("--recipe")
        recipe = recipe_parser.parse_known_args(args)[0].recipe
    recipe_values = recipe_defaults(recipe, task, {action.dest for action in parser._actions})
    defaults.update(recipe_values)
    if from_file:
        parsed = parser.parse_dict({**defaults, **file_values})
    else:
        parser.set_defaults(**defaults)
        parsed = parser.parse_args_into_dataclasses(args)
    if recipe is not None:
        setup_logging(parsed[2])
        log_recipe(recipe, recipe_values, parsed)
    setup_deepspeed(parsed[2])
    return parsed


def run_as_script(main) -> None:
    """
    Runs a script's `main()`. In a multi-process run it then destroys the process group and, once the exit
    handlers (logging's flush among them) have run, ends the process without the interpreter's teardown: with
    torch 2.13 a DistributedDataParallel model keeps its gloo group's threads running past `destroy_process_group`
    and its own deletion, and those threads can abort the teardown ("terminate called without an active
    exception", SIGABRT) after the run has finished and saved. An exception in `main()` propagates as usual.
    """
    main()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.destroy_process_group()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def setup_deepspeed(training_args) -> None:
    """
    With `--deepspeed` on CPUs (`use_cpu`), hands DeepSpeed the gloo process group that `torchrun` and the
    Trainer's arguments have set up. On GPUs accelerate does this itself; on CPUs it does not, and then ZeRO-3's
    partitioned init (`deepspeed.zero.Init` inside `from_pretrained`) counts one process instead of the world.
    """
    if not (training_args.deepspeed and training_args.use_cpu and torch.distributed.is_initialized()):
        return
    import deepspeed

    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


@contextmanager
def whole_under_zero3(training_args):
    """
    Loads a frozen helper model (a visual tokenizer run by the collator) whole: under DeepSpeed ZeRO-3 every
    `from_pretrained` would otherwise partition its weights across the processes, which only the trained model's
    DeepSpeed engine gathers.
    """
    config = getattr(training_args, "hf_deepspeed_config", None)
    if config is None or not config.is_zero3():
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(config)


def recipe_defaults(recipe: str | None, task: str | None, known: set[str]) -> dict:
    """The argument defaults of `recipe` (a key of `RECIPES`) for a script of `task` with the arguments `known`."""
    if recipe is None:
        return {}
    if recipe not in RECIPES:
        raise ValueError(f"Unknown --recipe {recipe!r}; choose one of {sorted(RECIPES)}.")
    values = RECIPES[recipe]
    if task is not None and values["task"] != task:
        raise ValueError(f"--recipe {recipe!r} is for the {values['task']} script, not {task}.")
    values = {**_COSINE, **{key: value for key, value in values.items() if key not in _RECIPE_INFO}}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--recipe {recipe!r} sets {unknown}, which this script does not have.")
    return values


def log_recipe(recipe: str, recipe_values: dict, parsed) -> None:
    """One line: the recipe's values in use, those overridden on the command line, and unilm's total batch."""
    used, overridden = [], []
    for key, value in recipe_values.items():
        actual = next(getattr(group, key) for group in parsed if hasattr(group, key))
        if key == "lr_scheduler_kwargs" and isinstance(actual, str):
            actual = json.loads(actual)
        (used if actual == value else overridden).append(f"{key}={getattr(actual, 'value', actual)}")
    info = RECIPES[recipe]
    training_args = parsed[2]
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    logger.info(
        f"Recipe {recipe} ({info['source']}): {', '.join(used)}"
        + (f"; overridden on the command line: {', '.join(overridden)}" if overridden else "")
        + f"; unilm's total batch {info['total_batch_size']} and image size {info['image_size']}"
        f" (this run: {batch} x {training_args.world_size} processes)."
    )


def setup_logging(training_args) -> None:
    """transformers/datasets verbosity from `--log_level` (warnings only on the non-main processes), also for the
    messages of these helpers (the recipe in use, LoRA's trainable share: `--log_level info`)."""
    log_level = training_args.get_process_log_level()
    # this module's logger is outside the `transformers` hierarchy: give it a level, and the root a handler
    pylogging.basicConfig(format="[%(levelname)s|%(name)s] %(asctime)s >> %(message)s")
    logger.setLevel(log_level)
    logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    logging.enable_default_handler()
    logging.enable_explicit_format()


def load_task_dataset(data_args: DataArguments):
    """
    The training and evaluation splits of `data_args.dataset_dir`: a directory written by `Dataset(Dict).save_to_disk`,
    or an `imagefolder` (class sub-folders, or images plus a `metadata.jsonl` holding the other columns, as the
    shapes-world generator writes), cut to `max_train_samples` / `max_eval_samples`.
    """
    path = data_args.dataset_dir
    if not os.path.isdir(path):
        raise ValueError(f"`dataset_dir` {path!r} is not a directory.")
    metadata = {split: os.path.join(path, split, "metadata.jsonl")
                for split in (data_args.train_split, data_args.eval_split)}
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
    elif all(os.path.isfile(file) for file in metadata.values()):
        # the same imagefolder, without listing and fingerprinting every image first (30 s for 20k images)
        dataset = datasets.load_dataset("imagefolder", data_files=metadata)
    else:
        dataset = datasets.load_dataset("imagefolder", data_dir=path)
    splits = []
    for split, limit in ((data_args.train_split, data_args.max_train_samples),
                         (data_args.eval_split, data_args.max_eval_samples)):
        if split not in dataset:
            raise ValueError(f"{path!r} has no {split!r} split; it has {sorted(dataset)}.")
        part = dataset[split]
        splits.append(part.select(range(min(limit, len(part)))) if limit is not None else part)
    return tuple(splits)


def prepare_model(
    model_class: type[BEiT3PreTrainedModel], model_args: ModelArguments, training_args, tokenizer=None, **config_kwargs
):
    """
    The model to train: `load_model` with the script's arguments (seeded first, so every process and every rerun
    starts from the same random init), then LoRA adapters with `--lora`. Quantised weights cannot be trained
    directly, so `--load_in_8bit` / `--load_in_4bit` need `--lora` (QLoRA).

    With a `tokenizer`, the config takes its special-token ids (`<mask>` above all, which captioning generation
    feeds) and a random init sizes its vocabulary to it unless `--config_overrides` sets `vocab_size`.
    """
    if (model_args.load_in_8bit or model_args.load_in_4bit) and not model_args.lora:
        raise ValueError("Quantised (--load_in_8bit / --load_in_4bit) weights are frozen: add --lora to train (QLoRA).")
    if tokenizer is not None:
        config_kwargs.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            mask_token_id=tokenizer.mask_token_id,
        )
        vocab_size = model_config(model_args).vocab_size
        if model_args.model_name_or_path is None and "vocab_size" not in parse_config_overrides(
            model_args.config_overrides
        ):
            vocab_size = config_kwargs["vocab_size"] = len(tokenizer)
        if len(tokenizer) > vocab_size:
            raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab_size}.")
    if model_args.drop_path_rate is not None:
        config_kwargs["drop_path_rate"] = model_args.drop_path_rate
    set_seed(training_args.seed)
    model = load_model(
        model_class,
        model_args.model_name_or_path,
        config_name=model_args.config_name,
        config_overrides=model_args.config_overrides,
        load_in_8bit=model_args.load_in_8bit,
        load_in_4bit=model_args.load_in_4bit,
        gradient_checkpointing=bool(training_args.activation_checkpointing),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **config_kwargs,
    )
    if model_args.lora:
        if model_args.model_name_or_path is None:
            logger.warning("LoRA on a randomly initialised model: the adapters are only meaningful with that init.")
        model = apply_lora(model, model_args.lora_target, model_args.lora_r, model_args.lora_alpha,
                           model_args.lora_dropout)
        trainable, total = model.get_nb_trainable_parameters()
        logger.info(f"LoRA ({model_args.lora_target}): {trainable:,} of {total:,} parameters trainable "
                    f"({100 * trainable / total:.2f}%).")
    return model


class BEiT3Trainer(Trainer):
    """
    A `Trainer` whose optimizer (the one `--optim` names, e.g. AdamW with `--adam_beta1/2`) gets BEiT-3's parameter
    groups (`beit3_hf.optimization.layer_decay_parameter_groups`): layer-wise learning-rate decay (`layer_decay`),
    a learning-rate multiplier on the task head (`task_head_lr_weight`), and unilm's weight-decay exemptions.
    Subclass it instead of `Trainer` to keep them.

    While training (never in evaluation), `train_batch_transform(inputs)` changes each batch (mixup / cutmix:
    `beit3_hf.augmentation.ClassificationBatchAugment`) and `train_loss(outputs, labels)` replaces the model's loss
    (the model is then called without `labels`): soft-target cross-entropy, unilm's smoothed captioning loss.
    """

    def __init__(self, *args, layer_decay: float = 1.0, task_head_lr_weight: float = 1.0,
                 train_batch_transform=None, train_loss=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay
        self.task_head_lr_weight = task_head_lr_weight
        self.train_batch_transform = train_batch_transform
        self.train_loss = train_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or (self.train_batch_transform is None and self.train_loss is None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.train_batch_transform is not None:
            inputs = self.train_batch_transform(dict(inputs))
        if self.train_loss is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.train_loss(outputs, labels)  # a mean over the batch: the Trainer divides it for accumulation
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            opt_model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                # an optimizer that builds its own parameter groups (GaLore, LOMO, Muon, ...)
                if self.layer_decay != 1 or self.task_head_lr_weight != 1:
                    raise ValueError(f"--optim {self.args.optim} builds its own parameter groups: it cannot be "
                                     "combined with --layer_decay / --task_head_lr_weight.")
            else:
                groups = layer_decay_parameter_groups(
                    opt_model, self.args.learning_rate, self.args.weight_decay, self.layer_decay,
                    self.task_head_lr_weight,
                )
                self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)


def augment_training_data(train_dataset, data_args: DataArguments, processor, image_columns, text_columns=()):
    """
    `--augment`: sets the training transform of `beit3_hf.augmentation.build_train_transform` on `train_dataset`
    (`set_transform`, on the fly; the evaluation split keeps the processor's transform alone). Images come out at the
    processor's input size, which the processor then only normalises. `text_columns` decide `--augment_flip auto`.
    Returns the transform, or `None` with `--augment none`.
    """
    image_processor = getattr(processor, "image_processor", processor)
    size = image_processor.crop_size if image_processor.do_center_crop else image_processor.size
    transform = build_train_transform(data_args.augment, size.height, flip=data_args.augment_flip)
    if transform is None:
        return None
    text_columns = [column for column in text_columns if column in train_dataset.column_names]
    train_dataset.set_transform(transform.dataset_transform(image_columns, text_columns))
    flips = {"always": "always", "never": "never"}.get(
        data_args.augment_flip, f"unless {', '.join(text_columns)} say left or right" if text_columns else "always")
    logger.info(f"Training images augmented with {data_args.augment!r} at {size.height} px (flips: {flips}).")
    return transform


def evaluation_progress(trainer, iterable, total: int | None = None, desc: str = ""):
    """`iterable` behind a progress bar (tqdm) on the local main process, unless `--disable_tqdm`: for evaluations
    the Trainer's own bars do not cover (caption generation)."""
    from tqdm.auto import tqdm

    disable = bool(trainer.args.disable_tqdm) or not trainer.is_local_process_zero()
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True)


def report_evaluation(trainer, line: str) -> None:
    """The one-line summary of a long evaluation (what was evaluated, how long it took, the headline metrics), on
    stdout of the main process, where the Trainer prints its logs."""
    if trainer.is_world_process_zero():
        print(line, flush=True)


def text_length(data_args: DataArguments, model) -> int:
    """`--max_text_length`, cut to what the model's text position table holds."""
    limit = model.config.max_text_positions
    if data_args.max_text_length > limit:
        logger.warning(f"--max_text_length {data_args.max_text_length} is cut to the model's {limit} text positions.")
    return min(data_args.max_text_length, limit)


def train_and_evaluate(trainer, model_args: ModelArguments, training_args, evaluate=None) -> dict:
    """
    The end of every script: train (resuming from `--resume_from_checkpoint`, a path or `last`), save the model
    (the adapters with `--lora`, plus the merged model in `<output_dir>/merged` with `--merge_lora`) and the
    processor, evaluate, and write `train_results.json`, `eval_results.json` and `all_results.json` to the output
    directory. `evaluate(trainer)` replaces `trainer.evaluate()` for metrics that need more than logits and labels
    (it returns `eval_`-prefixed metrics). Returns all metrics.
    """
    metrics = {}
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        result = trainer.train(resume_from_checkpoint=True if checkpoint == "last" else checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        eval_metrics = evaluate(trainer) if evaluate is not None else trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.do_train and model_args.lora and model_args.merge_lora and trainer.is_world_process_zero():
        if model_args.load_in_8bit or model_args.load_in_4bit:
            logger.warning("Not merging: the adapters of a quantised model would be merged into quantised weights.")
        else:  # last: merging rewrites the model in place
            merged_dir = os.path.join(training_args.output_dir, "merged")
            trainer.model.merge_and_unload().save_pretrained(merged_dir)
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(merged_dir)
    return metrics


def model_config(model_args: ModelArguments) -> BEiT3Config:
    """The config the script's model will have: the checkpoint's, or the random init's."""
    if model_args.model_name_or_path is not None:
        return BEiT3Config.from_pretrained(model_args.model_name_or_path)
    return build_config(model_args.config_name, model_args.config_overrides)


def load_processor(model_args: ModelArguments, task: str, needs_tokenizer: bool = True):
    """
    The processor of a task: a `BEiT3ImageProcessor` with the preprocessing the original fine-tuning used for it
    (`processor_presets.TASK_PRESETS`: "imagenet" for image classification, "vl" for the rest) at the model's
    `image_size`, and, with `needs_tokenizer`, the tokenizer from `--tokenizer_dir` or else the
    checkpoint directory, in a `BEiT3Processor`. Image classification needs no tokenizer and gets the image
    processor alone.
    """
    image_processor = BEiT3ImageProcessor.from_preset(TASK_PRESETS[task], size=model_config(model_args).image_size)
    if not needs_tokenizer:
        return image_processor
    tokenizer_source = model_args.tokenizer_dir or model_args.model_name_or_path
    if tokenizer_source is None:
        raise ValueError(f"The {task} script needs a tokenizer: pass --tokenizer_dir (e.g. data/shapes/tokenizer).")
    return BEiT3Processor(image_processor=image_processor, tokenizer=load_beit3_tokenizer(tokenizer_source))
