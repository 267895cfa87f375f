"""Image preprocessing of the released BEiT-3 checkpoints.

The original evaluation transforms (unilm `beit3/datasets.py`, `build_transform(is_train=False)`) come in two kinds:

- **vision-language** (VQA, NLVR2, retrieval, captioning): `Resize((S, S), bicubic)` (aspect ratio *not* kept, no
  crop), `ToTensor`, `Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))`;
- **imagenet** (image classification): `Resize(S, bicubic)` on the shorter side, `CenterCrop(S)`, `ToTensor`,
  `Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)`.

`image_processor_kwargs(preset, image_size)` gives the `BEiT3ImageProcessor` keyword arguments for one of them, and
`processor_config_for(task, image_size)` picks the preset and resolution a task was released with
(`tasks.TASKS`), so a converter can save the right image-processor config next to converted weights:

```python
>>> processor_config_for("vqa")["size"]
{'height': 480, 'width': 480}
>>> processor_config_for("image_classification", 224)["crop_size"]
{'height': 224, 'width': 224}
```
"""

from __future__ import annotations

from .tasks import TASKS, get_task

__all__ = [
    "DEFAULT_IMAGE_SIZES",
    "PRESETS",
    "TASK_PRESETS",
    "image_processor_kwargs",
    "processor_config_for",
]

#: Normalization of the vision-language fine-tuning (timm's IMAGENET_INCEPTION_MEAN/STD).
VL_MEAN = (0.5, 0.5, 0.5)
VL_STD = (0.5, 0.5, 0.5)
#: Normalization of the ImageNet fine-tuning (timm's IMAGENET_DEFAULT_MEAN/STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: `PIL.Image.BICUBIC` (= `torchvision` `interpolation=3`), kept as an int so this module needs no PIL.
BICUBIC = 3

#: The two preprocessing presets. "vision_language" is an alias of "vl".
PRESETS = ("vl", "imagenet")
_PRESET_ALIASES = {"vl": "vl", "vision_language": "vl", "vision-language": "vl", "imagenet": "imagenet"}

#: Which preset each task was released with ("pretraining" and "backbone": the pretrained files, whose downstream
#: use is overwhelmingly vision-language; their ImageNet fine-tuning switches to the imagenet preset).
TASK_PRESETS = {name: task.processor_preset for name, task in TASKS.items()}

#: Input resolution of each task's released checkpoints (one VQA large checkpoint also exists at 768).
DEFAULT_IMAGE_SIZES = {name: task.image_size for name, task in TASKS.items()}


def _check_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    return image_size


def image_processor_kwargs(preset: str, image_size: int = 224) -> dict:
    """`BEiT3ImageProcessor` keyword arguments that reproduce one of the original evaluation transforms.

    Args:
        preset: `"vl"` (alias `"vision_language"`) or `"imagenet"`.
        image_size: the side `S` of the square model input.

    Raises:
        ValueError: unknown preset or non-positive size.
    """
    name = _PRESET_ALIASES.get(preset) if isinstance(preset, str) else None
    if name is None:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {sorted(_PRESET_ALIASES)}.")
    size = _check_size(image_size)
    common = dict(do_resize=True, resample=BICUBIC, do_rescale=True, rescale_factor=1 / 255, do_normalize=True)
    if name == "vl":
        return dict(
            common,
            size={"height": size, "width": size},
            do_center_crop=False,
            image_mean=list(VL_MEAN),
            image_std=list(VL_STD),
        )
    return dict(
        common,
        size={"shortest_edge": size},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def processor_config_for(task: str, image_size: int | None = None) -> dict:
    """Image-processor keyword arguments for a released checkpoint's task.

    Args:
        task: a name in `tasks.TASKS`: `"image_classification"` (imagenet preset) or `"vqa"`, `"visual_reasoning"`,
            `"retrieval"`, `"captioning"`, `"pretraining"`, `"backbone"` (vision-language preset).
        image_size: input resolution; defaults to the released one for the task (see `DEFAULT_IMAGE_SIZES`).

    Raises:
        ValueError: unknown task or non-positive size.
    """
    spec = get_task(task)
    return image_processor_kwargs(spec.processor_preset, spec.image_size if image_size is None else image_size)
