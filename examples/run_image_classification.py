#!/usr/bin/env python
"""
Fine-tune BEiT-3 for image classification with the Trainer, on any local `imagefolder` (one sub-folder per class
in each split) or a `save_to_disk` dataset with `image` and `label` columns.

    python examples/run_image_classification.py --model_name_or_path converted/beit3_base_patch16_224_in1k \
        --ignore_mismatched_sizes --dataset_dir data/fashion_mnist --output_dir runs/fashion_mnist

The head is BEiT-3's (mean of the patch tokens -> LayerNorm -> Linear); only the image experts are used.
"""

import os
import sys
from dataclasses import dataclass, field


from beit3_hf import BEiT3ForImageClassification
from beit3_hf.collators import ImageClassificationCollator
from beit3_hf.metrics import accuracy

# the helpers next to this script, also when it is imported (tests) rather than run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_utils import (  # noqa: E402
    BEiT3Trainer,
    DataArguments,
    load_processor,
    load_task_dataset,
    parse_arguments,
    prepare_model,
    setup_logging,
    train_and_evaluate,
)


@dataclass
class ImageClassificationArguments(DataArguments):
    label_column: str = field(default="label", metadata={"help": "Column with the class index."})


def label_names(dataset, column: str) -> list[str]:
    feature = dataset.features[column]
    if hasattr(feature, "names"):
        return list(feature.names)
    return [str(i) for i in range(max(dataset[column]) + 1)]


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(
        ImageClassificationArguments, args, task="image_classification", learning_rate=5e-5
    )
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    names = label_names(train_dataset, data_args.label_column)
    processor = load_processor(model_args, "image_classification", needs_tokenizer=False)
    model = prepare_model(
        BEiT3ForImageClassification,
        model_args,
        training_args,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )

    trainer = BEiT3Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ImageClassificationCollator(processor, data_args.image_column, data_args.label_column),
        processing_class=processor,
        callbacks=callbacks,
        layer_decay=model_args.layer_decay,
        task_head_lr_weight=model_args.task_head_lr_weight,
        compute_metrics=lambda p: {"accuracy": accuracy(p.predictions, p.label_ids)},
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    main()
