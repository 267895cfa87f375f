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
from typing import ClassVar


from beit3_hf import BEiT3ForImageClassification
from beit3_hf.augmentation import ClassificationBatchAugment
from beit3_hf.collators import ImageClassificationCollator
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
    train_and_evaluate,
)


@dataclass
class ImageClassificationArguments(DataArguments):
    augments_images: ClassVar[bool] = True  # --augment, through trainer_utils.augment_training_data
    label_column: str = field(default="label", metadata={"help": "Column with the class index."})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (Beta(alpha, alpha)); 0 = off. unilm: 0.8."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha; 0 = off. unilm: 1.0."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch (mixup or cutmix)."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of cutmix when both are on."})
    reprob: float = field(
        default=0.0, metadata={"help": "timm's random erasing probability per training image; unilm: 0.25."}
    )


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

    augment_training_data(train_dataset, data_args, processor, [data_args.image_column])
    batch_augment = None
    if data_args.mixup > 0 or data_args.cutmix > 0 or data_args.reprob > 0:
        # mixed labels are soft: the label smoothing goes into them, and the Trainer takes the soft-target loss
        batch_augment = ClassificationBatchAugment(
            len(names), data_args.mixup, data_args.cutmix, data_args.mixup_prob, data_args.mixup_switch_prob,
            label_smoothing=training_args.label_smoothing_factor, random_erasing=data_args.reprob,
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
        train_batch_transform=batch_augment,
        train_loss=batch_augment.loss if batch_augment is not None else None,
        compute_metrics=lambda p: {"accuracy": accuracy(p.predictions, p.label_ids)},
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    run_as_script(main)
