"""What the example scripts (`run_*.py`, next to this file) share: the model and data arguments, the scripts'
TrainingArguments defaults, loading the data, the processor and the model (with LoRA / QLoRA flags), and the
train / save / evaluate ending. Not part of the `beit3_hf` package: the library half (LoRA, quantisation, loading,
collators) is `beit3_hf.peft_utils` and `beit3_hf.collators`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
import torch
from transformers import HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import logging

from beit3_hf import BEiT3Config, BEiT3ImageProcessor, BEiT3PreTrainedModel, BEiT3Processor, load_beit3_tokenizer
from beit3_hf.peft_utils import LORA_TARGETS, apply_lora, build_config, load_model, parse_config_overrides
from beit3_hf.processor_presets import TASK_PRESETS

logger = logging.get_logger(__name__)


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


def parse_arguments(data_class: type[DataArguments] = DataArguments, args: Sequence[str] | None = None, **defaults):
    """
    `(ModelArguments, data_class, TrainingArguments)` from the command line (`args`, default `sys.argv[1:]`) or
    from a single `.json` file, with `SCRIPT_DEFAULTS` and the script's own `defaults` (e.g. a learning rate).
    """
    parser = HfArgumentParser((ModelArguments, data_class, TrainingArguments))
    has_gpu = torch.cuda.is_available()
    parser.set_defaults(
        **SCRIPT_DEFAULTS, use_cpu=not has_gpu, bf16=has_gpu and torch.cuda.is_bf16_supported(), **defaults
    )
    args = sys.argv[1:] if args is None else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(args[0]))
    return parser.parse_args_into_dataclasses(args)


def setup_logging(training_args) -> None:
    """transformers/datasets verbosity from `--log_level` (warnings only on the non-main processes)."""
    log_level = training_args.get_process_log_level()
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
