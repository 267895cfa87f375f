"""Tests of the offline datasets: the synthetic shapes world and the Fashion-MNIST loader.

The shapes checks read the rendered images back with a small independent "perception" routine (colour, fill ratio
and extent of the non-grey pixels in each grid cell) and re-derive every caption, VQA answer and NLVR2 label from it,
so a bug in the renderer, the text templates or the answer logic shows up as a mismatch.
"""

import collections
import filecmp
import gzip
import json
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from beit3_hf.data import fashion_mnist, shapes


POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


# ---------------------------------------------------------------------------------------------------------------------
# Independent perception of a rendered scene


def perceive(image) -> dict:
    """`{position: (size, color, shape)}` read off the pixels of a shapes image."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    half = pixels.shape[0] // 2
    objects = {}
    for index, position in enumerate(POSITIONS):
        row, col = divmod(index, 2)
        cell = pixels[row * half : (row + 1) * half, col * half : (col + 1) * half]
        mask = ~((cell[..., 0] == cell[..., 1]) & (cell[..., 1] == cell[..., 2]))  # the background is grey
        if mask.sum() == 0:
            continue
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = mask.sum() / (height * width)
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        size = "large" if width > 0.56 * half else "small"
        r, g, b = cell[mask].mean(axis=0)
        color = "yellow" if r > 150 and g > 150 else ("red", "green", "blue")[int(np.argmax([r, g, b]))]
        objects[position] = (size, color, shape)
    return objects


def count(objects: dict, shape=None, color=None) -> int:
    return sum((shape is None or s == shape) and (color is None or c == color) for _, c, s in objects.values())


def parse_caption(text: str) -> dict:
    parts = re.split(r", | and ", text)
    objects = {}
    for part in parts:
        match = re.fullmatch(r"a (small|large) (\w+) (\w+) at the (top left|top right|bottom left|bottom right)", part)
        assert match, f"unexpected caption part {part!r} in {text!r}"
        objects[match.group(4)] = match.group(1, 2, 3)
    return objects


def answer_question(question: str, objects: dict) -> str:
    if match := re.fullmatch(r"what (color|shape) is the object at the (.+)\?", question):
        _, color, shape = objects[match.group(2)]
        return color if match.group(1) == "color" else shape
    if question == "how many objects are there?":
        return str(len(objects))
    if match := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return str(count(objects, color=match.group(1)))
    if match := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if count(objects, shape=match.group(2), color=match.group(1)) else "no"
    if match := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
        found = [p for p, (_, c, s) in objects.items() if (c, s) == match.group(1, 2)]
        assert len(found) == 1, f"'where' asked about a non-unique object: {question!r} {objects}"
        return found[0]
    raise AssertionError(f"unexpected question {question!r}")


def noun_filter(noun: str) -> dict:
    if noun == "objects":
        return {}
    if noun.endswith(" shapes"):
        return {"color": noun.split()[0]}
    return {"shape": noun[:-1]}


def has(objects: dict, shape=None, color=None, position=None) -> bool:
    return any(
        (shape is None or s == shape) and (color is None or c == color) and (position is None or p == position)
        for p, (_, c, s) in objects.items()
    )


def judge_statement(text: str, left: dict, right: dict) -> bool:
    if match := re.fullmatch(r"the left image has more (.+) than the right image", text):
        where = noun_filter(match.group(1))
        return count(left, **where) > count(right, **where)
    if match := re.fullmatch(r"(both images contain|at least one image contains) a (.+)", text):
        words = match.group(2).split()
        color = words[0] if words[0] in shapes.COLORS else None
        shape = None if words[-1] == "shape" else words[-1]
        found = [has(objects, shape=shape, color=color) for objects in (left, right)]
        return all(found) if match.group(1).startswith("both") else any(found)
    if match := re.fullmatch(r"there are exactly (\w+) objects in total", text):
        return len(left) + len(right) == NUMBERS[match.group(1)]
    if text == "the two images have the same number of objects":
        return len(left) == len(right)
    if match := re.fullmatch(r"the (left|right) image has a (\w+) at the (.+)", text):
        objects = left if match.group(1) == "left" else right
        return has(objects, shape=match.group(2), position=match.group(3))
    if match := re.fullmatch(r"neither image contains a (\w+) shape", text):
        return not has(left, color=match.group(1)) and not has(right, color=match.group(1))
    raise AssertionError(f"unexpected statement {text!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Generated data on disk


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("shapes")
    sizes = shapes.main(["--output-dir", str(output_dir), "--num-train", "40", "--num-test", "12", "--seed", "3"])
    return output_dir, sizes


@pytest.fixture(scope="module")
def loaded(shapes_dir, tmp_path_factory):
    output_dir, _ = shapes_dir
    cache_dir = str(tmp_path_factory.mktemp("hf_cache"))
    return {task: shapes.load_shapes(task, output_dir, cache_dir=cache_dir) for task in shapes.TASKS}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_every_task_and_split(shapes_dir):
    output_dir, sizes = shapes_dir
    assert sizes["captioning"] == {"train": 40, "test": 12}
    assert sizes["vqa"] == {"train": 80, "test": 24}  # two questions per image by default
    assert sizes["nlvr2"] == {"train": 40, "test": 12}
    for task in shapes.TASKS:
        for split in ("train", "test"):
            rows = read_jsonl(output_dir / task / split / "metadata.jsonl")
            assert len(rows) == sizes[task][split]
            images = sorted((output_dir / task / split / "images").glob("*.png"))
            assert len(images) == (40 if split == "train" else 12)
    # Retrieval keeps one image per distinct caption, so that recall is well defined.
    retrieval = read_jsonl(output_dir / "retrieval" / "test" / "metadata.jsonl")
    captions = [row["text"] for row in read_jsonl(output_dir / "captioning" / "test" / "metadata.jsonl")]
    assert len({row["text"] for row in retrieval}) == len(retrieval) == len(set(captions))


def test_generation_is_deterministic(tmp_path):
    def generate(name, seed):
        shapes.generate_shapes_dataset(tmp_path / name, num_train=15, num_test=5, seed=seed, image_size=32)
        return tmp_path / name

    first, second, other = generate("a", 7), generate("b", 7), generate("c", 8)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(first, second, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    assert (first / "vqa/train/metadata.jsonl").read_text() != (other / "vqa/train/metadata.jsonl").read_text()
    assert (first / "captioning/train/images/000000.png").read_bytes() != (
        other / "captioning/train/images/000000.png"
    ).read_bytes()


def test_loaders_return_the_documented_columns(loaded, shapes_dir, tmp_path):
    import datasets

    _, sizes = shapes_dir
    expected = {
        "captioning": ["image", "text", "image_id"],
        "retrieval": ["image", "text", "image_id"],
        "vqa": ["image", "question", "question_type", "answers", "answer", "image_id", "question_id"],
        "nlvr2": ["left_image", "right_image", "text", "label"],
    }
    for task, dataset in loaded.items():
        assert isinstance(dataset, datasets.DatasetDict)
        assert set(dataset) == {"train", "test"}
        for split in ("train", "test"):
            assert dataset[split].column_names == expected[task]
            assert dataset[split].num_rows == sizes[task][split]
    assert loaded["nlvr2"]["train"].features["label"].names == ["False", "True"]
    row = loaded["vqa"]["train"][0]
    assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert len(row["answers"]) == 10
    assert loaded["nlvr2"]["test"][0]["right_image"].size == (64, 64)
    # Plain `imagefolder` on the task directory reads the same rows.
    plain = datasets.load_dataset("imagefolder", data_dir=str(shapes_dir[0] / "vqa"), cache_dir=str(tmp_path))
    assert plain["test"].column_names == expected["vqa"]
    assert plain["test"]["question"] == loaded["vqa"]["test"]["question"]
    assert np.array_equal(np.asarray(plain["test"][3]["image"]), np.asarray(loaded["vqa"]["test"][3]["image"]))
    with pytest.raises(ValueError, match="Unknown shapes task"):
        shapes.load_shapes("detection", shapes_dir[0])
    with pytest.raises(FileNotFoundError, match="metadata.jsonl is missing"):
        shapes.load_shapes("vqa", shapes_dir[0] / "missing")


def test_captions_describe_the_rendered_images(loaded):
    for split in ("train", "test"):
        for row in loaded["captioning"][split]:
            assert parse_caption(row["text"]) == perceive(row["image"]), row["text"]


def test_label_maps_cover_exactly_the_drawn_objects(loaded):
    """`split_scenes` regenerates the written scenes (same captions, same pixels), and `render_label_map` marks
    exactly the non-grey pixels, with the class the independent perception reads in each cell."""
    for split, num_scenes in (("train", 40), ("test", 12)):
        scenes = shapes.split_scenes(split, num_scenes, seed=3)
        rows = loaded["captioning"][split]
        assert [shapes.caption(scene) for scene in scenes] == rows["text"]
        for scene, row in zip(scenes, rows):
            pixels = np.asarray(row["image"].convert("RGB")).astype(int)
            assert np.array_equal(pixels, np.asarray(shapes.render_scene(scene)))
            labels = np.asarray(shapes.render_label_map(scene))
            grey = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
            assert np.array_equal(labels == 0, grey)
            half = labels.shape[0] // 2
            seen = {}
            for index, position in enumerate(POSITIONS):
                top, left = (half * i for i in divmod(index, 2))
                names = {shapes.LABEL_NAMES[value] for value in np.unique(labels[top:top + half, left:left + half])}
                if names - {"background"}:
                    seen[position] = names - {"background"}
            perceived = perceive(row["image"])
            assert seen == {position: {f"{color} {shape}"} for position, (_, color, shape) in perceived.items()}
    assert np.asarray(shapes.render_label_map(scenes[0], 32)).shape == (32, 32)
    with pytest.raises(ValueError, match="got 4"):
        shapes.render_label_map(scenes[0], 4)


def test_vqa_answers_are_correct_for_the_images(loaded):
    for split in ("train", "test"):
        for row in loaded["vqa"][split]:
            assert answer_question(row["question"], perceive(row["image"])) == row["answer"], row["question"]
            votes = collections.Counter(row["answers"])
            assert votes.most_common(1)[0] == (row["answer"], votes[row["answer"]]) and votes[row["answer"]] >= 7
            assert set(row["answers"]) <= set(shapes.VQA_ANSWERS)


def test_vqa_answers_work_with_the_vqav2_soft_scores(loaded):
    from beit3_hf.metrics import vqa_score
    from beit3_hf.vqa import answer_target, build_answer_vocab, normalize_word

    assert [normalize_word(answer) for answer in shapes.VQA_ANSWERS] == list(shapes.VQA_ANSWERS)
    answer2label = {answer: label for label, answer in enumerate(shapes.VQA_ANSWERS)}
    train = loaded["vqa"]["train"]
    vocab, _ = build_answer_vocab(train["answer"], min_count=1)
    assert set(vocab) <= set(shapes.VQA_ANSWERS)
    targets = np.stack([answer_target(answers, answer2label).numpy() for answers in train["answers"]])
    truth = np.array([answer2label[answer] for answer in train["answer"]])
    assert vqa_score(truth, targets) == 1.0  # the majority answer has at least 4 votes
    disagreement = (targets > 0).sum(axis=1) > 1
    assert 0.2 < disagreement.mean() < 0.8  # about half the questions have dissenting annotators
    runner_up = np.where(disagreement, np.argsort(-targets, axis=1, kind="stable")[:, 1], truth)
    assert 0.0 < vqa_score(runner_up, targets) < 1.0  # dissenting answers earn partial credit


def test_nlvr2_labels_are_correct_for_the_images(loaded):
    for split in ("train", "test"):
        for row in loaded["nlvr2"][split]:
            truth = judge_statement(row["text"], perceive(row["left_image"]), perceive(row["right_image"]))
            assert truth == bool(row["label"]), row["text"]


def test_tokenizer_has_the_beit3_id_layout(shapes_dir):
    import sentencepiece
    from transformers import AutoTokenizer

    output_dir, _ = shapes_dir
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "tokenizer")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(output_dir / "shapes_spm.model"))
    assert len(tokenizer) == processor.get_piece_size() + 2
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    texts = [row["text"] for row in read_jsonl(output_dir / "nlvr2" / "train" / "metadata.jsonl")]
    texts += [row["question"] for row in read_jsonl(output_dir / "vqa" / "train" / "metadata.jsonl")]
    texts += [row["text"] for row in read_jsonl(output_dir / "captioning" / "train" / "metadata.jsonl")]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids == [0] + [i + 1 for i in processor.encode(text)] + [2]
        assert tokenizer.unk_token_id not in ids
    # The vocabulary is word-level for almost all of the shapes language.
    words = {w for text in texts for w in re.findall(r"[a-z]+", text)}
    single = [word for word in words if tokenizer.tokenize(word) == ["\u2581" + word]]
    assert len(single) >= 0.9 * len(words), sorted(words - set(single))


# ---------------------------------------------------------------------------------------------------------------------
# Statistics of the generators (in memory, larger samples)


@pytest.fixture(scope="module")
def scenes():
    rng = random.Random(0)
    return [shapes.sample_scene(rng) for _ in range(4000)]


def test_scene_statistics(scenes):
    sizes = collections.Counter(len(scene.objects) for scene in scenes)
    assert set(sizes) == {1, 2, 3} and min(sizes.values()) > 0.3 * len(scenes)
    for scene in scenes:
        positions = [o.position for o in scene.objects]
        assert positions == sorted(set(positions), key=POSITIONS.index)  # distinct cells, in cell order
    rng = random.Random(0)
    assert [shapes.sample_scene(rng) for _ in range(50)] == scenes[:50]


def test_vqa_answers_are_balanced(scenes):
    rng = random.Random(1)
    questions = [q for scene in scenes for q in shapes.vqa_questions(scene, rng, num_questions=2)]
    types = collections.Counter(q["question_type"] for q in questions)
    assert set(types) == set(shapes.QUESTION_TYPES)
    assert max(types.values()) < 1.2 * min(types.values())
    expected_answers = {
        "color": shapes.COLORS,
        "shape": shapes.SHAPES,
        "count": ("0", "1", "2", "3"),
        "exist": ("yes", "no"),
        "where": POSITIONS,
    }
    for question_type, answers in expected_answers.items():
        counts = collections.Counter(q["answer"] for q in questions if q["question_type"] == question_type)
        assert set(counts) == set(answers), question_type
        assert max(counts.values()) < 1.25 * min(counts.values()), (question_type, counts)
    exist = [q["answer"] for q in questions if q["question_type"] == "exist"]
    assert abs(exist.count("yes") / len(exist) - 0.5) < 0.04
    # A blind model (majority answer per question text, fitted on half the questions) stays far from the images.
    assert blind_accuracy([(q["question"], q["answer"]) for q in questions]) < 0.45


def blind_accuracy(pairs) -> float:
    fit, held_out = pairs[::2], pairs[1::2]
    by_text = collections.defaultdict(collections.Counter)
    for text, answer in fit:
        by_text[text][answer] += 1
    return float(np.mean([bool(by_text[t]) and by_text[t].most_common(1)[0][0] == a for t, a in held_out]))


def test_nlvr2_labels_are_balanced_and_not_guessable_from_the_text(scenes):
    rows = shapes.nlvr2_examples(scenes, 4000, random.Random(2))
    labels = [row["label"] for row in rows]
    assert abs(np.mean(labels) - 0.5) < 0.03
    assert all(row["left"] != row["right"] for row in rows)
    assert blind_accuracy([(row["text"], row["label"]) for row in rows]) < 0.58
    vocabulary = "|".join(shapes.COLORS + shapes.SHAPES + POSITIONS + tuple(NUMBERS) + ("left", "right"))
    templates = {re.sub(rf"\b({vocabulary})s?\b", "X", row["text"]) for row in rows}
    assert len(templates) >= 8, templates


def test_vqa_questions_rejects_bad_counts(scenes):
    with pytest.raises(ValueError, match="num_questions"):
        shapes.vqa_questions(scenes[0], random.Random(0), num_questions=6)
    with pytest.raises(ValueError, match="image_size"):
        shapes.render_scene(scenes[0], image_size=4)
    with pytest.raises(ValueError, match="at least 2"):
        shapes.generate_shapes_dataset("unused", num_train=1, num_test=5)


# ---------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        "train": (rng.integers(0, 256, (11, 28, 28)), np.array([0, 1, 2, 3, 9, 9, 5, 4, 6, 8, 7])),
        "t10k": (rng.integers(0, 256, (3, 28, 28)), np.array([8, 0, 7])),
    }
    for prefix, (images, labels) in data.items():
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path, data


def test_fashion_mnist_parses_idx_files(fake_fashion_mnist):
    data_dir, data = fake_fashion_mnist
    dataset = fashion_mnist.load_fashion_mnist(data_dir)
    assert dataset["train"].num_rows == 11 and dataset["test"].num_rows == 3
    assert dataset["train"].features["label"].names == list(fashion_mnist.FASHION_MNIST_LABELS)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data[prefix]
        for row, image, label in zip(dataset[split], images, labels):
            assert row["image"].mode == "L" and row["image"].size == (28, 28)
            np.testing.assert_array_equal(np.asarray(row["image"]), image)
            assert row["label"] == label
    subset = fashion_mnist.load_fashion_mnist(data_dir, max_train=4, max_test=2)
    assert subset["train"]["label"] == [0, 1, 2, 3] and subset["test"].num_rows == 2


def test_fashion_mnist_errors(fake_fashion_mnist, tmp_path):
    data_dir, _ = fake_fashion_mnist
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist") as error:
        fashion_mnist.load_fashion_mnist(tmp_path / "nowhere")
    assert "nowhere" in str(error.value)
    with pytest.raises(ValueError, match="max_train"):
        fashion_mnist.load_fashion_mnist(data_dir, max_train=0)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        fashion_mnist.read_idx(bad)
    truncated = tmp_path / "truncated.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 9)
    with pytest.raises(ValueError, match="implies"):
        fashion_mnist.read_idx(truncated)


def test_fashion_mnist_imagefolder_export_round_trips(fake_fashion_mnist, tmp_path):
    import datasets

    data_dir, data = fake_fashion_mnist
    sizes = fashion_mnist.main(["--output-dir", str(tmp_path / "folder"), "--data-dir", str(data_dir)])
    assert sizes == {"train": 11, "test": 3}
    dataset = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "folder"), cache_dir=str(tmp_path / "c"))
    names = dataset["train"].features["label"].names
    assert len(names) == 10 and "T-shirt_top" in names and "Ankle_boot" in names
    exported = sorted((row["label"], np.asarray(row["image"]).tobytes()) for row in dataset["train"])
    images, labels = data["train"]
    folder_names = [name.replace("/", "_").replace(" ", "_") for name in fashion_mnist.FASHION_MNIST_LABELS]
    originals = [
        (names.index(folder_names[label]), image.astype(np.uint8).tobytes()) for image, label in zip(images, labels)
    ]
    assert exported == sorted(originals)


@pytest.mark.skipif(
    not Path(fashion_mnist.DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_real_fashion_mnist():
    full = fashion_mnist.load_fashion_mnist()
    assert full["train"].num_rows == 60000 and full["test"].num_rows == 10000
    assert np.bincount(full["train"]["label"]).tolist() == [6000] * 10
    assert np.bincount(full["test"]["label"]).tolist() == [1000] * 10
    image = full["test"][0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    # Known first labels of the official release: Ankle boot, T-shirt/top, T-shirt/top, Dress, T-shirt/top.
    assert full["train"][:5]["label"] == [9, 0, 0, 3, 0]
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.max() > 200 and pixels.min() == 0
    subset = fashion_mnist.load_fashion_mnist(max_train=1000, max_test=100)
    assert subset["train"].num_rows == 1000 and subset["test"].num_rows == 100
    assert len(set(subset["train"]["label"])) == 10
