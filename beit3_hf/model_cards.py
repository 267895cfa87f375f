"""Model cards for converted BEiT-3 checkpoints, rendered from the released-checkpoint table (`tasks.py`).

    python -m beit3_hf.model_cards model_cards/     # one card per released checkpoint
"""

import sys
from pathlib import Path

from .configuration_beit3 import BEIT3_PRESETS
from .tasks import RELEASED_CHECKPOINTS, TASKS, ReleasedCheckpoint, layouts

PREPROCESSING_TEXT = {
    "vl": "resize to {s}x{s} (bicubic, no crop), mean = std = 0.5",
    "imagenet": "resize the shorter side to {s} (bicubic), centre-crop {s}, ImageNet mean/std",
}


def _size_text(size: str) -> str:
    preset = BEIT3_PRESETS[size]
    return f"{preset['num_hidden_layers']} layers, hidden {preset['hidden_size']}, {preset['num_attention_heads']} heads"


def render_card(name: str, row: ReleasedCheckpoint) -> str:
    task, layout = TASKS[row.task], layouts()[row.layout]
    model_class = task.model_class.__name__
    details = [
        f"- Architecture: decoupled Multiway Transformer (image and text experts), `{model_class}`",
        f"- Resolution: {row.image_size}px, patch 16",
        f"- Preprocessing: {PREPROCESSING_TEXT[task.processor_preset].format(s=row.image_size)}; "
        "text: BEiT-3 SentencePiece tokenizer (XLM-R id layout)",
        f"- Parameters (unilm README): {row.param_count}M",
    ]
    if task.num_labels:
        details.append(f"- Labels: {task.num_labels}")
    details.append(f"- Reported result (unilm README): {row.result or 'none (pretrained checkpoint)'}")
    if task.backbone_drops_head:
        details.append(
            f"- Backbone only: `beit3-convert {name}.pth OUT --task backbone` gives a `BEiT3Model` without the "
            f"{row.task} heads."
        )
    if layout.dropped_keys:
        details.append(
            f"- Not converted: the {row.layout} heads {', '.join(f'`{key}`' for key in layout.dropped_keys)}; "
            f"`{model_class}` has no place for them yet."
        )
    front_matter = ["---", "license: mit", "library_name: transformers", "tags: [beit3, multiway-transformer]"]
    if task.pipeline_tag:
        front_matter.append(f"pipeline_tag: {task.pipeline_tag}")
    front_matter.append("---")
    return "\n".join(
        front_matter
        + [
            "",
            f"# {name}",
            "",
            f"BEiT-3 ({row.size}: {_size_text(row.size)}) for {task.description}, converted from Microsoft's release",
            f"`{name}.pth` with `beit3-convert` from the beit3_hf package. Outputs equal the official",
            "unilm/torchscale model on the same inputs (fp32, 1e-4).",
            "",
            "## Model details",
            *details,
            "",
            "## Usage",
            "```python",
            "import beit3_hf  # registers BEiT-3 with the Auto classes",
            f"from beit3_hf import {model_class}, BEiT3Processor",
            "",
            f'model = {model_class}.from_pretrained("path/to/{name}")',
            f'processor = BEiT3Processor.from_pretrained("path/to/{name}")',
            "```",
            "",
            "## Citation",
            "Wang et al., *Image as a Foreign Language: BEiT Pretraining for Vision and Vision-Language Tasks*,",
            "CVPR 2023 (arXiv:2208.10442).",
            "",
        ]
    )


def write_cards(output_dir: str | Path) -> list[Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, row in RELEASED_CHECKPOINTS.items():
        path = output_dir / f"{name}.md"
        path.write_text(render_card(name, row), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    write_cards(sys.argv[1] if len(sys.argv) > 1 else "model_cards")
