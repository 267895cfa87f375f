"""What a trained visual tokenizer's codes say about the shapes world, and how fast it tokenises.

    python benchmarks/visual_tokenizer_probe.py --tokenizer runs/vqkd_restart --tokenizer runs/vqkd_plain \
        --teacher runs/retrieval

For each `--tokenizer` directory (written by `examples/run_visual_tokenizer.py`) on the shapes world's test split
(the scenes `python -m beit3_hf.data.shapes` draws with the same `--num-train` / `--num-test` / `--seed`):

- codebook usage: the fraction of the codes that tokenise at least one test patch, and the perplexity of the
  test split's code histogram;
- reconstruction: the mean cosine between the decoder's prediction from the codes and the frozen `--teacher`'s
  patch features (the training objective), next to predicting every patch as the mean teacher feature of the
  training split (what a decoder that ignores the codes can reach);
- meaning: each patch's class is what covers it in `render_label_map`: the object kind ("colour shape", 12 kinds)
  with the most pixels in the patch when it covers at least `--min-coverage` of it (default 10%), else
  background. The probe maps a code to the class its training-split patches have most often,
  and is scored on the test split, next to the majority baseline (the most frequent class for every patch) and
  the same probe on a control: a random-weight tokenizer of the same configuration whose codebook is k-means
  initialised on training patches (what the pixels give without training).

`--speed` also times `get_codebook_indices` of the released base tokenizer shape (ViT-B/16 encoder, 8192 codes,
224 px, random weights) next to a `BEiT3Model` base image-only forward of the same images, in one run: tokens per
second and the ratio.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch

from beit3_hf import BEiT3Config, BEiT3Model, BEiT3VisualTokenizer, BEiT3VisualTokenizerConfig
from beit3_hf.data.shapes import LABEL_NAMES, render_label_map, render_scene, split_scenes
from beit3_hf.modeling_visual_tokenizer import codebook_usage

HERE = os.path.dirname(os.path.abspath(__file__))


def load_example(name: str):
    path = os.path.join(HERE, os.pardir, "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patch_labels(scenes, image_size: int, patch_size: int, min_coverage: float) -> np.ndarray:
    """`(num_scenes, num_patches)` class per patch (row-major, as the tokenizer's tokens): the object kind with the
    most pixels in the patch if it covers at least `min_coverage` of it, else background (0)."""
    grid = image_size // patch_size
    labels = np.empty((len(scenes), grid * grid), dtype=np.int64)
    for row, scene in enumerate(scenes):
        label_map = np.asarray(render_label_map(scene, image_size))
        blocks = label_map.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
        for column, block in enumerate(blocks):
            counts = np.bincount(block, minlength=len(LABEL_NAMES))[1:]
            labels[row, column] = counts.argmax() + 1 if counts.max() >= min_coverage * block.size else 0
    return labels


def pixel_batches(scenes, image_size: int, batch_size: int):
    """[0, 1] pixels of the rendered scenes (what the tokenizer's image processor gives for these PNGs)."""
    for start in range(0, len(scenes), batch_size):
        images = np.stack([np.asarray(render_scene(scene, image_size)) for scene in scenes[start:start + batch_size]])
        yield torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def tokenize(tokenizer, teacher, scenes, image_size: int, batch_size: int):
    """Codes `(num_scenes, num_patches)` and, with a teacher, the per-patch reconstruction cosines and the teacher
    features."""
    grid = (image_size // tokenizer.config.patch_size,) * 2
    codes, cosines, features = [], [], []
    for pixel_values in pixel_batches(scenes, image_size, batch_size):
        if teacher is None:
            codes.append(tokenizer.get_codebook_indices(pixel_values))
            continue
        target = teacher(pixel_values, grid)
        outputs = tokenizer(pixel_values=pixel_values, teacher_features=target)
        codes.append(outputs.codebook_indices)
        cosines.append(torch.nn.functional.cosine_similarity(outputs.reconstruction, target, dim=-1))
        features.append(target)
    codes = torch.cat(codes).numpy()
    if teacher is None:
        return codes, None, None
    return codes, torch.cat(cosines).numpy(), torch.cat(features)


def probe_accuracy(train_codes, train_labels, test_codes, test_labels, codebook_size: int) -> float:
    """Accuracy on test of code -> the majority training class of that code (unseen codes: the majority class)."""
    table = np.zeros((codebook_size, len(LABEL_NAMES)), dtype=np.int64)
    np.add.at(table, (train_codes.ravel(), train_labels.ravel()), 1)
    majority = np.bincount(train_labels.ravel(), minlength=len(LABEL_NAMES)).argmax()
    mapping = np.where(table.sum(1) > 0, table.argmax(1), majority)
    return float((mapping[test_codes.ravel()] == test_labels.ravel()).mean())


def control_tokenizer(config: BEiT3VisualTokenizerConfig, scenes, image_size: int, seed: int):
    """Random weights, codebook k-means-initialised on the encoder vectors of up to 512 training images."""
    torch.manual_seed(seed)
    tokenizer = BEiT3VisualTokenizer(config)
    pixel_values = next(pixel_batches(scenes, image_size, 512))
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(tokenizer.encode(pixel_values)[0], dim=-1)
        tokenizer.quantizer.initialize_codebook(vectors.reshape(-1, config.codebook_dim))
    return tokenizer.eval()


def evaluate(path, teacher, train_scenes, test_scenes, args) -> dict:
    tokenizer = BEiT3VisualTokenizer.from_pretrained(path).eval()
    config = tokenizer.config
    image_size, patch_size = config.image_size, config.patch_size
    train_labels = patch_labels(train_scenes, image_size, patch_size, args.min_coverage)
    test_labels = patch_labels(test_scenes, image_size, patch_size, args.min_coverage)
    train_codes, _, train_features = tokenize(tokenizer, teacher, train_scenes, image_size, args.batch_size)
    test_codes, cosines, test_features = tokenize(tokenizer, teacher, test_scenes, image_size, args.batch_size)
    perplexity, usage = codebook_usage(torch.from_numpy(test_codes).flatten(), config.codebook_size)
    mean_feature = train_features.reshape(-1, train_features.shape[-1]).mean(0)
    mean_cosine = torch.nn.functional.cosine_similarity(test_features, mean_feature, dim=-1)

    control = control_tokenizer(config, train_scenes, image_size, args.seed)
    control_train, _, _ = tokenize(control, None, train_scenes, image_size, args.batch_size)
    control_test, _, _ = tokenize(control, None, test_scenes, image_size, args.batch_size)
    majority = np.bincount(train_labels.ravel(), minlength=len(LABEL_NAMES)).argmax()
    return {
        "tokenizer": str(path),
        "codebook_size": config.codebook_size,
        "test_patches": int(test_codes.size),
        "codebook_usage": float(usage),
        "codes_used": int(len(np.unique(test_codes))),
        "perplexity": float(perplexity),
        "reconstruction_cosine": float(cosines.mean()),
        "mean_feature_cosine": float(mean_cosine.mean()),
        "probe_accuracy": probe_accuracy(train_codes, train_labels, test_codes, test_labels, config.codebook_size),
        "object_patches": float((test_labels > 0).mean()),
        "majority_baseline": float((test_labels == majority).mean()),
        "majority_class": LABEL_NAMES[majority],
        "control_probe_accuracy": probe_accuracy(control_train, train_labels, control_test, test_labels,
                                                 config.codebook_size),
        "control_codebook_usage": float(len(np.unique(control_test)) / config.codebook_size),
    }


def time_calls(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def speed(args) -> dict:
    """Best-of-`repeats` seconds of `get_codebook_indices` (release base shape) and of `BEiT3Model` base's image
    forward on the same `(batch, 3, 224, 224)` pixels; the two interleave so that load affects both alike."""
    torch.manual_seed(args.seed)
    tokenizer = BEiT3VisualTokenizer(BEiT3VisualTokenizerConfig()).eval()
    tokenizer.quantizer.codebook.normal_()
    tokenizer.quantizer.codebook.copy_(torch.nn.functional.normalize(tokenizer.quantizer.codebook, dim=-1))
    tokenizer.quantizer.initialized.fill_(True)
    backbone = BEiT3Model(BEiT3Config.from_preset("base", image_size=224)).eval()
    pixel_values = torch.rand(args.speed_batch_size, 3, 224, 224)
    tokens = args.speed_batch_size * tokenizer.config.grid_size**2
    seconds = {"tokenizer": [], "backbone": []}
    for _ in range(args.repeats):
        seconds["tokenizer"].append(time_calls(lambda: tokenizer.get_codebook_indices(pixel_values), 1))
        seconds["backbone"].append(time_calls(lambda: backbone(pixel_values=pixel_values), 1))
    tokenizer_s, backbone_s = min(seconds["tokenizer"]), min(seconds["backbone"])
    return {
        "batch_size": args.speed_batch_size,
        "threads": torch.get_num_threads(),
        "get_codebook_indices_tokens_per_s": tokens / tokenizer_s,
        "beit3_base_image_forward_tokens_per_s": tokens / backbone_s,
        "tokenizer_over_backbone_time": tokenizer_s / backbone_s,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", action="append", default=[], help="a trained tokenizer directory (repeatable)")
    parser.add_argument("--teacher", help="the teacher the tokenizers were trained against (a model directory)")
    parser.add_argument("--teacher-features", default="last_hidden_state")
    parser.add_argument("--num-train", type=int, default=20000, help="training scenes, as the generator's")
    parser.add_argument("--num-test", type=int, default=1000, help="test scenes, as the generator's")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed (and the control's)")
    parser.add_argument("--min-coverage", type=float, default=0.1,
                        help="an object labels a patch when it covers at least this fraction of it")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--speed", action="store_true", help="also time the base shape on this machine")
    parser.add_argument("--speed-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="write the figures to this JSON file too")
    args = parser.parse_args(argv)
    if args.tokenizer and not args.teacher:
        parser.error("--teacher is needed with --tokenizer (the reconstruction is measured against it)")
    if not args.tokenizer and not args.speed:
        parser.error("nothing to do: pass --tokenizer DIR and/or --speed")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = {"tokenizers": []}
    if args.tokenizer:
        script = load_example("run_visual_tokenizer")
        teacher = script.load_teacher(args.teacher, args.teacher_features, "clip")
        train_scenes = split_scenes("train", args.num_train, args.seed)
        test_scenes = split_scenes("test", args.num_test, args.seed)
        for path in args.tokenizer:
            results["tokenizers"].append(evaluate(path, teacher, train_scenes, test_scenes, args))
            print(json.dumps(results["tokenizers"][-1], indent=2), flush=True)
    if args.speed:
        results["speed"] = speed(args)
        print(json.dumps(results["speed"], indent=2), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
