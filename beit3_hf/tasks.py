"""Every BEiT-3 task and every released checkpoint, in one place.

`TASKS` holds one `BEiT3Task` per head: its model class, the Auto class and Hub pipeline tag it is registered
under, how the original checkpoints name its tensors (`head_key_mapping`) and which of their keys prove it
(`signature`), and the preprocessing and decoding the release was evaluated with. `RELEASED_CHECKPOINTS` holds one
`ReleasedCheckpoint` row per file of the unilm release. The converter, the model cards, the processor presets, the
demo and the Auto registrations all read these tables; adding a task is one `BEiT3Task` entry plus its head class
(docs/adding_a_task.md). `RELEASED_VISUAL_TOKENIZERS` holds one `ReleasedVisualTokenizer` row per BEiT v2 tokenizer
file (VQ-KD, whose codes are the targets of BEiT-3's masked image modeling); they are no task, having no BEiT-3 model.

This module is data and tiny accessors only: it imports the model classes, never the converter or the cards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    GenerationConfig,
)

from . import modeling_beit3 as modeling
from .modeling_beit3 import BEiT3Model  # noqa: F401  (this form is what copies modeling_beit3.py with remote code)
from .generation import captioning_generation_config

__all__ = [
    "BEiT3Task",
    "EXTRA_LAYOUTS",
    "KeyLayout",
    "MIM_CODEBOOK_SIZE",
    "RELEASED_CHECKPOINTS",
    "RELEASED_VISUAL_TOKENIZERS",
    "ReleasedCheckpoint",
    "ReleasedVisualTokenizer",
    "TASKS",
    "get_task",
    "layouts",
]

#: Keys of an original checkpoint that prove a layout, each with the rows its tensor must have: `None` (any), an
#: int, or the name of another key whose row count it must equal.
Signature = dict[str, int | str | None]

#: Rows of the token embedding: the vocabulary a text head predicts over.
TEXT_VOCAB = "beit3.text_embed.weight"
#: Visual tokens of the BEiT v2 tokenizer, the targets of BEiT-3's masked image modeling.
MIM_CODEBOOK_SIZE = 8192


@dataclass(frozen=True)
class BEiT3Task:
    """One head: what the converter, the cards, the presets, the demo and the Auto registrations need to know."""

    name: str
    model_class: type
    #: Registered by `import beit3_hf`, so `auto_class.from_pretrained(converted_dir)` returns `model_class`.
    auto_class: type | None
    #: The Hub `pipeline_tag` of the model cards (`None`: no transformers pipeline fits).
    pipeline_tag: str | None
    #: Model-card phrase: "BEiT-3 (base) for {description}".
    description: str
    #: Keys that prove a checkpoint holds this head; `{}` (the backbone) is what remains when no other matches.
    signature: Signature
    #: Original head key (regex) -> our key; the backbone's own mapping is shared and lives in `convert.py`.
    head_key_mapping: dict[str, str]
    #: Original key whose rows are the label count (`None`: the head has no labels).
    label_key: str | None = None
    #: Labels of the released heads (VQAv2 answers, ImageNet classes, NLVR2 true/false).
    num_labels: int | None = None
    #: `processor_presets` preset of the original evaluation transform.
    processor_preset: str = "vl"
    #: Resolution of the released checkpoints (the default of `processor_config_for`).
    image_size: int = 224
    #: Whether the released checkpoints end with the final LayerNorm (unilm `normalize_output`).
    final_layer_norm: bool = True
    #: Builds the decoding setting of the release from `bos_token_id`, `pad_token_id` and `eos_token_id`.
    generation_config: Callable[..., GenerationConfig] | None = None
    #: Config attribute -> original key whose row count sets it (besides `label_key` for `num_labels`).
    config_from_rows: dict[str, str] = field(default_factory=dict)
    #: Whether `--task backbone` on a checkpoint of this task drops its head (with a warning naming the keys)
    #: rather than refusing it: true of the pretraining heads, which every downstream use discards.
    backbone_drops_head: bool = False


# fmt: off
TASKS: dict[str, BEiT3Task] = {task.name: task for task in (
    BEiT3Task(
        "backbone", modeling.BEiT3Model, AutoModel, "image-feature-extraction",
        "feature-extraction backbone (pretrained, no head)",
        signature={}, head_key_mapping={},
    ),
    BEiT3Task(
        "image_classification", modeling.BEiT3ForImageClassification, AutoModelForImageClassification,
        "image-classification", "ImageNet-1k classification (image experts only)",
        signature={"fc_norm.weight": None},
        head_key_mapping={
            r"^fc_norm\.(weight|bias)$":                   r"fc_norm.\1",
            r"^head\.(weight|bias)$":                      r"classifier.\1",
        },
        label_key="head.weight", num_labels=1000, processor_preset="imagenet", final_layer_norm=False,
    ),
    BEiT3Task(
        "vqa", modeling.BEiT3ForVisualQuestionAnswering, AutoModelForVisualQuestionAnswering,
        "visual-question-answering", "visual question answering (VQAv2)",
        signature={"pooler.norm.weight": None},
        head_key_mapping={
            r"^pooler\.norm\.(weight|bias)$":              r"pooler.layer_norm.\1",
            r"^pooler\.dense\.(weight|bias)$":             r"pooler.dense.\1",
            r"^head\.0\.(weight|bias)$":                   r"classifier.dense1.\1",
            r"^head\.1\.(weight|bias)$":                   r"classifier.norm2.\1",
            r"^head\.3\.(weight|bias)$":                   r"classifier.dense2.\1",
        },
        label_key="head.3.weight", num_labels=3129, image_size=480, final_layer_norm=False,
    ),
    BEiT3Task(
        "visual_reasoning", modeling.BEiT3ForVisualReasoning, None, None,
        "visual reasoning over image pairs (NLVR2)",
        signature={"head.dense1.weight": None},
        head_key_mapping={
            r"^head\.(norm1|dense1|norm2|dense2)\.(weight|bias)$": r"classifier.\1.\2",
        },
        label_key="head.dense2.weight", num_labels=2,
    ),
    BEiT3Task(
        "retrieval", modeling.BEiT3ForImageTextRetrieval, AutoModelForZeroShotImageClassification,
        "zero-shot-image-classification", "image-text retrieval and zero-shot classification",
        signature={"vision_head.weight": None, "language_head.weight": None},
        head_key_mapping={
            r"^vision_head\.weight$":                      r"image_projection.weight",
            r"^language_head\.weight$":                    r"text_projection.weight",
            r"^logit_scale$":                              r"logit_scale",
        },
        image_size=384,
    ),
    BEiT3Task(
        "captioning", modeling.BEiT3ForCaptioning, AutoModelForImageTextToText, "image-text-to-text",
        "image captioning",
        signature={"mlm_head.weight": TEXT_VOCAB},
        head_key_mapping={
            r"^mlm_head\.(weight|bias)$":                  r"lm_head.\1",
        },
        image_size=480, generation_config=captioning_generation_config,
    ),
    BEiT3Task(
        "pretraining", modeling.BEiT3ForMaskedDataModeling, AutoModelForPreTraining, None,
        "masked data modeling (pretrained, with its text and image prediction heads)",
        # a captioning file has `mlm_head` alone; the pretrained files add `mim_head` over the visual codebook
        signature={"mlm_head.weight": TEXT_VOCAB, "mim_head.weight": MIM_CODEBOOK_SIZE},
        head_key_mapping={
            r"^mlm_head\.(weight|bias)$":                  r"text_head.\1",
            r"^mim_head\.(weight|bias)$":                  r"image_head.\1",
        },
        config_from_rows={"visual_vocab_size": "mim_head.weight"}, backbone_drops_head=True,
    ),
)}
# fmt: on


@dataclass(frozen=True)
class KeyLayout:
    """A key layout of original checkpoints: what proves it, which task's model it becomes, and what that drops."""

    task: str
    signature: Signature
    #: Keys that `task`'s model has no place for; the converter drops them and says so.
    dropped_keys: tuple[str, ...] = ()


#: Layouts of released files whose heads no model here has a place for, converted to another task's model (none
#: today: the pretrained files' heads became the "pretraining" task).
EXTRA_LAYOUTS: dict[str, KeyLayout] = {}


def layouts() -> dict[str, KeyLayout]:
    """Every layout the converter recognises: each task's own, then `EXTRA_LAYOUTS`."""
    own = {name: KeyLayout(name, task.signature) for name, task in TASKS.items()}
    return {**own, **EXTRA_LAYOUTS}


def get_task(name: str) -> BEiT3Task:
    """`TASKS[name]`, with an error that lists the tasks."""
    if not isinstance(name, str):
        raise TypeError(f"A task name must be a str, got {type(name).__name__} ({name!r}).")
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """One file of the unilm release: its key layout (hence its task), size, resolution and published numbers."""

    layout: str
    size: str
    image_size: int
    #: `#params` of the unilm README, in millions (rounded or truncated; the ImageNet rows count the vision
    #: parameters only, as unilm fine-tunes and reports them).
    param_count: int
    #: Published score; empty for the pretrained files.
    result: str = ""

    @property
    def task(self) -> str:
        return layouts()[self.layout].task


# One row per released file (unilm beit3 README), timm style. The pretrained files hold the masked-data-modeling
# heads; the ITC files hold the retrieval heads (the 384px retrieval checkpoints were fine-tuned from them).
# fmt: off
RELEASED_CHECKPOINTS: dict[str, ReleasedCheckpoint] = {name: ReleasedCheckpoint(*row) for name, *row in (
    # (file name, layout, size, resolution, #params in millions, published result)
    ("beit3_base_patch16_224", "pretraining", "base", 224, 276),
    ("beit3_base_itc_patch16_224", "retrieval", "base", 224, 222),
    ("beit3_base_indomain_patch16_224", "pretraining", "base", 224, 276),
    ("beit3_large_patch16_224", "pretraining", "large", 224, 746),
    ("beit3_large_itc_patch16_224", "retrieval", "large", 224, 674),
    ("beit3_large_indomain_patch16_224", "pretraining", "large", 224, 746),
    ("beit3_base_patch16_224_in1k", "image_classification", "base", 224, 87, "ImageNet-1k top-1 85.4"),
    ("beit3_base_indomain_patch16_224_in1k", "image_classification", "base", 224, 87, "ImageNet-1k top-1 85.4"),
    ("beit3_large_patch16_224_in1k", "image_classification", "large", 224, 305, "ImageNet-1k top-1 87.6"),
    ("beit3_large_indomain_patch16_224_in1k", "image_classification", "large", 224, 305, "ImageNet-1k top-1 87.5"),
    ("beit3_base_patch16_480_vqa", "vqa", "base", 480, 228, "VQAv2 test-dev 77.65"),
    ("beit3_base_indomain_patch16_480_vqa", "vqa", "base", 480, 228, "VQAv2 test-dev 78.46"),
    ("beit3_large_patch16_480_vqa", "vqa", "large", 480, 683, "VQAv2 test-dev 81.85"),
    ("beit3_large_indomain_patch16_480_vqa", "vqa", "large", 480, 683, "VQAv2 test-dev 82.53"),
    ("beit3_large_indomain_patch16_768_vgqaaug_vqa", "vqa", "large", 768, 684, "VQAv2 test-dev 82.97 / test-std 83.03"),
    ("beit3_base_patch16_224_nlvr2", "visual_reasoning", "base", 224, 226, "NLVR2 dev 83.6 / test-P 84.4"),
    ("beit3_base_indomain_patch16_224_nlvr2", "visual_reasoning", "base", 224, 226, "NLVR2 dev 84.6 / test-P 85.3"),
    ("beit3_large_patch16_224_nlvr2", "visual_reasoning", "large", 224, 681, "NLVR2 dev 88.5 / test-P 89.4"),
    ("beit3_large_indomain_patch16_224_nlvr2", "visual_reasoning", "large", 224, 681, "NLVR2 dev 89.2 / test-P 90.0"),
    ("beit3_base_patch16_480_coco_captioning", "captioning", "base", 480, 271, "COCO test CIDEr 133.6"),
    ("beit3_base_indomain_patch16_480_coco_captioning", "captioning", "base", 480, 271, "COCO test CIDEr 135.0"),
    ("beit3_large_patch16_480_coco_captioning", "captioning", "large", 480, 739, "COCO test CIDEr 143.2"),
    ("beit3_base_patch16_480_nocaps", "captioning", "base", 480, 271, "NoCaps val CIDEr 104.4"),
    ("beit3_base_indomain_patch16_480_nocaps", "captioning", "base", 480, 271, "NoCaps val CIDEr 105.6"),
    ("beit3_large_patch16_480_nocaps", "captioning", "large", 480, 739, "NoCaps val CIDEr 120.2"),
    ("beit3_base_patch16_384_coco_retrieval", "retrieval", "base", 384, 222, "COCO IR@1 61.4 / TR@1 79.1"),
    ("beit3_large_patch16_384_coco_retrieval", "retrieval", "large", 384, 675, "COCO IR@1 63.4 / TR@1 82.1"),
    ("beit3_base_patch16_384_f30k_retrieval", "retrieval", "base", 384, 222, "Flickr30K IR@1 86.2 / TR@1 96.3"),
    ("beit3_large_patch16_384_f30k_retrieval", "retrieval", "large", 384, 675, "Flickr30K IR@1 88.1 / TR@1 97.2"),
)}
# fmt: on


@dataclass(frozen=True)
class ReleasedVisualTokenizer:
    """One VQ-KD file of the BEiT v2 release (`beit3-convert FILE OUT --task visual_tokenizer`). The converter reads
    every size off the tensors and checks them against the row of a file with this name."""

    #: "clip" (CLIP ViT-B/16, 512-wide targets) or "dino" (DINO ViT-B/16, 768-wide targets).
    teacher: str
    decoder_layers: int
    teacher_hidden_size: int
    image_size: int = 224
    codebook_size: int = MIM_CODEBOOK_SIZE
    codebook_dim: int = 32


# unilm beit2 `modeling_vqkd.py` builders (the files carry a hash suffix, e.g. `..._clip-d93179da.pth`)
# fmt: off
RELEASED_VISUAL_TOKENIZERS: dict[str, ReleasedVisualTokenizer] = {
    "vqkd_encoder_base_decoder_3x768x12_clip": ReleasedVisualTokenizer("clip", 3, 512),
    "vqkd_encoder_base_decoder_1x768x12_clip": ReleasedVisualTokenizer("clip", 1, 512),
    "vqkd_encoder_base_decoder_1x768x12_dino": ReleasedVisualTokenizer("dino", 1, 768),
}
# fmt: on
