"""The main job: the small BEiT-3 models shipped with the package answer held-out examples, and score them.

    python -m beit3_hf.demo [--num-examples 200] [--show 3] [--contact-sheet beit3_demo.png]
    python -m beit3_hf.demo --model-dir converted/

By default it loads the models of `beit3_hf/assets/models/` (trained by the package itself from random init with
`examples/build_shipped_models.py`: masked data modeling, then each fine-tuning), draws held-out shapes scenes
(their own random stream, never trained on) and Fashion-MNIST test images, prints for each head what it answered
next to the truth and a score line (the figures of the model cards), and writes a PNG contact sheet. `--model-dir`
runs converted released checkpoints (one sub-folder per task, as `beit3-convert` names them) on real photos
(scikit-image) instead.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers.utils import logging

from . import BEiT3Processor
from .masking import BlockMaskingGenerator, mask_text_tokens
from .shipped import DEFAULT_NUM_EXAMPLES, SHIPPED_MODELS, contact_sheet, evaluate_shipped, load_shipped_model
from .tasks import TASKS


def photos():
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError('The demo photos come from scikit-image: pip install -e ".[demo]"') from error

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


def load_head(task: str, model_dir: Path):
    directory = model_dir / task
    return TASKS[task].model_class.from_pretrained(directory).eval(), BEiT3Processor.from_pretrained(directory)


def _backbone(model, processor, names, pictures, texts):
    out = model(**processor(images=pictures[:1], text=texts[:1], return_tensors="pt"))
    return (f"last_hidden_state {tuple(out.last_hidden_state.shape)} = image "
            f"{tuple(out.image_last_hidden_state.shape)} + text {tuple(out.text_last_hidden_state.shape)}")


def _image_classification(model, processor, names, pictures, texts):
    top = model(**processor.image_processor(pictures, return_tensors="pt")).logits.softmax(-1).max(-1)
    return ", ".join(f"{name}: {model.config.id2label[int(i)]} ({p:.2f})"
                     for name, p, i in zip(names, top.values, top.indices))


def _vqa(model, processor, names, pictures, texts):
    inputs = processor(images=pictures[:1], text=["what is in the picture ?"], return_tensors="pt")
    best = model(**inputs).logits.sigmoid()[0].topk(3)
    return "top answers " + ", ".join(
        f"{model.config.id2label[int(i)]} ({s:.2f})" for s, i in zip(best.values, best.indices))


def _visual_reasoning(model, processor, names, pictures, texts):
    inputs = processor(images=[pictures[:2]], text=["the left image shows a person"], return_tensors="pt")
    probability = model(**inputs).logits.softmax(-1)[0, 1]
    return f"pixel_values {tuple(inputs['pixel_values'].shape)}, P(True) = {probability:.3f}"


def _retrieval(model, processor, names, pictures, texts):
    out = model(**processor(images=pictures, text=texts, return_tensors="pt"))
    return (f"logits_per_image {tuple(out.logits_per_image.shape)}, best caption per image "
            f"{out.logits_per_image.argmax(-1).tolist()}")


def _captioning(model, processor, names, pictures, texts):
    pixel_values = processor(images=pictures[:2], return_tensors="pt")["pixel_values"]
    ids = model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=8)
    return "captions " + str(processor.batch_decode(ids, skip_special_tokens=True))


def _pretraining(model, processor, names, pictures, texts):
    inputs = processor(images=pictures[:1], text=texts[:1], return_tensors="pt")
    grid = model.config.image_size // model.config.patch_size
    generator = torch.Generator().manual_seed(0)
    bool_masked_pos = BlockMaskingGenerator(grid, mask_ratio=0.4)(generator)[None]
    tokenizer = processor.tokenizer
    input_ids, text_labels = mask_text_tokens(
        inputs["input_ids"], inputs["attention_mask"], tokenizer.all_special_ids, tokenizer.mask_token_id,
        probability=0.5, generator=generator,
    )
    out = model(**{**inputs, "input_ids": input_ids}, bool_masked_pos=bool_masked_pos)
    guesses = tokenizer.convert_ids_to_tokens(out.text_logits.argmax(-1).tolist())
    return (f"{int(bool_masked_pos.sum())}/{grid * grid} patches masked -> image_logits "
            f"{tuple(out.image_logits.shape)}; {tokenizer.convert_ids_to_tokens(text_labels[text_labels != -100])} "
            f"masked -> {guesses}")


#: What the demo does with each head; a task without an entry is listed as having no demo.
RUNNERS = {
    "backbone": _backbone,
    "image_classification": _image_classification,
    "vqa": _vqa,
    "visual_reasoning": _visual_reasoning,
    "retrieval": _retrieval,
    "captioning": _captioning,
    "pretraining": _pretraining,
}


def run_converted(model_dir: Path):
    """Every head of `model_dir` (one converted checkpoint per task sub-folder) on three real photos."""
    images = photos()
    names, pictures = list(images), list(images.values())
    texts = ["a cat on a couch", "a cup of coffee", "how many people are there ?"]
    print(f"BEiT-3 heads on scikit-image photos {names}, converted checkpoints in {model_dir}\n")
    for task, spec in TASKS.items():
        if task not in RUNNERS or not (model_dir / task).is_dir():
            print(f"{spec.model_class.__name__:34s} (no {task}/ in {model_dir})")
            continue
        model, processor = load_head(task, model_dir)
        start = time.perf_counter()
        with torch.no_grad():
            result = RUNNERS[task](model, processor, names, pictures, texts)
        print(f"{type(model).__name__:34s} {time.perf_counter() - start:5.2f}s  {result}")


def _mark(row: dict) -> str:
    return "✓" if row["correct"] else f"✗ truth: {row['truth']}"


def run_shipped(num_examples: int = DEFAULT_NUM_EXAMPLES, show: int = 3, sheet: Path | None = Path("beit3_demo.png")):
    """The shipped models on held-out examples: `show` answers each, a score line each, and the contact sheet."""
    start = time.perf_counter()
    print(f"The BEiT-3 models shipped in beit3_hf/assets/models (toy models trained by this package) on "
          f"{num_examples} held-out examples each\n")
    results = []
    for name, spec in SHIPPED_MODELS.items():
        model, processor = load_shipped_model(name)
        result = evaluate_shipped(name, model, processor, num_examples)
        results.append(result)
        print(f"{name} ({type(model).__name__})")
        for row in result.rows[:show]:
            prompt = f"{row['prompt']} -> " if row["prompt"] else ""
            print(f"    {prompt}{row['answer']}   {_mark(row)}")
        right = sum(row["correct"] for row in result.rows)
        figures = ", ".join(f"{key} {value:.3f}" for key, value in result.scores.items())
        print(f"  score: {figures} ({right}/{len(result.rows)} right)\n")
    if sheet is not None:
        print(f"contact sheet: {contact_sheet(results, sheet).resolve()}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="converted checkpoints, one sub-folder per task")
    parser.add_argument("--num-examples", type=int, default=DEFAULT_NUM_EXAMPLES, help="held-out examples per model")
    parser.add_argument("--show", type=int, default=3, help="answers printed per model")
    parser.add_argument("--contact-sheet", type=Path, default=Path("beit3_demo.png"), help="the PNG written")
    args = parser.parse_args(argv)
    logging.disable_progress_bar()  # the per-model "Loading weights" bars would drown the answers
    if args.model_dir is not None:
        return run_converted(args.model_dir)
    return run_shipped(args.num_examples, args.show, args.contact_sheet)


if __name__ == "__main__":
    main()
