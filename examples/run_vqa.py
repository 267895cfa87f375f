#!/usr/bin/env python
"""
Fine-tune BEiT-3 for visual question answering with the Trainer, on a local `imagefolder` whose `metadata.jsonl`
holds `question` and `answers` (a list of annotator answers, VQAv2 style, or a single answer) per image, such as
the shapes-world VQA data (`python -m beit3_hf.data.shapes --output-dir data/shapes`).

    python examples/run_vqa.py --model_name_or_path converted/beit3_base_patch16_480_vqav2 \
        --dataset_dir data/shapes/vqa --output_dir runs/vqa

Answers are classes, as in BEiT-3: the checkpoint's answer list when it has one, otherwise every answer of the
training split seen at least `--min_answer_count` times. Targets are VQAv2 soft scores (`beit3_hf.vqa`)
and the metric is the VQA score, also per `question_type` when the data has that column.
"""

import os
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from beit3_hf import BEiT3Config, BEiT3ForVisualQuestionAnswering
from beit3_hf.collators import VQACollator
from beit3_hf.metrics import vqa_score
from beit3_hf.vqa import build_answer_vocab

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
class VQAArguments(DataArguments):
    augments_images: ClassVar[bool] = True  # --augment, through trainer_utils.augment_training_data
    question_column: str = field(default="question")
    answers_column: str = field(default="answers", metadata={"help": "Annotator answers (a list) or one answer."})
    answer_column: str = field(default="answer", metadata={"help": "Majority answer, for the vocabulary (optional)."})
    question_type_column: str = field(default="question_type", metadata={"help": "Optional; scores per type."})
    min_answer_count: int = field(
        default=1, metadata={"help": "Keep answers seen this often in training (VQAv2 uses 9: 3,129 answers)."}
    )


def answer_vocabulary(dataset, data_args) -> list[str]:
    """The answers to classify over, as unilm builds them (`beit3_hf.vqa.build_answer_vocab`): the normalised
    majority answers (`--answer_column`, else every annotator answer) given at least `--min_answer_count` times."""
    if data_args.answer_column in dataset.column_names:
        answers = dataset[data_args.answer_column]
    else:
        answers = [a for row in dataset[data_args.answers_column] for a in ([row] if isinstance(row, str) else row)]
    _, label2answer = build_answer_vocab(answers, data_args.min_answer_count)
    return label2answer


def checkpoint_answers(model_name_or_path: str | None) -> list[str] | None:
    """The answer list of a VQA checkpoint (`id2label`), or `None` for a checkpoint without one (or no checkpoint)."""
    if model_name_or_path is None:
        return None
    id2label = BEiT3Config.from_pretrained(model_name_or_path).id2label
    answers = [id2label[i] for i in range(len(id2label))]
    return None if all(answer == f"LABEL_{i}" for i, answer in enumerate(answers)) else answers


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(
        VQAArguments, args, task="vqa", learning_rate=5e-5
    )
    setup_logging(training_args)
    train_dataset, eval_dataset = load_task_dataset(data_args)
    answers = checkpoint_answers(model_args.model_name_or_path) or answer_vocabulary(train_dataset, data_args)
    label2id = {answer: i for i, answer in enumerate(answers)}
    processor = load_processor(model_args, "vqa")
    model = prepare_model(
        BEiT3ForVisualQuestionAnswering,
        model_args,
        training_args,
        processor.tokenizer,
        num_labels=len(answers),
        id2label=dict(enumerate(answers)),
        label2id=label2id,
    )
    collator = VQACollator(processor, image_column=data_args.image_column, text_column=data_args.question_column,
                           label_column=data_args.answers_column, max_length=text_length(data_args, model),
                           label2id=label2id)

    # the answers too: "which side is the ball on?" - "left"
    augment_training_data(train_dataset, data_args, processor, [data_args.image_column],
                          [data_args.question_column, data_args.answers_column, data_args.answer_column])
    question_types = (eval_dataset[data_args.question_type_column]
                      if data_args.question_type_column in eval_dataset.column_names else None)

    def compute_metrics(prediction):
        predictions, targets = prediction.predictions, prediction.label_ids
        metrics = {"vqa_score": vqa_score(predictions, targets)}
        if question_types is not None and len(question_types) == len(predictions):
            types = np.asarray(question_types)
            for question_type in sorted(set(question_types)):
                selected = types == question_type
                metrics[f"vqa_score_{question_type}"] = vqa_score(predictions[selected], targets[selected])
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
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    run_as_script(main)
