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


def usage_section(model_class: str, repo_id: str, with_processor: bool = True) -> list[str]:
    """The card's "Usage" lines: loading with the package, and without it through the code the checkpoint ships
    (`beit3_hf.remote_code`)."""
    from .remote_code import REMOTE_AUTO_CLASSES

    auto_class = next((auto for cls, auto in REMOTE_AUTO_CLASSES.items() if cls.__name__ == model_class), None)
    processor = "BEiT3Processor" if with_processor else "BEiT3ImageProcessor"
    auto_processor = "AutoProcessor" if with_processor else "AutoImageProcessor"
    lines = [
        "## Usage",
        "With the package (`pip install beit3-hf`):",
        "```python",
        "import beit3_hf  # registers BEiT-3 with the Auto classes",
        f"from beit3_hf import {model_class}, {processor}",
        "",
        f'model = {model_class}.from_pretrained("{repo_id}")',
        f'processor = {processor}.from_pretrained("{repo_id}")',
        "```",
    ]
    if auto_class is not None:
        lines += [
            "",
            "Without it (only torch and transformers): the checkpoint carries its code, loaded with `trust_remote_code`:",
            "```python",
            f"from transformers import {auto_class}, {auto_processor}",
            "",
            f'model = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)',
            f'processor = {auto_processor}.from_pretrained("{repo_id}", trust_remote_code=True)',
            "```",
        ]
    return lines


def render_card(name: str, row: ReleasedCheckpoint, repo_id: str | None = None) -> str:
    """The card of released checkpoint `name`; `repo_id` is where it is loaded from (default `path/to/{name}`)."""
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
            *usage_section(model_class, repo_id or f"path/to/{name}", with_processor=row.task != "image_classification"),
            "",
            "## Citation",
            "Wang et al., *Image as a Foreign Language: BEiT Pretraining for Vision and Vision-Language Tasks*,",
            "CVPR 2023 (arXiv:2208.10442).",
            "",
        ]
    )


def render_generic_card(name: str, model, repo_id: str, with_processor: bool = True) -> str:
    """A card for a converted checkpoint that is not in the released table (sizes read off the model)."""
    config, model_class = model.config, type(model).__name__
    parameters = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    layers, width = config.num_hidden_layers, config.hidden_size
    return "\n".join(
        ["---", "license: mit", "library_name: transformers", "tags: [beit3, multiway-transformer]", "---", "",
         f"# {name}", "",
         f"`{model_class}` ({layers} layers, hidden {width}, {config.image_size}px, {parameters:.1f}M parameters), "
         f"converted from `{name}` with `beit3-convert` from the beit3_hf package.", "",
         *usage_section(model_class, repo_id, with_processor=with_processor), ""]
    )  # fmt: skip


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
