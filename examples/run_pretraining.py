#!/usr/bin/env python
"""
Pretrain BEiT-3 with masked data modeling (its own objective) with the Trainer: masked text tokens, block-wise
masked image patches predicted as the visual tokens of a BEiT v2 tokenizer, and masked image-text pairs, all three
kinds in every step. From random init (`--config_name` / `--config_overrides`) or continued from a converted
pretrained checkpoint (`beit3-convert beit3_base_patch16_224.pth OUT --task pretraining`, then
`--model_name_or_path OUT`). On the shapes world (`python -m beit3_hf.data.shapes --output-dir data/shapes`):

    python examples/run_pretraining.py --tokenizer_dir data/shapes/tokenizer --visual_tokenizer runs/vqkd \
        --image_dirs data/shapes/captioning --text_dirs data/shapes/captioning data/shapes/vqa::question \
        --image_text_dirs data/shapes/captioning --config_overrides $S --max_steps 2000 --output_dir runs/mdm

Each `--*_dirs` entry is a dataset directory (an imagefolder with `metadata.jsonl`, or a DatasetDict saved with
`save_to_disk`), optionally `DIR::column` to read the text from another column. Visual tokens come from the
examples' `image_codes` column when the data has one (`python -m beit3_hf.pretraining_data` precomputes it), else
from `--visual_tokenizer` on the fly. The output directory is a `BEiT3ForMaskedDataModeling` that every
fine-tuning script takes as `--model_name_or_path` (the two heads are dropped there, as the load report says).
"""

import os
import sys
from dataclasses import dataclass, field

import datasets
import torch
from accelerate.utils import DistributedType
from transformers import AutoModel
from transformers.utils import logging

from beit3_hf import BEiT3ForMaskedDataModeling
from beit3_hf.pretraining_data import (
    KINDS,
    SUM_KEYS,
    MaskedDataModelingCollator,
    as_pretraining_source,
    count_targets,
    masked_data_modeling_sums,
    mixed_pretraining_dataset,
    placeholder_inputs,
)

# the helpers next to this script, also when it is imported (tests) rather than run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_utils import (  # noqa: E402
    BEiT3Trainer,
    load_processor,
    model_config,
    parse_arguments,
    prepare_model,
    run_as_script,
    setup_logging,
    train_and_evaluate,
    whole_under_zero3,
)

logger = logging.get_logger(__name__)


@dataclass
class PretrainingArguments:
    """The data of the three kinds, their mix and the masking."""

    image_dirs: list[str] = field(default_factory=list, metadata={"help": "Sources of image-only examples."})
    text_dirs: list[str] = field(
        default_factory=list, metadata={"help": "Sources of text-only examples (DIR or DIR::text_column)."}
    )
    image_text_dirs: list[str] = field(
        default_factory=list, metadata={"help": "Sources of image-text pairs (DIR or DIR::text_column)."}
    )
    proportions: str = field(
        default="equal",
        metadata={"help": "Shares of image, text and image-text examples, e.g. '2,1,1' (random draws in those "
                          "proportions); 'equal' (default, the paper's thirds) alternates the kinds, so every batch "
                          "of a multiple of 3 holds exactly a third of each."},
    )
    visual_tokenizer: str | None = field(
        default=None, metadata={"help": "A BEiT3VisualTokenizer directory, for images without `image_codes`."}
    )
    text_mask_ratio: float = field(default=0.15, metadata={"help": "Share of monomodal text tokens masked."})
    image_text_mask_ratio: float = field(default=0.5, metadata={"help": "Share of image-text pairs' text masked."})
    image_mask_ratio: float = field(default=0.4, metadata={"help": "Share of image patches masked (block-wise)."})
    image_text_image_mask_ratio: float = field(default=0.4, metadata={"help": "The same for the pairs' images."})
    train_split: str = field(default="train")
    eval_split: str = field(default="test")
    max_eval_samples: int = field(default=600, metadata={"help": "Mixed evaluation examples (the first N)."})
    image_column: str = field(default="image")
    text_column: str = field(default="text")
    max_text_length: int = field(default=64, metadata={"help": "Longest text in tokens, <s> and </s> included."})
    streaming: bool = field(default=False, metadata={"help": "Stream the sources instead of loading them."})
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Per-source shuffle buffer (0: no shuffle)."})

    def __post_init__(self):
        if not (self.image_dirs or self.text_dirs or self.image_text_dirs):
            raise ValueError("Give at least one of --image_dirs, --text_dirs, --image_text_dirs.")
        if self.proportions != "equal":
            try:
                shares = [float(value) for value in self.proportions.split(",")]
            except ValueError:
                shares = []
            if len(shares) != 3 or any(share < 0 for share in shares) or sum(shares) <= 0:
                raise ValueError(f"--proportions must be 'equal' or three non-negative numbers (image, text, "
                                 f"image-text) such as '1,1,1', got {self.proportions!r}.")

    def shares(self):
        return None if self.proportions == "equal" else [float(value) for value in self.proportions.split(",")]


SCRIPT_DEFAULTS = dict(
    learning_rate=1e-3,
    eval_strategy="no",  # the stream has no epochs: evaluate at the end, or every --eval_steps
    save_strategy="steps",
    save_steps=500,
    ddp_find_unused_parameters=False,  # several forwards per step; MaskedDataModelingTrainer reaches every weight
    accelerator_config={"dispatch_batches": False},  # each process reads its own share of the stream
)


def load_source(spec: str, split: str, kind: str, data_args: PretrainingArguments):
    """One `--*_dirs` entry (`DIR` or `DIR::text_column`) as a shuffled stream of `kind` examples, or None when the
    directory has no `split`."""
    path, _, text_column = spec.partition("::")
    text_column = text_column or data_args.text_column
    if not os.path.isdir(path):
        raise ValueError(f"Pretraining source {path!r} is not a directory.")
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
        if split not in dataset:
            return None
        dataset = dataset[split]
        if data_args.streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        metadata = os.path.join(path, split, "metadata.jsonl")
        if os.path.isfile(metadata):
            dataset = datasets.load_dataset("imagefolder", data_files={split: metadata}, split=split,
                                            streaming=data_args.streaming)
        elif os.path.isdir(os.path.join(path, split)):
            dataset = datasets.load_dataset("imagefolder", data_dir=path, split=split, streaming=data_args.streaming)
        else:
            return None
    if kind == "text" and data_args.image_column in (dataset.column_names or []):
        dataset = dataset.remove_columns(data_args.image_column)  # not decoded for nothing
    stream = as_pretraining_source(dataset, kind, data_args.image_column, text_column)
    if data_args.shuffle_buffer_size > 0:
        stream = stream.shuffle(seed=data_args.seed, buffer_size=data_args.shuffle_buffer_size)
    return stream


def build_dataset(data_args: PretrainingArguments, split: str):
    sources = {}
    for kind, specs in zip(KINDS, (data_args.image_dirs, data_args.text_dirs, data_args.image_text_dirs)):
        streams = [load_source(spec, split, kind, data_args) for spec in specs]
        sources[kind] = [stream for stream in streams if stream is not None]
    if not any(sources.values()):
        return None
    return mixed_pretraining_dataset(sources["image"], sources["text"], sources["image_text"],
                                     proportions=data_args.shares(), seed=data_args.seed)


class MaskedDataModelingTrainer(BEiT3Trainer):
    """
    The Trainer of masked data modeling. Each batch is the collator's sub-batches (image, text, image-text); the
    loss of an optimisation step is `text_loss_weight * sum of the masked text tokens' cross-entropies / their
    number + image_loss_weight * the same for the masked patches`, counted over every micro-batch of the step and
    every process (`_get_num_items_in_batch`), so that gradient accumulation and data parallelism give the gradient
    of one large batch. Logs `text_loss`, `image_loss`, `text_accuracy`, `image_accuracy` and the accuracies of each
    kind (`image_image_accuracy`, `text_text_accuracy`, `image_text_text_accuracy`, `image_text_image_accuracy`);
    `evaluate` reports the same with masks drawn from `--seed` (the training RNG is left untouched).
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stats = {}

    def _get_num_items_in_batch(self, batch_samples, device):
        counts = sum((count_targets(batch) for batch in batch_samples), torch.zeros(2, dtype=torch.long)).to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).reshape(-1, 2).sum(dim=0)
        return counts

    def _loss(self, model, sums, counts):
        config = self.accelerator.unwrap_model(model).config
        return (config.text_loss_weight * sums["text_loss_sum"] / counts[0].clamp(min=1)
                + config.image_loss_weight * sums["image_loss_sum"] / counts[1].clamp(min=1))

    def _sums(self, model, inputs) -> dict:
        """
        `masked_data_modeling_sums` of one batch. Under FSDP and DeepSpeed all processes must call the same
        modules in the same order: FSDP and ZeRO-3 gather weights from every process at each call, and ZeRO-1/2
        reduce gradients in buckets filled in the order the backward pass produces them. But a process runs one
        forward per kind its batch holds. So a kind that another process holds and this one lacks is run on a
        placeholder (`placeholder_inputs`): one example with nothing masked, which counts for nothing but is in the
        graph (and the heads are called on no rows, see `_predict` in modeling_beit3.py).
        """
        if self.args.world_size == 1 or not (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            return masked_data_modeling_sums(model, inputs)
        held = torch.tensor([kind in inputs for kind in KINDS], dtype=torch.int32, device=self.args.device)
        torch.distributed.all_reduce(held, op=torch.distributed.ReduceOp.MAX)
        config = self.accelerator.unwrap_model(model).config
        aligned = {kind: inputs[kind] if kind in inputs else self._prepare_inputs(placeholder_inputs(kind, config))
                   for kind, anywhere in zip(KINDS, held.tolist()) if anywhere}
        return masked_data_modeling_sums(model, aligned)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sums = self._sums(model, inputs)
        if num_items_in_batch is None:  # one batch on its own
            counts = torch.stack([sums["text_count"], sums["image_count"]])
            loss = self._loss(model, sums, counts)
        else:
            loss = self._loss(model, sums, num_items_in_batch)
            if self.args.world_size > 1:  # DDP / FSDP average the processes' gradients: undo it
                loss = loss * self.args.world_size
        if self.accelerator.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            # DDP with several forwards per step needs every weight in the graph (find_unused_parameters=False)
            # even when a kind is missing from the micro-batch: a zero term reaches the experts it did not use
            # (FSDP and DeepSpeed: see `_sums`)
            loss = loss + 0.0 * sum(p.view(-1)[0] for p in model.parameters() if p.requires_grad)
        if model.training:
            for key, value in sums.items():
                self._stats[key] = self._stats.get(key, 0) + value.detach().float()
        return (loss, sums) if return_outputs else loss

    def _summaries(self, stats: dict, prefix: str = "") -> dict:
        """Losses and accuracies from summed statistics, summed over the processes first."""
        keys = SUM_KEYS  # the same on every process, whichever kinds its batches held
        values = torch.stack([torch.as_tensor(stats.get(key, 0), dtype=torch.float32, device=self.args.device)
                              for key in keys])
        if self.args.world_size > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        stats = dict(zip(keys, values.tolist()))
        logs = {}
        for modality in ("text", "image"):
            count = stats.get(f"{modality}_count", 0)
            if count:
                logs[f"{prefix}{modality}_loss"] = stats[f"{modality}_loss_sum"] / count
                logs[f"{prefix}{modality}_accuracy"] = stats[f"{modality}_correct"] / count
        for kind in KINDS:
            for modality in ("text", "image"):
                count = stats.get(f"{kind}/{modality}_count", 0)
                if count:
                    logs[f"{prefix}{kind}_{modality}_accuracy"] = stats[f"{kind}/{modality}_correct"] / count
        return logs

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._stats:
            logs = {**logs, **{key: round(value, 4) for key, value in self._summaries(self._stats).items()}}
            self._stats = {}
        super().log(logs, *args, **kwargs)

    def _in_step(self, dataloader):
        """
        `(batch, counted)` pairs, as many on every process. Each process reads its own share of the stream, so the
        shares can end at different batches; under FSDP and DeepSpeed every process must run as many forwards (see
        `_sums`), so a process whose share has ended runs its last batch again (`counted` False) until all have.
        """
        if self.args.world_size == 1:
            yield from ((inputs, True) for inputs in dataloader)
            return
        iterator, last = iter(dataloader), None
        while True:
            inputs = next(iterator, None)
            last = last if inputs is None else inputs
            flags = torch.tensor([inputs is not None, last is not None], dtype=torch.float32, device=self.args.device)
            running, started = self.accelerator.reduce(flags, reduction="sum").tolist()
            if running == 0:
                return
            if started < self.args.world_size:  # known to every process, so all of them stop here
                raise ValueError(f"A process has no evaluation batch: --max_eval_samples must give each of the "
                                 f"{self.args.world_size} processes at least one.")
            yield last, inputs is not None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        model.eval()
        stats = {}
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.args.seed)
            for inputs, counted in self._in_step(dataloader):
                sums = self._sums(model, self._prepare_inputs(inputs))
                if counted:
                    for key, value in sums.items():
                        stats[key] = stats.get(key, 0) + value.detach().float()
        if not stats:
            raise ValueError("The evaluation data is empty.")
        metrics = self._summaries(stats, prefix=f"{metric_key_prefix}_")
        config = self.accelerator.unwrap_model(self.model).config
        metrics[f"{metric_key_prefix}_loss"] = sum(
            weight * metrics.get(f"{metric_key_prefix}_{modality}_loss", 0.0)
            for weight, modality in ((config.text_loss_weight, "text"), (config.image_loss_weight, "image"))
        )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(PretrainingArguments, args, **SCRIPT_DEFAULTS)
    setup_logging(training_args)
    if training_args.do_train and training_args.max_steps <= 0:
        raise ValueError("The pretraining data is a stream: give --max_steps.")
    data_args.seed = training_args.seed
    processor = load_processor(model_args, "pretraining")

    visual_tokenizer = None
    config_kwargs = {}
    if data_args.visual_tokenizer is not None:
        with whole_under_zero3(training_args):
            visual_tokenizer = AutoModel.from_pretrained(data_args.visual_tokenizer).eval()
        codebook_size = visual_tokenizer.config.codebook_size
        if model_args.model_name_or_path is None and "visual_vocab_size" not in (model_args.config_overrides or ""):
            config_kwargs["visual_vocab_size"] = codebook_size
        elif model_config(model_args).visual_vocab_size != codebook_size:
            raise ValueError(f"The model predicts {model_config(model_args).visual_vocab_size} visual tokens, the "
                             f"visual tokenizer {data_args.visual_tokenizer!r} has {codebook_size} codes.")
    model = prepare_model(BEiT3ForMaskedDataModeling, model_args, training_args, processor.tokenizer, **config_kwargs)
    collator = MaskedDataModelingCollator(
        processor, patch_size=model.config.patch_size, visual_tokenizer=visual_tokenizer,
        text_mask_ratio=data_args.text_mask_ratio, image_text_mask_ratio=data_args.image_text_mask_ratio,
        image_mask_ratio=data_args.image_mask_ratio, image_text_image_mask_ratio=data_args.image_text_image_mask_ratio,
        max_length=min(data_args.max_text_length, model.config.max_text_positions),
    )
    train_dataset = build_dataset(data_args, data_args.train_split) if training_args.do_train else None
    if training_args.do_train and train_dataset is None:
        raise ValueError(f"No pretraining source has a {data_args.train_split!r} split.")
    eval_dataset = None
    if training_args.do_eval:
        eval_dataset = build_dataset(data_args, data_args.eval_split)
        if eval_dataset is None:
            logger.warning(f"No source has a {data_args.eval_split!r} split: no evaluation.")
            training_args.do_eval = False
        else:
            eval_dataset = eval_dataset.take(data_args.max_eval_samples)

    trainer = MaskedDataModelingTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        layer_decay=model_args.layer_decay,
        task_head_lr_weight=model_args.task_head_lr_weight,
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    run_as_script(main)
