#!/usr/bin/env python
"""
Train a BEiT v2 visual tokenizer (VQ-KD, `BEiT3VisualTokenizer`) with the Trainer: its decoder regresses the patch
features of a frozen teacher, any Hugging Face image model that `AutoModel` loads, on a local `imagefolder`.

    python examples/run_visual_tokenizer.py --teacher_name_or_path openai/clip-vit-base-patch16 \
        --teacher_features clip_projection --dataset_dir data/imagenet --output_dir runs/vqkd --restart_dead_codes

The teacher sees the tokenizer's pixels in its own normalisation, in eval mode and without gradients; its patch
tokens (leading CLS / register tokens dropped) are resized to the tokenizer's patch grid when the grids differ.
`--output_dir` receives the tokenizer alone (`AutoModel` loads it) and its image processor. Codebook collapse (most
codes never used, loss stuck near 1) is fought by `--restart_dead_codes`: after every training step the codes whose
moving-average usage is below `--dead_code_threshold` restart from random encoder outputs of the batch. Every
logging step adds `codebook_usage` and `perplexity` of the batches since the last log (and `restarted_codes`);
evaluation adds them over the whole evaluation split.
"""

import inspect
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoImageProcessor, AutoModel, Trainer, set_seed
from transformers.utils import logging

from beit3_hf import BEiT3ImageProcessor, BEiT3VisualTokenizer, BEiT3VisualTokenizerConfig
from beit3_hf.configuration_visual_tokenizer import TEACHER_NORMALIZATION, visual_tokenizer_processor_kwargs
from beit3_hf.modeling_visual_tokenizer import codebook_usage
from beit3_hf.peft_utils import parse_config_overrides

# the helpers next to this script, also when it is imported (tests) rather than run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_utils import (  # noqa: E402
    DataArguments,
    ModelArguments,
    load_task_dataset,
    parse_arguments,
    run_as_script,
    setup_logging,
    train_and_evaluate,
)

logger = logging.get_logger(__name__)

TEACHER_FEATURES = ("last_hidden_state", "clip_projection")


@dataclass
class VisualTokenizerArguments(DataArguments):
    teacher_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The frozen teacher: any image model directory (or Hub id) that AutoModel loads, e.g. "
                          "CLIPVisionModel / CLIPModel, or a BEiT-3 checkpoint (its image encoder)."},
    )
    teacher_features: str = field(
        default="last_hidden_state",
        metadata={"help": "last_hidden_state: the teacher's last hidden patch tokens; clip_projection: "
                          "visual_projection(post_layernorm(patch tokens)), the release's CLIP target (needs a "
                          "CLIPModel or CLIPVisionModelWithProjection).", "choices": list(TEACHER_FEATURES)},
    )
    restart_dead_codes: bool = field(
        default=False,
        metadata={"help": "Against codebook collapse: after each training step restart the codes whose moving-average "
                          "usage is below --dead_code_threshold from random encoder outputs of the batch."},
    )
    dead_code_threshold: float = field(
        default=1e-3,
        metadata={"help": "A code is dead when its usage average (`quantizer.cluster_size`: hits per step, moving "
                          "with decay `ema_decay`) is below this."},
    )


# ----------------------------------------------------------------------------------------------------------------
# The teacher
# ----------------------------------------------------------------------------------------------------------------


def resize_patch_grid(features: torch.Tensor, source: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Patch features `(batch, h * w, dim)` on a `source` grid -> the `target` grid: area averaging when both sides
    shrink, else bilinear interpolation."""
    batch_size, _, dim = features.shape
    maps = features.transpose(1, 2).reshape(batch_size, dim, *source).float()
    if target[0] <= source[0] and target[1] <= source[1]:
        maps = F.interpolate(maps, size=target, mode="area")
    else:
        maps = F.interpolate(maps, size=target, mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2)


class FrozenTeacher(nn.Module):
    """
    A frozen image model as the tokenizer's target: `[0, 1]` pixels -> its patch features on a given grid. Always
    in eval mode (`train()` leaves it there) and without gradients. `image_mean` / `image_std` are the teacher's
    input normalisation.
    """

    def __init__(self, model: nn.Module, image_mean, image_std, features: str = "last_hidden_state"):
        super().__init__()
        if features not in TEACHER_FEATURES:
            raise ValueError(f"`teacher_features` must be one of {list(TEACHER_FEATURES)}, got {features!r}.")
        self.model = model.eval().requires_grad_(False)
        self.features = features
        # CLIPModel / CLIPVisionModel(WithProjection) / SigLIP keep the image tower under `vision_model`
        self.vision_model = getattr(model, "vision_model", model)
        config = getattr(model.config, "vision_config", model.config)
        self.patch_size = getattr(config, "patch_size", None)
        if not isinstance(self.patch_size, int):
            raise ValueError(
                f"The teacher {type(model).__name__} has no integer `patch_size` in its config (got "
                f"{self.patch_size!r}): its patch grid is unknown."
            )
        image_size = getattr(config, "image_size", None)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size or ())
        self.interpolates = "interpolate_pos_encoding" in inspect.signature(self.vision_model.forward).parameters
        if features == "clip_projection" and not (
            hasattr(model, "visual_projection") and hasattr(self.vision_model, "post_layernorm")
        ):
            raise ValueError(
                f"`teacher_features='clip_projection'` needs a teacher with `visual_projection` and "
                f"`vision_model.post_layernorm` (CLIPModel, CLIPVisionModelWithProjection); got {type(model).__name__}."
            )
        shape = (1, -1, 1, 1)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float).view(shape), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float).view(shape), persistent=False)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """`(batch, 3, H, W)` pixels in [0, 1] -> `(batch, grid[0] * grid[1], teacher width)` fp32 features."""
        height, width = pixel_values.shape[-2:]
        dtype = next(self.model.parameters()).dtype
        inputs = ((pixel_values - self.image_mean) / self.image_std).to(dtype)
        kwargs = {}
        if self.interpolates and (height, width) != self.image_size:
            kwargs["interpolate_pos_encoding"] = True
        hidden_states = self.vision_model(pixel_values=inputs, **kwargs).last_hidden_state
        source = (height // self.patch_size, width // self.patch_size)
        num_patches = source[0] * source[1]
        if hidden_states.shape[1] < num_patches:
            raise ValueError(
                f"The teacher returned {hidden_states.shape[1]} tokens for a {source[0]}x{source[1]} patch grid "
                f"(patch size {self.patch_size}, image {height}x{width})."
            )
        patches = hidden_states[:, hidden_states.shape[1] - num_patches:]  # drop CLS / register tokens
        if self.features == "clip_projection":
            patches = self.model.visual_projection(self.vision_model.post_layernorm(patches))
        if source != tuple(grid):
            return resize_patch_grid(patches, source, tuple(grid))
        return patches.float()


def load_teacher(name_or_path: str, features: str, fallback_normalization: str) -> FrozenTeacher:
    """`AutoModel.from_pretrained(name_or_path)`, frozen, normalising pixels with its saved image processor's
    `image_mean` / `image_std`, or else with `TEACHER_NORMALIZATION[fallback_normalization]` (the tokenizer's
    `config.teacher`)."""
    model = AutoModel.from_pretrained(name_or_path)
    try:
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        image_processor = None
    if getattr(image_processor, "image_mean", None) is not None and getattr(image_processor, "do_normalize", True):
        mean, std = image_processor.image_mean, image_processor.image_std
        logger.info(f"Teacher input normalisation from its image processor: mean {mean}, std {std}.")
    else:
        mean, std = TEACHER_NORMALIZATION[fallback_normalization]
        logger.info(f"The teacher has no image processor: {fallback_normalization} normalisation (mean {mean}, std {std}).")
    return FrozenTeacher(model, mean, std, features)


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer, its processor and the data
# ----------------------------------------------------------------------------------------------------------------


def tokenizer_config(model_args: ModelArguments) -> BEiT3VisualTokenizerConfig:
    """A new tokenizer's config: `--config_name` (a config.json file or directory) or the defaults (the released
    ViT-B/16, 8192 codes), with `--config_overrides`."""
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.config_name is None:
        return BEiT3VisualTokenizerConfig(**overrides)
    if not os.path.exists(model_args.config_name):
        raise ValueError(f"`config_name` {model_args.config_name!r} is not a config.json file or directory.")
    config_dict, _ = BEiT3VisualTokenizerConfig.get_config_dict(model_args.config_name)
    return BEiT3VisualTokenizerConfig.from_dict({**config_dict, **overrides})


def teacher_width(teacher: FrozenTeacher, config: BEiT3VisualTokenizerConfig) -> int:
    """The width of the teacher's features, from one blank image at the tokenizer's size."""
    probe = torch.zeros(1, config.num_channels, config.image_size, config.image_size, device=teacher.image_mean.device)
    return teacher(probe, (config.grid_size, config.grid_size)).shape[-1]


def load_tokenizer(model_args: ModelArguments, teacher: FrozenTeacher, seed: int) -> BEiT3VisualTokenizer:
    """A converted / trained tokenizer (`--model_name_or_path`), or a new one whose `teacher_hidden_size` is the
    teacher's feature width unless `--config_overrides` sets it. Either way the widths must agree."""
    if model_args.model_name_or_path is not None:
        if model_args.config_name is not None or model_args.config_overrides is not None:
            raise ValueError(
                "Pass either --model_name_or_path (a tokenizer to continue) or --config_name/--config_overrides (a "
                f"new one), not both; got {model_args.model_name_or_path!r} and "
                f"{model_args.config_name or model_args.config_overrides!r}."
            )
        tokenizer = BEiT3VisualTokenizer.from_pretrained(model_args.model_name_or_path)
    else:
        config = tokenizer_config(model_args)
        if "teacher_hidden_size" not in parse_config_overrides(model_args.config_overrides):
            config.teacher_hidden_size = teacher_width(teacher, config)
        set_seed(seed)
        tokenizer = BEiT3VisualTokenizer(config)
    width = teacher_width(teacher, tokenizer.config)
    if width != tokenizer.config.teacher_hidden_size:
        raise ValueError(
            f"The teacher's features are {width} wide but the tokenizer's decoder predicts `teacher_hidden_size` = "
            f"{tokenizer.config.teacher_hidden_size}; choose --teacher_features or set teacher_hidden_size={width}."
        )
    return tokenizer


def load_image_processor(model_args: ModelArguments, config: BEiT3VisualTokenizerConfig) -> BEiT3ImageProcessor:
    """The tokenizer directory's image processor, or the release's evaluation transform at `config.image_size`."""
    path = model_args.model_name_or_path
    if path is not None and os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        return BEiT3ImageProcessor.from_pretrained(path)
    return BEiT3ImageProcessor(**visual_tokenizer_processor_kwargs(config.image_size))


@dataclass
class ImageCollator:
    """`{"image"}` examples -> `pixel_values` in [0, 1] from the tokenizer's image processor."""

    image_processor: BEiT3ImageProcessor
    image_column: str = "image"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [example[self.image_column] for example in examples]
        return {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"]}


# ----------------------------------------------------------------------------------------------------------------
# The Trainer
# ----------------------------------------------------------------------------------------------------------------


class VisualTokenizerTrainer(Trainer):
    """
    The Trainer of a `BEiT3VisualTokenizer` (`model`, the only thing trained and saved) against a `FrozenTeacher`
    (held here, moved to the device, never in the optimiser or the checkpoints).

    - `dead_code_threshold` (a float): after every training forward, `quantizer.restart_dead_codes` on the batch's
      encoder outputs.
    - Training logs add `codebook_usage`, `perplexity`, `reconstruction_loss` and `quantization_loss` averaged over
      the (micro-)batches since the last log (and over processes), and `restarted_codes` summed over them.
    - Evaluation adds `eval_codebook_usage` and `eval_perplexity` over the codes of the whole split.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns the batch mean

    def __init__(self, *args, teacher: FrozenTeacher, dead_code_threshold: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if dead_code_threshold is not None and not dead_code_threshold > 0:
            raise ValueError(f"`dead_code_threshold` must be positive, got {dead_code_threshold!r}.")
        self.teacher = teacher.to(self.args.device)
        self.dead_code_threshold = dead_code_threshold
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_batches = 0
        self._eval_indices: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        tokenizer = self.accelerator.unwrap_model(model)
        pixel_values = inputs["pixel_values"]
        grid = (pixel_values.shape[-2] // tokenizer.config.patch_size, pixel_values.shape[-1] // tokenizer.config.patch_size)
        outputs = model(pixel_values=pixel_values, teacher_features=self.teacher(pixel_values, grid))
        if tokenizer.training:
            stats = {name: outputs[name].detach().float()
                     for name in ("codebook_usage", "perplexity", "reconstruction_loss", "quantization_loss")}
            if self.dead_code_threshold is not None:
                restarted = tokenizer.quantizer.restart_dead_codes(outputs.image_embeds.detach(),
                                                                   self.dead_code_threshold)
                stats["restarted_codes"] = torch.tensor(float(restarted), device=pixel_values.device)
            for name, value in stats.items():
                self._train_sums[name] = self._train_sums.get(name, 0) + value
            self._train_batches += 1
        else:
            self._eval_indices.append(self.accelerator.gather_for_metrics(outputs.codebook_indices).flatten().cpu())
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss only (there are no labels and nothing to predict); the codes are collected by `compute_loss`."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._eval_indices = []
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        prefix = metric_key_prefix
        if self._eval_indices:
            codebook_size = self.accelerator.unwrap_model(self.model).config.codebook_size
            perplexity, usage = codebook_usage(torch.cat(self._eval_indices), codebook_size)
            output.metrics[f"{prefix}_perplexity"] = perplexity.item()
            output.metrics[f"{prefix}_codebook_usage"] = usage.item()
            self._eval_indices = []
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_batches:  # a training log, on every process at the same step
            for name, total in self._train_sums.items():
                if name == "restarted_codes":
                    logs[name] = self.accelerator.reduce(total, reduction="sum").item()
                else:
                    logs[name] = self.accelerator.reduce(total / self._train_batches, reduction="mean").item()
            self._train_sums, self._train_batches = {}, 0
        super().log(logs, start_time)


def main(args=None, callbacks=None) -> dict:
    """Runs the script on `args` (default: the command line); `callbacks` are extra `TrainerCallback`s."""
    model_args, data_args, training_args = parse_arguments(
        VisualTokenizerArguments, args, learning_rate=5e-5, adam_beta2=0.99
    )
    setup_logging(training_args)
    if data_args.teacher_name_or_path is None:
        raise ValueError("--teacher_name_or_path is required: the frozen image model whose features are the target.")
    if model_args.lora or model_args.load_in_8bit or model_args.load_in_4bit:
        raise ValueError("--lora / --load_in_8bit / --load_in_4bit are BEiT-3 options; the tokenizer trains in full.")
    if model_args.tokenizer_dir is not None:
        raise ValueError(f"--tokenizer_dir {model_args.tokenizer_dir!r}: the visual tokenizer needs no text tokenizer.")
    if not data_args.dead_code_threshold > 0:
        raise ValueError(f"--dead_code_threshold must be positive, got {data_args.dead_code_threshold!r}.")

    train_dataset, eval_dataset = load_task_dataset(data_args)
    if model_args.model_name_or_path is not None:
        normalization = BEiT3VisualTokenizerConfig.from_pretrained(model_args.model_name_or_path).teacher
    else:
        normalization = tokenizer_config(model_args).teacher
    teacher = load_teacher(data_args.teacher_name_or_path, data_args.teacher_features, normalization)
    tokenizer = load_tokenizer(model_args, teacher, training_args.seed)
    image_processor = load_image_processor(model_args, tokenizer.config)
    trainable = sum(p.numel() for p in tokenizer.parameters() if p.requires_grad)
    logger.info(f"Tokenizer: {trainable:,} trainable parameters, {tokenizer.config.codebook_size} codes; teacher "
                f"{type(teacher.model).__name__} ({data_args.teacher_features}, "
                f"{tokenizer.config.teacher_hidden_size} wide), frozen.")

    trainer = VisualTokenizerTrainer(
        model=tokenizer,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=ImageCollator(image_processor, data_args.image_column),
        processing_class=image_processor,
        callbacks=callbacks,
        teacher=teacher,
        dead_code_threshold=data_args.dead_code_threshold if data_args.restart_dead_codes else None,
    )
    return train_and_evaluate(trainer, model_args, training_args)


if __name__ == "__main__":
    run_as_script(main)
