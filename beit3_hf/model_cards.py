"""Model cards for converted BEiT-3 checkpoints, rendered from the released-checkpoint table.

    python -m beit3_hf.model_cards model_cards/     # one card per released checkpoint
"""

import sys
from pathlib import Path

from .convert import RELEASED_CHECKPOINTS, ReleasedCheckpoint

TASK_TEXT = {
    "backbone": ("BEiT3Model", "feature-extraction backbone (pretrained, no head)", "image-feature-extraction"),
    "image_classification": ("BEiT3ForImageClassification", "ImageNet-1k classification", "image-classification"),
    "vqa": ("BEiT3ForVisualQuestionAnswering", "visual question answering (VQAv2, 3129 answers)",
            "visual-question-answering"),
    "visual_reasoning": ("BEiT3ForVisualReasoning", "visual reasoning over image pairs (NLVR2)", None),
    "retrieval": ("BEiT3ForImageTextRetrieval", "image-text retrieval and zero-shot classification",
                  "zero-shot-image-classification"),
    "captioning": ("BEiT3ForCaptioning", "image captioning", "image-text-to-text"),
}

SIZES = {"base": "12 layers, hidden 768, 12 heads", "large": "24 layers, hidden 1024, 16 heads"}


def render_card(name: str, row: ReleasedCheckpoint) -> str:
    model_class, description, pipeline_tag = TASK_TEXT[row.task]
    preprocessing = (
        "resize the shorter side to {s} (bicubic), centre-crop {s}, ImageNet mean/std"
        if row.task == "image_classification"
        else "resize to {s}x{s} (bicubic, no crop), mean = std = 0.5"
    ).format(s=row.image_size)
    front_matter = ["---", "license: mit", "library_name: transformers", "tags: [beit3, multiway-transformer]"]
    if pipeline_tag:
        front_matter.append(f"pipeline_tag: {pipeline_tag}")
    front_matter.append("---")
    return "\n".join(
        front_matter
        + [
            "",
            f"# {name}",
            "",
            f"BEiT-3 ({row.size}: {SIZES[row.size]}) for {description}, converted from Microsoft's release",
            f"`{name}.pth` with `beit3-convert` from the beit3_hf package. Outputs equal the official",
            "unilm/torchscale model on the same inputs (fp32, 1e-4).",
            "",
            "## Model details",
            f"- Architecture: decoupled Multiway Transformer (image and text experts), `{model_class}`",
            f"- Resolution: {row.image_size}px, patch 16",
            f"- Preprocessing: {preprocessing}; text: BEiT-3 SentencePiece tokenizer (XLM-R id layout)",
            f"- Reported result (unilm README): {row.result}",
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
