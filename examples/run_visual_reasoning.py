#!/usr/bin/env python
"""
Fine-tune BEiT-3 for NLVR2-style visual reasoning (is a statement true of a pair of images?) with the Trainer, on
a local `imagefolder` whose `metadata.jsonl` has `left_image_file_name`, `right_image_file_name`, `text` and
`label` (1 = true), such as the shapes-world NLVR2 data.

    python examples/run_visual_reasoning.py --model_name_or_path converted/beit3_base_patch16_224_nlvr2 \
        --dataset_dir data/shapes/nlvr2 --output_dir runs/nlvr2
"""

import os
import sys
from dataclasses import dataclass, field
from typing import ClassVar


from beit3_hf import BEiT3ForVisualReasoning
from beit3_hf.collators import ImageTextCollator
from beit3_hf.metrics import accuracy

# the helpers next to this script, also when it is imported (tests) rather than run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_utils import (  # noqa: E402
    BEiT3Trainer,
    DataArguments,
    augment_training_data,
    load_processor,
    load_task_dataset,
    parse_arguments,
    prepare_model,
    run_as_script,
    setup_logging,
    text_length,
    train_and_evaluate,
)


@dataclass
class VisualReasoningArguments(DataArguments):
    augments_images: ClassVar[bool] = True  # --augment, through trainer_utils.augment_training_data
    left_image_column: str = field(default="left_image")
    right_image_column: str = field(default="right_image")
    text_column: str = field(default="text")
    label_column: str = field(default="label")


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(
        VisualReasoningArguments, args, task="visual_reasoning", learning_rate=5e-5
    )
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    processor = load_processor(model_args, "visual_reasoning")
    model = prepare_model(BEiT3ForVisualReasoning, model_args, training_args, processor.tokenizer, num_labels=2,
                          id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1})
    collator = ImageTextCollator(
        processor,
        text_column=data_args.text_column,
        label_column=data_args.label_column,
        pair_columns=(data_args.left_image_column, data_args.right_image_column),
        max_length=text_length(data_args, model),
    )
    augment_training_data(train_dataset, data_args, processor,
                          [data_args.left_image_column, data_args.right_image_column], [data_args.text_column])
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
        compute_metrics=lambda p: {"accuracy": accuracy(p.predictions, p.label_ids)},
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    run_as_script(main)
