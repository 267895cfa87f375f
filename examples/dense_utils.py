"""What the dense-prediction scripts (`run_semantic_segmentation.py`, `run_object_detection.py`) share: their model
arguments, the BEiT-3 backbone (a converted checkpoint's image path, or a random init) with its neck, the image
normalisation, and a Trainer whose optimizer applies layer-wise learning-rate decay to the backbone (the head and
the neck learn at the full rate)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, HfArgumentParser, Trainer, TrainingArguments
from transformers.utils import logging

from beit3_hf import BEiT3Backbone, BEiT3ImageProcessor
from beit3_hf.optimization import is_no_weight_decay, layer_decay_parameter_groups
from beit3_hf.peft_utils import build_config, parse_config_overrides

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_utils import SCRIPT_DEFAULTS  # noqa: E402

logger = logging.get_logger(__name__)


@dataclass
class DenseModelArguments:
    """The BEiT-3 backbone and the dense head around it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A converted BEiT-3 checkpoint (any head: its image path becomes the backbone), or a "
                          "directory this script saved (the whole model, to train on or evaluate). None: random init "
                          "from --config_name / --config_overrides."},
    )
    config_name: str | None = field(default=None, metadata={"help": "BEiT-3 preset or config.json (random init)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "BEiT-3 config overrides, e.g. 'hidden_size=128,num_hidden_layers=4'."}
    )
    backbone_neck: str = field(
        default="simple_pyramid",
        metadata={"help": "'simple_pyramid' (ViTDet, from the last block) or 'fpn' (BEiT's, from --out_indices)."},
    )
    backbone_neck_channels: int = field(default=128, metadata={"help": "Channels of the simple pyramid's levels."})
    backbone_neck_scales: str | None = field(
        default=None,
        metadata={"help": "Simple-pyramid levels as scales of the patch grid, e.g. '2,1,0.5' (strides 8/16/32 for "
                          "patch 16). Default: '4,2,1,0.5' for segmentation; detection always uses '2,1,0.5'."},
    )
    out_indices: str | None = field(
        default=None, metadata={"help": "Backbone stages, e.g. '4,6,8,12' for the FPN (default: the last block)."}
    )
    head_config_overrides: str | None = field(
        default=None,
        metadata={"help": "Overrides of the head's config (UperNetConfig / RTDetrConfig): 'decoder_layers=3,d_model=64' "
                          "or a JSON object, e.g. '{\"pool_scales\": [1, 2]}'."},
    )
    layer_decay: float = field(
        default=1.0,
        metadata={"help": "Layer-wise lr decay of the backbone blocks (unilm's; 1 = off). Neck and head: full rate."},
    )
    # read by trainer_utils.train_and_evaluate; no LoRA for the dense models (not command-line options)
    lora: bool = field(default=False, init=False)
    merge_lora: bool = field(default=False, init=False)


def parse_dense_arguments(data_class, args: Sequence[str] | None = None, **defaults):
    """`(DenseModelArguments, data_class, TrainingArguments)` from the command line (`args`, default `sys.argv[1:]`)
    or one `.json` file, with the example scripts' `SCRIPT_DEFAULTS` and the script's `defaults`."""
    parser = HfArgumentParser((DenseModelArguments, data_class, TrainingArguments))
    has_gpu = torch.cuda.is_available()
    defaults = {**SCRIPT_DEFAULTS, "use_cpu": not has_gpu, "bf16": has_gpu and torch.cuda.is_bf16_supported(),
                **defaults}
    args = sys.argv[1:] if args is None else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        with open(os.path.abspath(args[0])) as file:
            return parser.parse_dict({**defaults, **json.load(file)})
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args)


def backbone_kwargs(model_args: DenseModelArguments, **neck) -> dict:
    """The backbone config options the arguments set (`neck` adds e.g. `backbone_neck_scales`)."""
    kwargs = dict(backbone_neck=model_args.backbone_neck or None, **neck)
    if model_args.backbone_neck == "simple_pyramid":
        kwargs["backbone_neck_channels"] = model_args.backbone_neck_channels
        if model_args.backbone_neck_scales and "backbone_neck_scales" not in neck:
            kwargs["backbone_neck_scales"] = [float(scale) for scale in model_args.backbone_neck_scales.split(",")]
    if model_args.out_indices:
        kwargs["out_indices"] = [int(index) for index in model_args.out_indices.split(",")]
    return kwargs


def saved_model_type(model_args: DenseModelArguments) -> str | None:
    """The `model_type` of `--model_name_or_path` (None without one)."""
    if model_args.model_name_or_path is None:
        return None
    return AutoConfig.from_pretrained(model_args.model_name_or_path).model_type


def load_backbone(model_args: DenseModelArguments, **neck) -> BEiT3Backbone:
    """The pretrained image path of `--model_name_or_path`, or a random init, with the neck the arguments ask for."""
    kwargs = backbone_kwargs(model_args, **neck)
    if model_args.model_name_or_path is not None:
        return BEiT3Backbone.from_pretrained(model_args.model_name_or_path, **kwargs)
    return BEiT3Backbone(build_config(model_args.config_name, model_args.config_overrides, **kwargs))


def head_overrides(model_args: DenseModelArguments) -> dict:
    """`--head_config_overrides`: `key=value,key=value`, or a JSON object (for lists: `{"pool_scales": [1, 2]}`)."""
    overrides = model_args.head_config_overrides
    if overrides and overrides.lstrip().startswith("{"):
        return json.loads(overrides)
    return parse_config_overrides(overrides)


def image_normalisation(model_args: DenseModelArguments) -> dict:
    """BEiT-3's mean and std (its "vl" preset, 0.5 everywhere; the checkpoint's own processor when it has one)."""
    source = model_args.model_name_or_path
    processor = BEiT3ImageProcessor.from_preset("vl")
    if source is not None and os.path.isfile(os.path.join(source, "processor_config.json")):
        try:
            processor = BEiT3ImageProcessor.from_pretrained(source)
        except (OSError, ValueError, KeyError) as error:
            logger.warning(f"Using BEiT-3's default normalisation: {source}'s processor did not load ({error}).")
    return dict(image_mean=list(processor.image_mean), image_std=list(processor.image_std))


def find_backbone(model) -> BEiT3Backbone:
    for module in model.modules():
        if isinstance(module, BEiT3Backbone):
            return module
    raise ValueError(f"{type(model).__name__} has no BEiT3Backbone.")


class DenseTrainer(Trainer):
    """A Trainer whose optimizer gives the BEiT-3 blocks unilm's layer-wise lr decay (`layer_decay`) and
    weight-decay exemptions; every other parameter (neck, head) learns at the full rate."""

    def __init__(self, *args, layer_decay: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            lr, weight_decay = self.args.learning_rate, self.args.weight_decay
            groups = layer_decay_parameter_groups(find_backbone(model), lr, weight_decay, self.layer_decay)
            in_groups = {id(p) for group in groups for p in group["params"]}
            rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]
            for no_decay in (False, True):
                params = [p for n, p in rest if is_no_weight_decay(n, p) == no_decay]
                if params:
                    groups.append(dict(params=params, lr=lr, weight_decay=0.0 if no_decay else weight_decay))
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)
