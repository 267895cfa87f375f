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

from . import (
    BEiT3Config,
    BEiT3ForCaptioning,
    BEiT3ForImageClassification,
    BEiT3ForImageTextRetrieval,
    BEiT3ForVisualQuestionAnswering,
    BEiT3ForVisualReasoning,
    BEiT3ImageProcessor,
    BEiT3Model,
    BEiT3Processor,
)
from .tokenization_beit3 import load_beit3_tokenizer

HEADS = {
    "backbone": BEiT3Model,
    "image_classification": BEiT3ForImageClassification,
    "vqa": BEiT3ForVisualQuestionAnswering,
    "visual_reasoning": BEiT3ForVisualReasoning,
    "retrieval": BEiT3ForImageTextRetrieval,
    "captioning": BEiT3ForCaptioning,
}


def shipped_tokenizer():
    return load_beit3_tokenizer(str(resources.files("beit3_hf") / "assets" / "shapes_tokenizer"))


def photos():
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


def load_head(task: str, model_dir: Path | None, tokenizer, image_size: int):
    model_class = HEADS[task]
    if model_dir is not None:
        directory = model_dir / task
        return model_class.from_pretrained(directory).eval(), BEiT3Processor.from_pretrained(directory)
    torch.manual_seed(0)
    config = BEiT3Config(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, image_size=image_size,
        patch_size=16, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        use_final_layer_norm=task not in ("image_classification", "vqa"),
        id2label=_labels(task),
    )
    preset = "imagenet" if task == "image_classification" else "vl"
    processor = BEiT3Processor(BEiT3ImageProcessor.from_preset(preset, size=image_size), tokenizer)
    return model_class(config).eval(), processor


def _labels(task):
    if task == "image_classification":
        return {0: "person", 1: "cup", 2: "cat", 3: "rocket"}
    if task == "vqa":
        return {i: answer for i, answer in enumerate(["red", "blue", "cat", "cup", "yes", "no", "1", "2"])}
    if task == "visual_reasoning":
        return {0: "False", 1: "True"}
    return None


def run(model_dir: Path | None = None, image_size: int = 224):
    tokenizer = None if model_dir is not None else shipped_tokenizer()
    images = photos()
    names, pictures = list(images), list(images.values())
    texts = ["a red circle at the top left", "a blue square", "how many objects are there ?"]
    source = f"converted checkpoints in {model_dir}" if model_dir else "random weights (shipped default)"
    print(f"BEiT-3 heads on scikit-image photos {names}, {source}\n")

    for task in HEADS:
        model, processor = load_head(task, model_dir, tokenizer, image_size)
        start = time.perf_counter()
        with torch.no_grad():
            if task == "backbone":
                inputs = processor(images=pictures[:1], text=texts[:1], return_tensors="pt")
                out = model(**inputs)
                result = (f"last_hidden_state {tuple(out.last_hidden_state.shape)} = image "
                          f"{tuple(out.image_last_hidden_state.shape)} + text {tuple(out.text_last_hidden_state.shape)}")
            elif task == "image_classification":
                logits = model(**processor.image_processor(pictures, return_tensors="pt")).logits
                top = logits.softmax(-1).max(-1)
                result = ", ".join(f"{name}: {model.config.id2label[int(i)]} ({p:.2f})"
                                   for name, p, i in zip(names, top.values, top.indices))
            elif task == "vqa":
                inputs = processor(images=pictures[:1], text=["what is in the picture ?"], return_tensors="pt")
                scores = model(**inputs).logits.sigmoid()[0]
                best = scores.topk(3)
                result = "top answers " + ", ".join(
                    f"{model.config.id2label[int(i)]} ({s:.2f})" for s, i in zip(best.values, best.indices))
            elif task == "visual_reasoning":
                inputs = processor(images=[pictures[:2]], text=["the left image shows a person"],
                                   return_tensors="pt")
                probability = model(**inputs).logits.softmax(-1)[0, 1]
                result = f"pixel_values {tuple(inputs['pixel_values'].shape)}, P(True) = {probability:.3f}"
            elif task == "retrieval":
                inputs = processor(images=pictures, text=texts, return_tensors="pt")
                out = model(**inputs)
                result = f"logits_per_image {tuple(out.logits_per_image.shape)}, best caption per image " + str(
                    out.logits_per_image.argmax(-1).tolist())
            else:
                pixel_values = processor(images=pictures[:2], return_tensors="pt")["pixel_values"]
                ids = model.generate(pixel_values=pixel_values, num_beams=3, max_new_tokens=8)
                result = "captions " + str(processor.batch_decode(ids, skip_special_tokens=True))
        print(f"{type(model).__name__:34s} {time.perf_counter() - start:5.2f}s  {result}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a folder with one converted checkpoint per task subfolder")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)
    run(args.model_dir, args.image_size)


if __name__ == "__main__":
    main()
