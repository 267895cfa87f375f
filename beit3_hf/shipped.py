"""
The small BEiT-3 models shipped inside the package, trained by the package itself, and their held-out evaluation.

No BEiT-3 weights can be downloaded here, so `examples/build_shipped_models.py` trains small ones from nothing on
data the package generates (the shapes world, Fashion-MNIST): a VQ-KD visual tokenizer, masked data modeling from
random init, then every fine-tuning from that checkpoint. They live in `beit3_hf/assets/models/<name>/` as ordinary
Hugging Face model directories (fp16 safetensors that load as fp32, config, processor, tokenizer, model card):

```python
>>> from transformers import AutoModelForVisualQuestionAnswering
>>> from beit3_hf.shipped import shipped_model_path
>>> model = AutoModelForVisualQuestionAnswering.from_pretrained(shipped_model_path("shapes-vqa"))  # doctest: +SKIP
>>> model, processor = load_shipped_model("shapes-vqa")                                         # doctest: +SKIP
```

They are toy models of a toy domain (64-pixel scenes of 1-3 coloured shapes, 28-pixel clothes), not a substitute
for the released weights (`beit3-convert`).

[`evaluate_shipped`] scores one of them on held-out examples: scenes drawn from their own random stream
(split name `"heldout"`, never used for training or the scripts' test splits) and the first Fashion-MNIST test
images (a sample of them ships in the package, so the demo runs without the Debian dataset). `python -m beit3_hf.demo`
prints these answers and scores, and the model cards carry the same figures.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from transformers.utils import logging

from .data import shapes
from .masking import mask_text_tokens

logger = logging.get_logger(__name__)

__all__ = [
    "HELD_OUT_SPLIT",
    "SHIPPED_MODELS",
    "HeldOutResult",
    "ShippedModel",
    "contact_sheet",
    "evaluate_shipped",
    "load_shipped_model",
    "shipped_model_path",
]

#: The split name of the held-out scenes: [`beit3_hf.data.shapes`] draws each split from its own random stream.
HELD_OUT_SPLIT = "heldout"
#: Held-out examples per model in the shipped figures (the demo and the model cards).
DEFAULT_NUM_EXAMPLES = 200
#: The smaller sample CI rescores (`scores.json` keeps its figures too).
CI_NUM_EXAMPLES = 50
FASHION_MNIST_SAMPLE = "fashion_mnist_test_sample.npz"
MIN_OBJECT_PIXELS = 8  # a class covering fewer pixels of a 64 x 64 segmentation map is not counted as found
MASK_PROBABILITY = 0.5  # of the caption tokens, for the pretrained model's held-out masked-token accuracy


@dataclass(frozen=True)
class ShippedModel:
    name: str
    title: str
    auto_class: str  # the class that loads it: a transformers Auto class, or a beit3_hf one where none fits
    pipeline_tag: str | None
    metric: str  # the headline figure's name
    data: str  # what it was trained on


SHIPPED_MODELS: dict[str, ShippedModel] = {
    model.name: model
    for model in (
        ShippedModel("shapes-pretrained", "masked data modeling (BEiT3ForMaskedDataModeling)",
                     "AutoModelForPreTraining", None, "masked-token accuracy",
                     "shapes world: 20,000 images, 60,000 texts (captions, VQA questions), 20,000 image-caption pairs"),
        ShippedModel("fashion-mnist", "Fashion-MNIST classification (BEiT3ForImageClassification)",
                     "AutoModelForImageClassification", "image-classification", "accuracy",
                     "Fashion-MNIST: 60,000 training images, 10 classes"),
        ShippedModel("shapes-vqa", "shapes VQA (BEiT3ForVisualQuestionAnswering)",
                     "AutoModelForVisualQuestionAnswering", "visual-question-answering", "VQA score",
                     "shapes VQA: 40,000 questions on 20,000 scenes, 17 answers"),
        ShippedModel("shapes-nlvr2", "shapes two-image reasoning, NLVR2 format (BEiT3ForVisualReasoning)",
                     "BEiT3ForVisualReasoning", None, "accuracy",
                     "shapes NLVR2: 20,000 image pairs with a true or false statement"),
        ShippedModel("shapes-retrieval", "shapes image-text retrieval (BEiT3ForImageTextRetrieval)",
                     "AutoModelForZeroShotImageClassification", "zero-shot-image-classification", "R@1",
                     "shapes retrieval: 9,414 image-caption pairs (captions unique)"),
        ShippedModel("shapes-captioning", "shapes captioning (BEiT3ForCaptioning)", "AutoModelForImageTextToText",
                     "image-text-to-text", "BLEU-4", "shapes captioning: 20,000 image-caption pairs"),
        ShippedModel("shapes-segmentation", "shapes semantic segmentation (UperNet on BEiT3Backbone)",
                     "AutoModelForSemanticSegmentation", "image-segmentation", "mIoU",
                     "shapes segmentation: 20,000 scenes, 13 classes (background + colour x shape)"),
    )
}


def models_dir() -> Path:
    return Path(str(resources.files("beit3_hf") / "assets" / "models"))


def shipped_model_path(name: str) -> Path:
    """The directory of the shipped model `name` (one of `SHIPPED_MODELS`), for any `from_pretrained`."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"Unknown shipped model {name!r}; the shipped ones are {sorted(SHIPPED_MODELS)}.")
    path = models_dir() / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The shipped model {name!r} is not in {path}; regenerate it with "
            "`python examples/build_shipped_models.py --work_dir runs/shipped`."
        )
    return path


def _model_class(name: str):
    import transformers

    import beit3_hf  # registers the BEiT-3 classes with the Auto classes

    return getattr(beit3_hf, name, None) or getattr(transformers, name)


def _load(path: Path, auto_class: str):
    import transformers

    model = _model_class(auto_class).from_pretrained(path, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model, processor


def load_shipped_model(name: str):
    """`(model, processor)` of the shipped model `name`, in eval mode, fp32."""
    return _load(shipped_model_path(name), SHIPPED_MODELS[name].auto_class)


# ---------------------------------------------------------------------------------------------------------------------
# Held-out examples


def held_out_scenes(num_scenes: int) -> list[shapes.Scene]:
    return shapes.split_scenes(HELD_OUT_SPLIT, num_scenes)


def _render(scene: shapes.Scene) -> Image.Image:
    return shapes.render_scene(scene)


def fashion_mnist_sample(num_images: int, assets_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first `num_images` Fashion-MNIST test images (uint8, N x 28 x 28), labels and class names, from the
    sample shipped in `assets_dir` (default: the package's models directory)."""
    with np.load((assets_dir or models_dir()) / FASHION_MNIST_SAMPLE) as sample:
        images, labels, names = sample["images"], sample["labels"], [str(n) for n in sample["names"]]
    if num_images > len(images):
        raise ValueError(f"The shipped Fashion-MNIST sample has {len(images)} images, asked for {num_images}.")
    return images[:num_images], labels[:num_images], names


def write_fashion_mnist_sample(data_dir: str | Path, output_dir: str | Path, num_images: int = 1000):
    """Saves the first `num_images` test images of the Debian dataset (in `data_dir`) as the shipped sample."""
    from .data.fashion_mnist import FASHION_MNIST_LABELS, _folder_name, read_fashion_mnist_split

    images, labels = read_fashion_mnist_split("test", data_dir)
    # class names as the imagefolder export spells them, which are the fine-tuned model's id2label
    names = np.array([_folder_name(label) for label in FASHION_MNIST_LABELS])
    np.savez_compressed(Path(output_dir) / FASHION_MNIST_SAMPLE, images=images[:num_images],
                        labels=labels[:num_images].astype(np.int64), names=names)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class HeldOutResult:
    """Scores of one model on `num_examples` held-out examples, and one row per example for display."""

    name: str
    num_examples: int
    scores: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # images, prompt, answer, truth, correct

    @property
    def headline(self) -> float:
        return self.scores[SHIPPED_MODELS[self.name].metric]

    def summary(self) -> str:
        figures = ", ".join(f"{key} {value:.3f}" for key, value in self.scores.items())
        return f"{self.name}: {figures} on {self.num_examples} held-out examples"


def _batches(items: Sequence, size: int = 64):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pretrained(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    tokenizer = processor.tokenizer
    generator = torch.Generator().manual_seed(0)
    scenes = held_out_scenes(n)
    rows, right, total = [], 0, 0
    for batch in _batches(scenes):
        inputs = processor(images=[_render(s) for s in batch], text=[shapes.caption(s) for s in batch],
                           padding=True, return_tensors="pt")
        input_ids, labels = mask_text_tokens(inputs["input_ids"], inputs["attention_mask"],
                                             tokenizer.all_special_ids, tokenizer.mask_token_id,
                                             probability=MASK_PROBABILITY, generator=generator)
        out = model(pixel_values=inputs["pixel_values"], input_ids=input_ids,
                    attention_mask=inputs["attention_mask"], text_labels=labels)
        guesses = out.text_logits.argmax(-1).tolist()
        predicted = labels.ne(-100) & inputs["attention_mask"].bool()
        cursor = 0
        for i, scene in enumerate(batch):
            count = int(predicted[i].sum())
            row_guesses, row_truth = guesses[cursor : cursor + count], labels[i][predicted[i]].tolist()
            cursor += count
            right += sum(g == t for g, t in zip(row_guesses, row_truth))
            total += count
            guess_iter = iter(tokenizer.convert_ids_to_tokens(row_guesses))
            pieces = []
            for token in tokenizer.convert_ids_to_tokens(input_ids[i][inputs["attention_mask"][i].bool()].tolist()):
                if token == tokenizer.mask_token:  # shown as [guess], keeping the guess's word boundary
                    guess = next(guess_iter)
                    pieces.append((" " if guess.startswith("▁") else "") + f"[{guess.lstrip('▁')}]")
                elif token not in tokenizer.all_special_tokens:
                    pieces.append(token.replace("▁", " "))
            text = "".join(pieces)
            rows.append(dict(images=[_render(scene)], prompt=None, answer=text.strip(),
                             truth=shapes.caption(scene), correct=row_guesses == row_truth))
    return HeldOutResult("shapes-pretrained", n, {"masked-token accuracy": right / max(total, 1)}, rows)


def _fashion_mnist(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    from .metrics import accuracy

    images, labels, names = fashion_mnist_sample(n, assets_dir)
    references = [model.config.label2id[names[label]] for label in labels.tolist()]  # the sample's ids -> model's
    pictures = [Image.fromarray(image).convert("RGB") for image in images]
    predictions = []
    for batch in _batches(pictures, 256):
        predictions += model(**processor(batch, return_tensors="pt")).logits.argmax(-1).tolist()
    label = lambda index: model.config.id2label[index].replace("_", " ")  # noqa: E731
    rows = [dict(images=[picture], prompt=None, answer=label(p), truth=label(r), correct=p == r)
            for picture, p, r in zip(pictures, predictions, references)]
    return HeldOutResult("fashion-mnist", n, {"accuracy": accuracy(predictions, references)}, rows)


def held_out_questions(n: int) -> list[tuple[shapes.Scene, dict]]:
    """One VQA question per held-out scene (`n` of them)."""
    rng = shapes._split_rng(0, HELD_OUT_SPLIT, "vqa")
    return [(scene, shapes.vqa_questions(scene, rng, 1)[0]) for scene in held_out_scenes(n)]


def _vqa(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    from .metrics import vqa_score
    from .vqa import answer_target

    examples = held_out_questions(n)
    label2id = {answer: int(i) for answer, i in model.config.label2id.items()}
    predictions = []
    for batch in _batches(examples):
        inputs = processor(images=[_render(s) for s, _ in batch], text=[q["question"] for _, q in batch],
                           padding=True, return_tensors="pt")
        predictions += model(**inputs).logits.argmax(-1).tolist()
    targets = torch.stack([answer_target(q["answers"], label2id, model.config.num_labels) for _, q in examples])
    rows = [dict(images=[_render(scene)], prompt=q["question"], answer=model.config.id2label[p], truth=q["answer"],
                 correct=model.config.id2label[p] == q["answer"])
            for (scene, q), p in zip(examples, predictions)]
    return HeldOutResult("shapes-vqa", n, {"VQA score": vqa_score(predictions, targets.numpy())}, rows)


def _nlvr2(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    from .metrics import accuracy

    scenes = held_out_scenes(max(n, 2))
    pairs = shapes.nlvr2_examples(scenes, n, shapes._split_rng(0, HELD_OUT_SPLIT, "nlvr2"))
    predictions = []
    for batch in _batches(pairs):
        inputs = processor(images=[[_render(scenes[p["left"]]), _render(scenes[p["right"]])] for p in batch],
                           text=[p["text"] for p in batch], padding=True, return_tensors="pt")
        predictions += model(**inputs).logits.argmax(-1).tolist()
    names = {0: "false", 1: "true"}
    rows = [dict(images=[_render(scenes[p["left"]]), _render(scenes[p["right"]])], prompt=p["text"],
                 answer=names[prediction], truth=names[p["label"]], correct=prediction == p["label"])
            for p, prediction in zip(pairs, predictions)]
    return HeldOutResult("shapes-nlvr2", n, {"accuracy": accuracy(predictions, [p["label"] for p in pairs])}, rows)


def held_out_unique_captions(n: int) -> list[shapes.Scene]:
    """The first `n` held-out scenes whose captions are distinct (retrieval needs one right answer)."""
    seen, scenes, drawn = set(), [], 0
    while len(scenes) < n:
        drawn = max(2 * n, 2 * drawn)
        seen, scenes = set(), []
        for scene in held_out_scenes(drawn):
            if shapes.caption(scene) not in seen:
                seen.add(shapes.caption(scene))
                scenes.append(scene)
    return scenes[:n]


def _retrieval(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    from .metrics import retrieval_recall_from_scores

    scenes = held_out_unique_captions(n)
    captions = [shapes.caption(s) for s in scenes]
    image_embeds, text_embeds = [], []
    for batch in _batches(scenes):
        image_embeds.append(model.get_image_features(**processor(images=[_render(s) for s in batch],
                                                                   return_tensors="pt")).pooler_output)
    for batch in _batches(captions):
        text_inputs = processor(text=list(batch), padding=True, return_tensors="pt")
        text_embeds.append(model.get_text_features(**text_inputs).pooler_output)
    scores = torch.cat(image_embeds) @ torch.cat(text_embeds).T
    recall = retrieval_recall_from_scores(scores.numpy(), ks=(1, 5))
    best = scores.argmax(-1).tolist()
    rows = [dict(images=[_render(scene)], prompt="best caption", answer=captions[b], truth=captions[i],
                 correct=b == i) for i, (scene, b) in enumerate(zip(scenes, best))]
    figures = {"R@1": (recall["tr_r1"] + recall["ir_r1"]) / 2, "image->text R@1": recall["tr_r1"],
               "text->image R@1": recall["ir_r1"]}
    return HeldOutResult("shapes-retrieval", n, figures, rows)


def _captioning(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    from .metrics import bleu4

    scenes = held_out_scenes(n)
    captions = []
    for batch in _batches(scenes):
        pixel_values = processor(images=[_render(s) for s in batch], return_tensors="pt")["pixel_values"]
        ids = model.generate(pixel_values=pixel_values, max_new_tokens=40)
        captions += processor.batch_decode(ids, skip_special_tokens=True)
    captions = [c.strip() for c in captions]
    truths = [shapes.caption(s) for s in scenes]
    rows = [dict(images=[_render(scene)], prompt=None, answer=c, truth=t, correct=c == t)
            for scene, c, t in zip(scenes, captions, truths)]
    exact = float(np.mean([c == t for c, t in zip(captions, truths)]))
    figures = {"BLEU-4": bleu4(captions, truths), "exact match": exact}
    return HeldOutResult("shapes-captioning", n, figures, rows)


#: Label-map colours for the contact sheet (class id -> RGB): background grey, shapes in their colour.
def _label_palette() -> np.ndarray:
    palette = np.full((len(shapes.LABEL_NAMES), 3), 40, dtype=np.uint8)
    for index, label in enumerate(shapes.LABEL_NAMES[1:], start=1):
        palette[index] = shapes._RGB[label.split()[0]]
    return palette


def _segmentation(model, processor, n: int, assets_dir: Path | None = None) -> HeldOutResult:
    from .metrics import mean_iou

    scenes = held_out_scenes(n)
    truths = torch.stack([torch.from_numpy(np.asarray(shapes.render_label_map(s), dtype=np.int64)) for s in scenes])
    predictions = []
    for batch in _batches(scenes):
        logits = model(**processor([_render(s) for s in batch], return_tensors="pt")).logits
        logits = torch.nn.functional.interpolate(logits, size=truths.shape[-2:], mode="bilinear", align_corners=False)
        predictions.append(logits.argmax(1))
    predictions = torch.cat(predictions)
    palette = _label_palette()
    found = lambda label_map: {shapes.LABEL_NAMES[i] for i in label_map.unique().tolist() if i and  # noqa: E731
                               int((label_map == i).sum()) >= MIN_OBJECT_PIXELS}
    rows = []
    for scene, prediction, truth in zip(scenes, predictions, truths):
        pixel_accuracy = float((prediction == truth).float().mean())
        predicted, present = found(prediction), found(truth)
        rows.append(dict(images=[_render(scene), Image.fromarray(palette[prediction.numpy()])], prompt=None,
                         answer=f"{', '.join(sorted(predicted)) or 'nothing'} (pixel accuracy {pixel_accuracy:.2f})",
                         truth=", ".join(sorted(present)), correct=predicted == present))
    figures = mean_iou(predictions, truths, len(shapes.LABEL_NAMES))
    return HeldOutResult("shapes-segmentation", n, {"mIoU": figures["mean_iou"],
                                                    "pixel accuracy": figures["overall_accuracy"]}, rows)


EVALUATORS: dict[str, Callable] = {
    "shapes-pretrained": _pretrained,
    "fashion-mnist": _fashion_mnist,
    "shapes-vqa": _vqa,
    "shapes-nlvr2": _nlvr2,
    "shapes-retrieval": _retrieval,
    "shapes-captioning": _captioning,
    "shapes-segmentation": _segmentation,
}


@torch.no_grad()
def evaluate_shipped(name: str, model=None, processor=None, num_examples: int = DEFAULT_NUM_EXAMPLES,
                     assets_dir: Path | None = None) -> HeldOutResult:
    """Scores the shipped model `name` (or `model` / `processor` of the same task) on `num_examples` held-out
    examples; deterministic (fixed scenes, fixed masks). `assets_dir` holds the Fashion-MNIST sample (default: the
    package's)."""
    if name not in EVALUATORS:
        raise ValueError(f"Unknown shipped model {name!r}; the shipped ones are {sorted(EVALUATORS)}.")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 2:
        raise ValueError(f"`num_examples` must be an integer >= 2, got {num_examples!r}.")
    if model is None:
        model, processor = load_shipped_model(name)
    return EVALUATORS[name](model.eval(), processor, num_examples, assets_dir)


def shipped_scores() -> dict:
    """The figures recorded when the shipped models were built (`assets/models/scores.json`)."""
    return json.loads((models_dir() / "scores.json").read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Contact sheet


def contact_sheet(results: Sequence[HeldOutResult], path: str | Path, per_model: int = 6) -> Path:
    """One PNG: for each result a row of its first `per_model` examples (images, prompt, answer; a green frame when
    right, red when wrong, and the truth under a wrong answer), headed by the model's name and score."""
    thumb, cell_width, pad, line = 96, 232, 8, 12
    font = ImageFont.load_default()
    wrap = lambda text: textwrap.wrap(text, 38) or [""]  # noqa: E731

    def cell_lines(row: dict) -> list[tuple[str, tuple[int, int, int]]]:
        lines = [(text, (90, 90, 90)) for text in wrap(row["prompt"])] if row["prompt"] else []
        lines += [(text, (0, 0, 0)) for text in wrap(f"-> {row['answer']}")]
        if not row["correct"]:
            lines += [(text, (160, 0, 0)) for text in wrap(f"truth: {row['truth']}")]
        return lines

    shown = [(result, result.rows[:per_model]) for result in results]
    row_heights = [18 + thumb + pad + line * max((len(cell_lines(r)) for r in rows), default=1) + pad
                   for _, rows in shown]
    sheet = Image.new("RGB", (pad + per_model * cell_width, sum(row_heights) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    top = pad
    for (result, rows), height in zip(shown, row_heights):
        headline = SHIPPED_MODELS[result.name].metric
        draw.text((pad, top), f"{result.name}: {headline} {result.headline:.3f} ({result.num_examples} held-out)",
                  fill=(0, 0, 0), font=font)
        for column, row in enumerate(rows):
            left = pad + column * cell_width
            width = len(row["images"]) * (thumb + pad) - pad
            frame = (0, 150, 0) if row["correct"] else (200, 0, 0)
            draw.rectangle((left, top + 16, left + width + 3, top + 19 + thumb), outline=frame, width=2)
            for index, image in enumerate(row["images"]):
                sheet.paste(image.convert("RGB").resize((thumb, thumb), Image.NEAREST),
                            (left + 2 + index * (thumb + pad), top + 18))
            y = top + 18 + thumb + pad // 2
            for text, colour in cell_lines(row):
                draw.text((left, y), text, fill=colour, font=font)
                y += line
        top += height
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Building the shipped directories (examples/build_shipped_models.py)

_SKIPPED_FILES = {"training_args.bin", "trainer_state.json", "stage_done.json", "optimizer.pt", "scheduler.pt",
                  "rng_state.pth"}


def _copy_half(source: Path, target: Path, auto_class: str):
    """`target` = `source` with fp16 weights (loading as fp32: `dtype` float32 in the config), no remote code."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.suffix not in {".py", ".safetensors"} and file.name not in _SKIPPED_FILES \
                and not file.name.endswith("_results.json"):
            shutil.copy2(file, target / file.name)
    model = _model_class(auto_class).from_pretrained(source, dtype=torch.float32)
    model.half().save_pretrained(target)
    for code in target.glob("*.py"):  # the remote-code copies save_pretrained adds: `import beit3_hf` serves them
        code.unlink()
    config = json.loads((target / "config.json").read_text())
    config.pop("auto_map", None)
    config["dtype"] = "float32"  # `from_pretrained(dtype="auto")` upcasts the fp16 tensors
    for sub in ("backbone_config",):
        if isinstance(config.get(sub), dict):
            config[sub].pop("auto_map", None)
            config[sub]["dtype"] = "float32"
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _card(spec: ShippedModel, result: HeldOutResult, full_precision: HeldOutResult, test_metrics: dict,
          command: str, lineage: list[str], build: dict) -> str:
    tag = f"pipeline_tag: {spec.pipeline_tag}\n" if spec.pipeline_tag else ""
    figures = "\n".join(f"| {key} | {value:.4f} | {full_precision.scores[key]:.4f} |"
                        for key, value in result.scores.items())
    tests = "\n".join(f"| {key} | {value:.4f} |" for key, value in sorted(test_metrics.items())
                      if isinstance(value, float) and key.startswith("eval_") and "runtime" not in key
                      and "per_second" not in key)
    minutes = build["stages_wall_seconds"] / 60
    steps = " -> ".join(["random init", *(f"`{name}`" for name in lineage)])
    return f"""---
library_name: transformers
{tag}license: mit
tags: [beit3, beit3_hf, toy]
---

# beit3_hf/{spec.name}: {spec.title}

A small BEiT-3 (4 Multiway blocks, 128 wide, 32-pixel images in 8-pixel patches) trained by this package from
random init, on CPU, by `{build['command']}` (all seven models in {minutes:.0f} min on
{build['machine']}). It shows that the package's models, scripts and heads work end to end; it is **not** a substitute
for the released BEiT-3 weights (convert those with `beit3-convert`).

```python
from {"beit3_hf" if spec.auto_class.startswith("BEiT3") else "transformers"} import {spec.auto_class}
from beit3_hf.shipped import shipped_model_path, load_shipped_model

model = {spec.auto_class}.from_pretrained(shipped_model_path("{spec.name}"))
model, processor = load_shipped_model("{spec.name}")   # the same, with its processor, eval mode
```

## Data

{spec.data}. Everything is generated offline: the shapes world by `beit3_hf.data.shapes` (64-pixel scenes of 1-3
coloured circles, squares and triangles), Fashion-MNIST from the Debian package `dataset-fashion-mnist`.

## How it was made

{steps}. `shapes-pretrained` is BEiT-3's masked data modeling from random init (masked text; block-wise masked
patches predicted as the codes of a VQ-KD visual tokenizer, itself trained by the build; masked image-caption
pairs); each later step fine-tunes the previous one. The last step's command, as the build ran it (`$WORK` = its
`--work_dir`):

```bash
{command}
```

## Figures

{result.num_examples} held-out examples (scenes drawn from the `"{HELD_OUT_SPLIT}"` split's own random stream, never
trained on; the first Fashion-MNIST test images), the figures `python -m beit3_hf.demo` prints:

| metric | shipped (fp16 weights) | before the fp16 cast |
|---|---|---|
{figures}

The training script's own evaluation (the test split of the same data):

| metric | value |
|---|---|
{tests}

## Limits

A toy domain: 64-pixel synthetic scenes (or 28-pixel grey clothes) and a 94-token vocabulary. The model knows nothing
else; its numbers say that the pipeline learns, not how well BEiT-3 does on real data.
"""


def package_models(sources: dict[str, Path], output_dir: str | Path, commands: dict[str, str],
                   lineage: dict[str, list[str]], build: dict, fashion_mnist_dir: str | Path | None = None,
                   num_examples: int | None = None):
    """Writes the shipped directories from the build's fine-tuned `sources` (name -> directory): fp16 weights,
    processor, tokenizer, model card, and `scores.json` with the held-out figures (also on the first
    `CI_NUM_EXAMPLES`, which CI recomputes), which it also returns. `fashion_mnist_dir`: the IDX files (default:
    the Debian package's)."""
    from .data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR

    fashion_mnist_dir = fashion_mnist_dir or DEFAULT_FASHION_MNIST_DIR
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    num_examples = num_examples or DEFAULT_NUM_EXAMPLES
    write_fashion_mnist_sample(fashion_mnist_dir, output_dir)
    scores = {}
    for name, source in sources.items():
        spec = SHIPPED_MODELS[name]
        target = output_dir / name
        _copy_half(source, target, spec.auto_class)
        shipped = _load(target, spec.auto_class)
        full_precision = evaluate_shipped(name, *_load(source, spec.auto_class), num_examples, output_dir)
        result = evaluate_shipped(name, *shipped, num_examples, output_dir)
        ci_sample = evaluate_shipped(name, *shipped, min(CI_NUM_EXAMPLES, num_examples), output_dir)
        test_metrics = json.loads((source / "all_results.json").read_text()) \
            if (source / "all_results.json").exists() else {}
        (target / "README.md").write_text(_card(spec, result, full_precision, test_metrics, commands[name],
                                                   lineage[name], build))
        scores[name] = dict(num_examples=num_examples, scores=result.scores, fp32_scores=full_precision.scores,
                            ci_num_examples=ci_sample.num_examples, ci_scores=ci_sample.scores,
                            test_split=test_metrics)
        logger.info(f"{result.summary()} (before the fp16 cast: {full_precision.scores})")
    (output_dir / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores

