#!/usr/bin/env python
"""
Fine-tune BEiT-3 for image captioning with the Trainer, on a local `imagefolder` whose `metadata.jsonl` has a
`text` caption per image (or a list of reference captions), such as the shapes-world captioning data.

    python examples/run_captioning.py --model_name_or_path converted/beit3_base_patch16_480_coco_captioning \
        --dataset_dir data/shapes/captioning --output_dir runs/captioning

Training follows unilm: `<s> caption </s>` (at most 32 tokens), a fraction `--mask_prob` of the positions after `<s>`
corrupted BERT-style and predicted under the captioning mask. Evaluation reports the masked-token loss and
BLEU-4 / CIDEr of captions decoded with `model.generate` (greedy unless `--generation_num_beams` or the checkpoint's
generation config says otherwise).
"""

import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.utils.data import DataLoader
from transformers.utils import logging

from beit3_hf import BEiT3ForCaptioning
from beit3_hf.augmentation import captioning_smoothed_loss
from beit3_hf.collators import CaptioningCollator, ImageClassificationCollator
from beit3_hf.metrics import bleu4, cider

# the helpers next to this script, also when it is imported (tests) rather than run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_utils import (  # noqa: E402
    BEiT3Trainer,
    DataArguments,
    augment_training_data,
    evaluation_progress,
    load_processor,
    load_task_dataset,
    parse_arguments,
    prepare_model,
    report_evaluation,
    run_as_script,
    setup_logging,
    text_length,
    train_and_evaluate,
)

logger = logging.get_logger(__name__)


@dataclass
class CaptioningArguments(DataArguments):
    augments_images: ClassVar[bool] = True  # --augment, through trainer_utils.augment_training_data
    text_column: str = field(default="text")
    max_text_length: int = field(default=32, metadata={"help": "Longest caption in tokens, <s> and </s> included."})
    mask_prob: float = field(default=0.6, metadata={"help": "Fraction of caption tokens to corrupt and predict."})
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "unilm's captioning label smoothing of the training loss (eps on the V - 1 other tokens, "
                          "KL divergence); 0 = plain cross-entropy. unilm: 0.1."},
    )
    drop_worst_ratio: float = field(
        default=0.0,
        metadata={"help": "unilm's drop-worst: after --drop_worst_after steps, the loss averages only the smallest "
                          "(1 - ratio) of the batch's token losses; 0 = off. unilm: 0.2."},
    )
    drop_worst_after: int = field(default=0, metadata={"help": "Optimiser steps before drop-worst starts. unilm: 12000."})
    generation_max_length: int | None = field(
        default=None, metadata={"help": "Longest generated caption, <s> included (default: max_text_length)."}
    )
    generation_num_beams: int | None = field(
        default=None, metadata={"help": "Beams for generate() (default: the model's generation config, else 1)."}
    )


@torch.no_grad()
def generate_captions(trainer, dataset, image_processor, tokenizer, data_args) -> tuple[list[str], list[int]]:
    """Captions of every image of `dataset` (split across processes, gathered) and the rows they belong to."""
    loader = DataLoader(
        dataset.add_column("row", list(range(len(dataset)))),
        batch_size=trainer.args.per_device_eval_batch_size,
        collate_fn=ImageClassificationCollator(image_processor, data_args.image_column, label_column="row"),
    )
    loader = trainer.accelerator.prepare(loader)
    model = trainer.model.eval()
    generation_kwargs = {"max_length": data_args.generation_max_length or text_length(data_args, model)}
    if data_args.generation_num_beams is not None:
        generation_kwargs["num_beams"] = data_args.generation_num_beams
    captions, rows = [], []
    for batch in evaluation_progress(trainer, loader, len(loader), "Generating captions"):
        ids = model.generate(pixel_values=batch["pixel_values"], **generation_kwargs)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        captions += trainer.accelerator.gather_for_metrics(texts, use_gather_object=True)
        rows += trainer.accelerator.gather_for_metrics(batch["labels"]).tolist()
    return captions, rows


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(
        CaptioningArguments, args, task="captioning", learning_rate=5e-5
    )
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    processor = load_processor(model_args, "captioning")
    model = prepare_model(BEiT3ForCaptioning, model_args, training_args, processor.tokenizer)
    collator = CaptioningCollator(processor, image_column=data_args.image_column, text_column=data_args.text_column,
                                  max_length=text_length(data_args, model), mask_prob=data_args.mask_prob)

    augment_training_data(train_dataset, data_args, processor, [data_args.image_column], [data_args.text_column])

    def smoothed_loss(outputs, labels):
        # unilm compares its step counter with drop_worst_after the same way (`global_step > drop_worst_after`)
        dropping = data_args.drop_worst_ratio if trainer.state.global_step > data_args.drop_worst_after else 0.0
        return captioning_smoothed_loss(outputs["logits"], labels, data_args.label_smoothing, dropping)

    def evaluate(trainer) -> dict:
        metrics = trainer.evaluate()
        start = time.perf_counter()
        captions, rows = generate_captions(trainer, eval_dataset, processor.image_processor, processor.tokenizer,
                                           data_args)
        texts = eval_dataset[data_args.text_column]
        references = [texts[row] for row in rows]
        metrics.update(eval_bleu4=bleu4(captions, references), eval_cider=cider(captions, references))
        seconds = time.perf_counter() - start
        report_evaluation(trainer, f"Captioning: {len(captions)} images captioned and scored in {seconds:.1f} s "
                                   f"({len(captions) / max(seconds, 1e-9):.1f}/s): BLEU-4 {metrics['eval_bleu4']:.4f}, "
                                   f"CIDEr {metrics['eval_cider']:.4f}")
        for caption, reference in list(zip(captions, references))[:3]:
            logger.info(f"generated {caption!r} for reference {reference!r}")
        return metrics

    trainer = BEiT3Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks,
        layer_decay=model_args.layer_decay,
        task_head_lr_weight=model_args.task_head_lr_weight,
        train_loss=smoothed_loss if data_args.label_smoothing > 0 or data_args.drop_worst_ratio > 0 else None,
    )
    return train_and_evaluate(trainer, model_args, training_args, evaluate=evaluate)


if __name__ == "__main__":
    run_as_script(main)
