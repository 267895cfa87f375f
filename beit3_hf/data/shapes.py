"""A deterministic synthetic "shapes world" for every BEiT-3 vision-language task, offline.

No real image-text data can be downloaded here, so this module draws small scenes of coloured shapes and derives, from
the same scenes, data in the format of each BEiT-3 fine-tuning task:

* **captioning** and **retrieval**: one caption per image, e.g. "a large blue triangle at the top left and a small red
  circle at the bottom right" (objects in cell order).
* **vqa**: questions of five types (`color`, `shape`, `count`, `exist`, `where`) with a 17-answer vocabulary
  ([`VQA_ANSWERS`]) and ten annotator answers per question, so the VQAv2 soft-score path (1 vote = 0.3, ... ,
  4+ votes = 1.0) is exercised.
* **nlvr2**: two images and a statement about them, true or false, e.g. "the left image has more circles than the
  right image". Every statement is drawn first and then paired with images that make it true or false with equal
  probability, so a text-only model stays at chance.

A scene has 1-3 objects (shape x colour x size) in distinct cells of a 2x2 grid on a grey background, with jittered
positions and colours. Everything is reproducible from the seed.

On disk ([`generate_shapes_dataset`] or `python -m beit3_hf.data.shapes --output-dir data/shapes`), every task is a
plain `imagefolder` directory that `datasets.load_dataset("imagefolder", data_dir=...)` reads offline:

```
data/shapes/
    captioning/{train,test}/metadata.jsonl + images/*.png   file_name, text, image_id
    retrieval/{train,test}/...                              file_name, text, image_id (captions unique per split)
    vqa/{train,test}/...                                    file_name, question, question_type, answers, answer,
                                                            image_id, question_id
    nlvr2/{train,test}/...                                  left_image_file_name, right_image_file_name, text, label
    shapes_spm.model                                        SentencePiece unigram model trained on all the text
    tokenizer/                                              the same model in the BEiT-3 (XLM-R) id layout
```

`imagefolder` turns `file_name` into an `image` column and `<name>_file_name` into a `<name>` column, so the NLVR2
rows load with `left_image` and `right_image` columns. [`load_shapes`] wraps this and casts the NLVR2 `label` to a
`ClassLabel` (`0 = "False"`, `1 = "True"`, as in unilm).
"""

from __future__ import annotations

import argparse
import logging as std_logging
import io
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw
from transformers.utils import logging


logger = logging.get_logger(__name__)

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell order: row-major 2x2 grid
QUESTION_TYPES = ("color", "shape", "count", "exist", "where")
COUNT_ANSWERS = ("0", "1", "2", "3")
YES_NO = ("yes", "no")
VQA_ANSWERS = COLORS + SHAPES + COUNT_ANSWERS + YES_NO + POSITIONS
"""The 17 possible VQA answers; use their order as the answer-label ids (`VQA_ANSWERS.index(answer)`)."""
NLVR2_LABEL_NAMES = ("False", "True")
TASKS = ("captioning", "retrieval", "vqa", "nlvr2")
SPLITS = ("train", "test")

_RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
_COLOR_JITTER = 12  # per channel, keeps every hue unambiguous
_BACKGROUND_RANGE = (100, 155)  # grey level
_HALF_EXTENT = {"small": 0.2, "large": 0.36}  # fraction of the cell side
_MAX_OFFSET = 0.08  # largest centre jitter, fraction of the cell side
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
_NUM_ANNOTATORS = 10
_COUNT_ANSWER_WEIGHTS = (1.0, 1.1, 3.2, 11.0)  # fitted by iterative proportional scaling


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene. `offset` is the centre jitter in [-1, 1] (scaled at render time) and `fill` the RGB."""

    shape: str
    color: str
    size: str
    position: str
    offset: tuple[float, float] = (0.0, 0.0)
    fill: tuple[int, int, int] | None = None

    @property
    def description(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """1-3 objects in distinct cells, sorted in cell order ([`POSITIONS`]), on a grey `background` level."""

    objects: tuple[ShapeObject, ...]
    background: int = 128

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        """Number of objects with the given shape and/or colour (all objects when both are `None`)."""
        return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in self.objects)

    def has(self, shape: str | None = None, color: str | None = None, position: str | None = None) -> bool:
        return any(
            (shape is None or o.shape == shape)
            and (color is None or o.color == color)
            and (position is None or o.position == position)
            for o in self.objects
        )


def sample_scene(rng: random.Random) -> Scene:
    """Draws a scene: 1-3 objects in distinct cells, uniform shape/colour/size, jittered centre and colour."""
    num_objects = rng.randint(1, 3)
    cells = sorted(rng.sample(range(len(POSITIONS)), num_objects))
    objects = []
    for cell in cells:
        color = rng.choice(COLORS)
        fill = tuple(min(255, max(0, c + rng.randint(-_COLOR_JITTER, _COLOR_JITTER))) for c in _RGB[color])
        objects.append(
            ShapeObject(
                shape=rng.choice(SHAPES),
                color=color,
                size=rng.choice(SIZES),
                position=POSITIONS[cell],
                offset=(rng.uniform(-1, 1), rng.uniform(-1, 1)),
                fill=fill,
            )
        )
    return Scene(objects=tuple(objects), background=rng.randint(*_BACKGROUND_RANGE))


def _draw_objects(scene: Scene, draw: ImageDraw.ImageDraw, image_size: int, fill: Callable[[ShapeObject], object]):
    """Draws every object of `scene` with `fill(object)` on an `image_size` canvas (later objects on top)."""
    cell = image_size / 2
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 2)
        cx = (col + 0.5 + _MAX_OFFSET * obj.offset[0]) * cell
        cy = (row + 0.5 + _MAX_OFFSET * obj.offset[1]) * cell
        h = _HALF_EXTENT[obj.size] * cell
        box = [round(cx - h), round(cy - h), round(cx + h), round(cy + h)]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill(obj))
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill(obj))
        else:
            draw.polygon([(round(cx), box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill(obj))


def _check_image_size(image_size: int):
    if image_size < 8:
        raise ValueError(f"`image_size` must be at least 8 pixels, got {image_size}.")


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draws `scene` on an `image_size` x `image_size` RGB canvas."""
    _check_image_size(image_size)
    image = Image.new("RGB", (image_size, image_size), (scene.background,) * 3)
    _draw_objects(scene, ImageDraw.Draw(image), image_size, lambda obj: obj.fill or _RGB[obj.color])
    return image


LABEL_NAMES = ("background",) + tuple(f"{color} {shape}" for color in COLORS for shape in SHAPES)
"""Classes of [`render_label_map`]: 0 is the background, `1 + COLORS.index(c) * 3 + SHAPES.index(s)` a shape."""


def render_label_map(scene: Scene, image_size: int = 64) -> Image.Image:
    """The per-pixel class of [`render_scene`]'s image (same geometry, no anti-aliasing), as an "L" image whose
    values index [`LABEL_NAMES`]."""
    _check_image_size(image_size)
    label_map = Image.new("L", (image_size, image_size), 0)
    fill = lambda obj: LABEL_NAMES.index(f"{obj.color} {obj.shape}")  # noqa: E731
    _draw_objects(scene, ImageDraw.Draw(label_map), image_size, fill)
    return label_map


def split_scenes(split: str, num_scenes: int, seed: int = 0) -> list[Scene]:
    """The scenes of one split of [`generate_shapes_dataset`] (same `seed` and count), in `image_id` order."""
    scene_rng = _split_rng(seed, split, "scenes")
    return [sample_scene(scene_rng) for _ in range(num_scenes)]


def caption(scene: Scene) -> str:
    """The objects in cell order: "a large blue triangle at the top left and a small red circle at the top right"."""
    parts = [f"a {o.description} at the {o.position}" for o in scene.objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ---------------------------------------------------------------------------------------------------------------------
# VQA


def _annotator_answers(answer: str, alternatives: Sequence[str], rng: random.Random) -> list[str]:
    """Ten annotator answers: all agree half of the time, otherwise 1-3 give another answer of the same type."""
    answers = [answer] * _NUM_ANNOTATORS
    if rng.random() < 0.5:
        wrong = [a for a in alternatives if a != answer]
        for index in rng.sample(range(_NUM_ANNOTATORS), rng.randint(1, 3)):
            answers[index] = rng.choice(wrong)
    return answers


def _count_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    # Pick the answer first, among those some question (total or per colour) has for this scene, with weights that
    # make 0, 1, 2 and 3 equally frequent under `sample_scene` (3 is only possible in a third of the scenes); then
    # ask one of the questions with that answer.
    candidates = [("how many objects are there?", scene.count())]
    candidates += [(f"how many {c} objects are there?", scene.count(color=c)) for c in COLORS]
    possible = sorted({count for _, count in candidates})
    target = rng.choices(possible, weights=[_COUNT_ANSWER_WEIGHTS[count] for count in possible])[0]
    return rng.choice([question for question, count in candidates if count == target]), str(target)


def _question(scene: Scene, question_type: str, rng: random.Random) -> tuple[str, str, Sequence[str]] | None:
    """(question, answer, answers of that type) for one type, or `None` when the scene cannot support the type."""
    if question_type == "color":
        obj = rng.choice(scene.objects)
        return f"what color is the object at the {obj.position}?", obj.color, COLORS
    if question_type == "shape":
        obj = rng.choice(scene.objects)
        return f"what shape is the object at the {obj.position}?", obj.shape, SHAPES
    if question_type == "count":
        return (*_count_question(scene, rng), COUNT_ANSWERS)
    if question_type == "exist":
        if rng.random() < 0.5:
            obj = rng.choice(scene.objects)
            color, shape, answer = obj.color, obj.shape, "yes"
        else:
            absent = [(c, s) for c in COLORS for s in SHAPES if not scene.has(shape=s, color=c)]
            (color, shape), answer = rng.choice(absent), "no"
        return f"is there a {color} {shape}?", answer, YES_NO
    if question_type == "where":
        unique = [o for o in scene.objects if scene.count(shape=o.shape, color=o.color) == 1]
        if not unique:
            return None
        obj = rng.choice(unique)
        return f"where is the {obj.color} {obj.shape}?", obj.position, POSITIONS
    raise ValueError(f"Unknown question type {question_type!r}; expected one of {QUESTION_TYPES}.")


def vqa_questions(scene: Scene, rng: random.Random, num_questions: int = 2) -> list[dict]:
    """
    Up to `num_questions` questions of distinct types about `scene`.

    Returns dicts with `question`, `question_type`, `answer` (the true answer, also the annotators' majority) and
    `answers` (ten raw annotator answers, VQAv2 style). Types are drawn uniformly; "where" is only asked about an
    object whose colour and shape are unique in the scene, and another type replaces it when there is none.
    """
    if not 1 <= num_questions <= len(QUESTION_TYPES):
        raise ValueError(f"`num_questions` must be between 1 and {len(QUESTION_TYPES)}, got {num_questions}.")
    rows = []
    for question_type in rng.sample(QUESTION_TYPES, len(QUESTION_TYPES)):
        generated = _question(scene, question_type, rng)
        if generated is None:
            continue
        question, answer, alternatives = generated
        rows.append(
            dict(
                question=question,
                question_type=question_type,
                answers=_annotator_answers(answer, alternatives, rng),
                answer=answer,
            )
        )
        if len(rows) == num_questions:
            break
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# NLVR2


Predicate = Callable[[Scene, Scene], bool]


def _noun(rng: random.Random) -> tuple[str, dict]:
    """A countable noun phrase and the `Scene.count` filter it stands for."""
    kind = rng.randrange(3)
    if kind == 0:
        shape = rng.choice(SHAPES)
        return f"{shape}s", dict(shape=shape)
    if kind == 1:
        color = rng.choice(COLORS)
        return f"{color} shapes", dict(color=color)
    return "objects", {}


def sample_statement(rng: random.Random) -> tuple[str, Predicate]:
    """A random statement about an image pair and the predicate `(left, right) -> bool` that decides it."""
    kind = rng.randrange(6)
    if kind == 0:
        noun, where = _noun(rng)
        return (
            f"the left image has more {noun} than the right image",
            lambda left, right: left.count(**where) > right.count(**where),
        )
    if kind == 1:
        shape, color = rng.choice((None, *SHAPES)), rng.choice((None, *COLORS))
        if shape is None and color is None:
            shape = rng.choice(SHAPES)
        thing = f"{color} {shape or 'shape'}" if color else shape
        quantifier = rng.choice(("both images contain", "at least one image contains"))
        combine = all if quantifier.startswith("both") else any
        return (
            f"{quantifier} a {thing}",
            lambda left, right: combine(s.has(shape=shape, color=color) for s in (left, right)),
        )
    if kind == 2:
        total = rng.randint(2, 6)
        return (
            f"there are exactly {_NUMBER_WORDS[total]} objects in total",
            lambda left, right: left.count() + right.count() == total,
        )
    if kind == 3:
        return (
            "the two images have the same number of objects",
            lambda left, right: left.count() == right.count(),
        )
    if kind == 4:
        side, shape, position = rng.choice(("left", "right")), rng.choice(SHAPES), rng.choice(POSITIONS)
        return (
            f"the {side} image has a {shape} at the {position}",
            lambda left, right: (left if side == "left" else right).has(shape=shape, position=position),
        )
    color = rng.choice(COLORS)
    return (
        f"neither image contains a {color} shape",
        lambda left, right: not left.has(color=color) and not right.has(color=color),
    )


def nlvr2_examples(scenes: Sequence[Scene], num_examples: int, rng: random.Random) -> list[dict]:
    """
    `num_examples` rows `{"left": i, "right": j, "text": statement, "label": 0/1}` over pairs of distinct `scenes`.

    Each row draws a statement and a label (fair coin), then searches random scene pairs for one on which the statement
    has that truth value; a statement that no pair satisfies after a few hundred tries is replaced.
    """
    if len(scenes) < 2:
        raise ValueError(f"NLVR2 pairs need at least 2 scenes, got {len(scenes)}.")
    rows = []
    for _ in range(num_examples):
        label = rng.random() < 0.5
        for _attempt in range(100):
            text, predicate = sample_statement(rng)
            pair = next(
                (
                    (i, j)
                    for i, j in (rng.sample(range(len(scenes)), 2) for _ in range(300))
                    if predicate(scenes[i], scenes[j]) == label
                ),
                None,
            )
            if pair is not None:
                rows.append(dict(left=pair[0], right=pair[1], text=text, label=int(label)))
                break
        else:
            raise RuntimeError(f"Could not find image pairs for NLVR2 statements among {len(scenes)} scenes.")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Writing and loading


def _split_rng(seed: int, split: str, purpose: str) -> random.Random:
    # One independent stream per (split, purpose): e.g. changing how questions are drawn never changes the scenes.
    return random.Random(f"beit3-shapes/{seed}/{split}/{purpose}")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _write_images(scenes: Sequence[Scene], split_dirs: Sequence[Path], image_size: int, desc: str) -> list[str]:
    """Renders each scene once as `images/<id>.png` in every dir (hard links when possible); returns the names."""
    for split_dir in split_dirs:
        (split_dir / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for index, scene in enumerate(logging.tqdm(scenes, desc=desc, unit="image", mininterval=1.0)):
        name = f"images/{index:06d}.png"
        buffer = io.BytesIO()
        render_scene(scene, image_size).save(buffer, format="PNG")
        first = split_dirs[0] / name
        first.write_bytes(buffer.getvalue())
        for split_dir in split_dirs[1:]:
            target = split_dir / name
            try:
                os.link(first, target)
            except OSError:
                target.write_bytes(buffer.getvalue())
        names.append(name)
    return names


def train_shapes_tokenizer(texts: Iterable[str], output_dir: str | os.PathLike, vocab_size: int = 256) -> Path:
    """
    Trains a SentencePiece unigram model on `texts` and saves it in the BEiT-3 id layout.

    Writes `<output_dir>/shapes_spm.model` (spm ids: `<unk>`=0, `<s>`=1, `</s>`=2, as in BEiT-3's `beit3.spm`) and
    converts it with `beit3_hf.tokenization_beit3.convert_spm_to_tokenizer` into `<output_dir>/tokenizer`
    (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, spm id k -> k + 1, `<mask>` last). `vocab_size` is an upper bound: the
    shapes language has fewer pieces. Returns the tokenizer directory.
    """
    import sentencepiece as spm

    from ..tokenization_beit3 import convert_spm_to_tokenizer

    texts = list(texts)
    # SentencePiece seeds its vocabulary with repeated substrings that do not cross a space, keeping only the longest
    # such repeats; a word that always sits in the same phrase ("how many") never becomes a seed and ends up split
    # into characters. Adding every word on its own lines makes each one a repeat in its own right.
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text)})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spm_path = output_dir / "shapes_spm.model"
    with open(spm_path, "wb") as model_writer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts + words * 2),
            model_writer=model_writer,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=1.0,
            normalization_rule_name="identity",
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    tokenizer_dir = output_dir / "tokenizer"
    convert_spm_to_tokenizer(str(spm_path), str(tokenizer_dir))
    return tokenizer_dir


def generate_shapes_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 20000,
    num_test: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    questions_per_image: int = 2,
    vocab_size: int = 256,
    train_tokenizer: bool = True,
) -> dict[str, dict[str, int]]:
    """
    Writes the four task datasets (see the module docstring) and the tokenizer under `output_dir`.

    Each split has `num_train` / `num_test` scenes, shared by all tasks of that split: captioning has one row per
    scene, retrieval one per distinct caption, VQA `questions_per_image` per scene and NLVR2 one pair per scene.
    Existing task directories are replaced. Returns the number of rows per task and split.
    """
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if value < 2:
            raise ValueError(f"`{name}` must be at least 2 (NLVR2 needs image pairs), got {value}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, dict[str, int]] = {task: {} for task in TASKS}
    texts: list[str] = []
    for split, num_scenes in (("train", num_train), ("test", num_test)):
        scenes = split_scenes(split, num_scenes, seed)
        split_dirs = {task: output_dir / task / split for task in TASKS}
        for split_dir in split_dirs.values():
            if split_dir.exists():
                shutil.rmtree(split_dir)
        file_names = _write_images(
            scenes, list(split_dirs.values()), image_size, desc=f"Drawing {split} scenes in {output_dir}"
        )

        captions = [caption(scene) for scene in scenes]
        caption_rows = [dict(file_name=f, text=c, image_id=i) for i, (f, c) in enumerate(zip(file_names, captions))]
        _write_jsonl(split_dirs["captioning"] / "metadata.jsonl", caption_rows)
        first_with_caption = {c: i for i, c in reversed(list(enumerate(captions)))}
        retrieval_rows = [row for row in caption_rows if first_with_caption[row["text"]] == row["image_id"]]
        _write_jsonl(split_dirs["retrieval"] / "metadata.jsonl", retrieval_rows)

        vqa_rng = _split_rng(seed, split, "vqa")
        vqa_rows = [
            dict(file_name=file_names[i], **question, image_id=i)
            for i, scene in enumerate(scenes)
            for question in vqa_questions(scene, vqa_rng, questions_per_image)
        ]
        for question_id, row in enumerate(vqa_rows):
            row["question_id"] = question_id
        _write_jsonl(split_dirs["vqa"] / "metadata.jsonl", vqa_rows)

        pairs = nlvr2_examples(scenes, num_scenes, _split_rng(seed, split, "nlvr2"))
        nlvr2_rows = [
            dict(
                left_image_file_name=file_names[p["left"]],
                right_image_file_name=file_names[p["right"]],
                text=p["text"],
                label=p["label"],
            )
            for p in pairs
        ]
        _write_jsonl(split_dirs["nlvr2"] / "metadata.jsonl", nlvr2_rows)

        for task, rows in zip(TASKS, (caption_rows, retrieval_rows, vqa_rows, nlvr2_rows)):
            sizes[task][split] = len(rows)
        texts += captions + [row["question"] for row in vqa_rows] + list(VQA_ANSWERS)
        texts += [row["text"] for row in nlvr2_rows]
    logger.info(f"Wrote the shapes datasets to {output_dir}: {sizes}")
    if train_tokenizer:
        tokenizer_dir = train_shapes_tokenizer(texts, output_dir, vocab_size)
        logger.info(f"Wrote the shapes tokenizer to {tokenizer_dir}")
    return sizes


def load_shapes(task: str, data_dir: str | os.PathLike, **load_dataset_kwargs):
    """
    Loads one task written by [`generate_shapes_dataset`] as a `datasets.DatasetDict` with `train` and `test` splits.

    This is `datasets.load_dataset("imagefolder", data_files={split: "<data_dir>/<task>/<split>/metadata.jsonl"})`,
    so any directory with the same layout works. `data_dir=<data_dir>/<task>` gives the same dataset, but lists and
    fingerprints every image file first, which takes half a minute for 20k images instead of a fraction of a second
    from the cache. Columns:

    * `captioning`, `retrieval`: `image`, `text`, `image_id`
    * `vqa`: `image`, `question`, `question_type`, `answers` (list of 10 strings), `answer`, `image_id`, `question_id`
    * `nlvr2`: `left_image`, `right_image`, `text`, `label` (`ClassLabel(names=["False", "True"])`)

    Extra keyword arguments (e.g. `cache_dir`) go to `load_dataset`.
    """
    import datasets

    if task not in TASKS:
        raise ValueError(f"Unknown shapes task {task!r}; expected one of {TASKS}.")
    metadata_files = {split: Path(data_dir) / task / split / "metadata.jsonl" for split in SPLITS}
    for path in metadata_files.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"No shapes {task} data: {path} is missing. Generate it with `python -m beit3_hf.data.shapes "
                f"--output-dir {data_dir}`."
            )
    data_files = {split: str(path) for split, path in metadata_files.items()}
    dataset = datasets.load_dataset("imagefolder", data_files=data_files, **load_dataset_kwargs)
    if task == "nlvr2":
        dataset = dataset.cast_column("label", datasets.ClassLabel(names=list(NLVR2_LABEL_NAMES)))
    return dataset


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where to write the task directories and the tokenizer")
    parser.add_argument("--num-train", type=int, default=20000, help="training scenes (images)")
    parser.add_argument("--num-test", type=int, default=1000, help="test scenes (images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="side of the square PNG images")
    parser.add_argument("--questions-per-image", type=int, default=2, help="VQA questions per scene")
    parser.add_argument("--vocab-size", type=int, default=256, help="upper bound on the SentencePiece vocabulary")
    parser.add_argument("--no-tokenizer", action="store_true", help="skip training the tokenizer")
    args = parser.parse_args(argv)
    std_logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=std_logging.INFO)
    return generate_shapes_dataset(
        args.output_dir,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        image_size=args.image_size,
        questions_per_image=args.questions_per_image,
        vocab_size=args.vocab_size,
        train_tokenizer=not args.no_tokenizer,
    )


if __name__ == "__main__":
    main()
