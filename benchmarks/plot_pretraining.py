"""A PNG of the masked-prediction accuracies over a `examples/run_pretraining.py` run, drawn with PIL alone.

    python benchmarks/plot_pretraining.py runs/mdm/trainer_state.json docs/mdm_accuracies.png

Solid lines: the evaluation accuracies (`eval_*_accuracy`, fixed masks, every `--eval_steps`); thin lines: the
training logs (`*_accuracy` of each logging window). One colour per kind of prediction: masked text tokens of
monomodal text and of image-text pairs, masked patches of images and of pairs.
"""

import argparse
import json

from PIL import Image, ImageDraw, ImageFont

SERIES = {
    "text_text_accuracy": ("text-only: masked tokens", (31, 119, 180)),
    "image_text_text_accuracy": ("image-text: masked tokens", (44, 160, 44)),
    "image_image_accuracy": ("image-only: masked patches", (214, 39, 40)),
    "image_text_image_accuracy": ("image-text: masked patches", (255, 127, 14)),
}


def curves(history: list[dict], prefix: str) -> dict[str, list[tuple[int, float]]]:
    return {key: [(entry["step"], entry[prefix + key]) for entry in history if prefix + key in entry]
            for key in SERIES}


def plot(state_path: str, output: str, width: int = 900, height: int = 560) -> None:
    history = json.load(open(state_path))["log_history"]
    train, evaluation = curves(history, ""), curves(history, "eval_")
    last_step = max(step for points in (*train.values(), *evaluation.values()) for step, _ in points)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 14)
    except OSError:
        font = ImageFont.load_default()
    left, top, right, bottom = 70, 40, width - 260, height - 60

    def xy(step, value):
        return left + (right - left) * step / last_step, bottom - (bottom - top) * value

    draw.rectangle([left, top, right, bottom], outline="black")
    for tick in range(11):
        y = xy(0, tick / 10)[1]
        draw.line([left - 5, y, left, y], fill="black")
        draw.line([left, y, right, y], fill=(230, 230, 230))
        draw.text((left - 40, y - 8), f"{tick / 10:.1f}", fill="black", font=font)
    for tick in range(6):
        step = round(last_step * tick / 5)
        x = xy(step, 0)[0]
        draw.line([x, bottom, x, bottom + 5], fill="black")
        draw.text((x - 15, bottom + 8), str(step), fill="black", font=font)
    draw.text(((left + right) // 2 - 40, bottom + 30), "training step", fill="black", font=font)
    draw.text((left, 12), "Masked data modeling on the shapes world: masked-prediction accuracy", fill="black",
              font=font)
    for key, (label, colour) in SERIES.items():
        pale = tuple(int(c + (255 - c) * 0.55) for c in colour)
        if len(train[key]) > 1:
            draw.line([xy(*point) for point in train[key]], fill=pale, width=1)
        if len(evaluation[key]) > 1:
            draw.line([xy(*point) for point in evaluation[key]], fill=colour, width=3)
        for point in evaluation[key]:
            x, y = xy(*point)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for row, (key, (label, colour)) in enumerate(SERIES.items()):
        y = top + 10 + 24 * row
        draw.line([right + 15, y + 8, right + 45, y + 8], fill=colour, width=3)
        draw.text((right + 52, y), label, fill="black", font=font)
    y = top + 10 + 24 * len(SERIES) + 10
    draw.text((right + 15, y), "thick: evaluation (fixed masks)", fill="black", font=font)
    draw.text((right + 15, y + 20), "thin: training logs", fill="black", font=font)
    image.save(output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trainer_state", help="trainer_state.json of a run_pretraining.py output directory")
    parser.add_argument("output", help="the PNG to write")
    args = parser.parse_args()
    plot(args.trainer_state, args.output)
