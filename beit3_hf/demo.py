"""The main job: run every BEiT-3 head on real photos and print what it returns.

    python -m beit3_hf.demo [--model-dir DIR] [--image-size 224]

Without `--model-dir` it builds small random-weight models (the shipped default: no BEiT-3 weights can be fetched
here) with the shipped shapes-world tokenizer, so the numbers show the interfaces and shapes, not trained
predictions. Point `--model-dir` at directories written by `beit3-convert` (one per head, named by task) to run real
checkpoints the same way.
"""

import argparse
import time
from importlib import resources
from pathlib import Path

import torch

from . import BEiT3Config, BEiT3ImageProcessor, BEiT3Processor
from .masking import BlockMaskingGenerator, mask_text_tokens
from .tasks import TASKS
from .tokenization_beit3 import load_beit3_tokenizer

#: Made-up labels, so the random-weight heads print names rather than ids.
DEMO_LABELS = {
    "image_classification": ["person", "cup", "cat", "rocket"],
    "vqa": ["red", "blue", "cat", "cup", "yes", "no", "1", "2"],
    "visual_reasoning": ["False", "True"],
}


def shipped_tokenizer():
    return load_beit3_tokenizer(str(resources.files("beit3_hf") / "assets" / "shapes_tokenizer"))


def photos():
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError('The demo photos come from scikit-image: pip install -e ".[demo]"') from error

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


def load_head(task: str, model_dir: Path | None, tokenizer, image_size: int):
    spec = TASKS[task]
    if model_dir is not None:
        directory = model_dir / task
        return spec.model_class.from_pretrained(directory).eval(), BEiT3Processor.from_pretrained(directory)
    torch.manual_seed(0)
    labels = DEMO_LABELS.get(task)
    config = BEiT3Config(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, image_size=image_size,
        patch_size=16, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        use_final_layer_norm=spec.final_layer_norm, id2label=dict(enumerate(labels)) if labels else None,
    )
    processor = BEiT3Processor(BEiT3ImageProcessor.from_preset(spec.processor_preset, size=image_size), tokenizer)
    return spec.model_class(config).eval(), processor


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


def run(model_dir: Path | None = None, image_size: int = 224):
    tokenizer = None if model_dir is not None else shipped_tokenizer()
    images = photos()
    names, pictures = list(images), list(images.values())
    texts = ["a red circle at the top left", "a blue square", "how many objects are there ?"]
    source = f"converted checkpoints in {model_dir}" if model_dir else "random weights (shipped default)"
    print(f"BEiT-3 heads on scikit-image photos {names}, {source}\n")

    for task, spec in TASKS.items():
        if task not in RUNNERS:
            print(f"{spec.model_class.__name__:34s} (no demo for the {task} task yet)")
            continue
        model, processor = load_head(task, model_dir, tokenizer, image_size)
        start = time.perf_counter()
        with torch.no_grad():
            result = RUNNERS[task](model, processor, names, pictures, texts)
        print(f"{type(model).__name__:34s} {time.perf_counter() - start:5.2f}s  {result}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a folder with one converted checkpoint per task subfolder")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    run(args.model_dir, args.image_size)


if __name__ == "__main__":
    main()
