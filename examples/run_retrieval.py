#!/usr/bin/env python
"""
Fine-tune BEiT-3 for image-text retrieval (dual encoder, contrastive loss) with the Trainer, on a local
`imagefolder` whose `metadata.jsonl` has a `text` caption per image (several rows may share an image when they
share an `image_id`), such as the shapes-world retrieval data.

    python examples/run_retrieval.py --model_name_or_path converted/beit3_base_patch16_384_coco_retrieval \
        --dataset_dir data/shapes/retrieval --output_dir runs/retrieval

Evaluation ranks every caption of the evaluation split for every image and the reverse: recall@1/5/10 in both
directions (`tr_r*`: image -> text, `ir_r*`: text -> image). The in-batch contrastive loss learns faster with
larger batches.
"""

import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar


from beit3_hf import BEiT3ForImageTextRetrieval
from beit3_hf.collators import ImageTextCollator
from beit3_hf.metrics import retrieval_recall

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
    report_evaluation,
    run_as_script,
    setup_logging,
    text_length,
    train_and_evaluate,
)


@dataclass
class RetrievalArguments(DataArguments):
    augments_images: ClassVar[bool] = True  # --augment, through trainer_utils.augment_training_data
    text_column: str = field(default="text")
    image_id_column: str = field(
        default="image_id", metadata={"help": "Rows with the same value show the same image (optional column)."}
    )


def evaluate_retrieval(trainer, eval_dataset, image_id_column: str) -> dict:
    """Eval loss plus recall@k over the whole split; images that appear in several rows are ranked once. The
    embeddings come with the Trainer's progress bar; a summary line follows the ranking."""
    start = time.perf_counter()
    output = trainer.predict(eval_dataset, metric_key_prefix="eval")
    image_embeds, text_embeds = output.predictions
    image_ids_per_text = None
    if image_id_column in eval_dataset.column_names:
        image_rows, first_rows, image_ids_per_text = {}, [], []
        for row, image_id in enumerate(eval_dataset[image_id_column]):
            if image_id not in image_rows:
                image_rows[image_id] = len(first_rows)
                first_rows.append(row)
            image_ids_per_text.append(image_rows[image_id])
        image_embeds = image_embeds[first_rows]
    recalls = retrieval_recall(image_embeds, text_embeds, image_ids_per_text)
    report_evaluation(trainer, f"Retrieval: {len(image_embeds)} images x {len(text_embeds)} texts embedded and ranked "
                               f"in {time.perf_counter() - start:.1f} s: TR@1 {recalls['tr_r1']:.4f}, "
                               f"IR@1 {recalls['ir_r1']:.4f}, average {recalls['average_score']:.4f}")
    return {**output.metrics, **{f"eval_{name}": value for name, value in recalls.items()}}


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(
        RetrievalArguments, args, task="retrieval", learning_rate=5e-5
    )
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    processor = load_processor(model_args, "retrieval")
    model = prepare_model(BEiT3ForImageTextRetrieval, model_args, training_args, processor.tokenizer)
    collator = ImageTextCollator(processor, image_column=data_args.image_column, text_column=data_args.text_column,
                                 max_length=text_length(data_args, model), return_loss=True)
    augment_training_data(train_dataset, data_args, processor, [data_args.image_column], [data_args.text_column])
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
        # keep the embeddings, drop the per-batch similarity matrices
        preprocess_logits_for_metrics=lambda outputs, labels: (outputs[2], outputs[3]),
    )
    return train_and_evaluate(
        trainer, model_args, training_args,
        evaluate=lambda trainer: evaluate_retrieval(trainer, eval_dataset, data_args.image_id_column),
    )


if __name__ == "__main__":
    run_as_script(main)
