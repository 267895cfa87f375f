"""Layer-wise learning-rate decay and the weight-decay split of the official BEiT-3 fine-tuning
(unilm `beit3/optim_factory.py`), as optimizer parameter groups for any BEiT-3 model: a head, the bare
`BEiT3Model`, or either wrapped by PEFT, DDP, FSDP or `torch.compile`.

Layer ids, for a backbone of `L` layers: the embeddings (`beit3.embeddings.*`: patch and token embeddings, CLS and
mask tokens, both position tables) are 0, encoder layer `k` (`beit3.encoder.layers.k.*`, its LoRA adapters
included) is `k + 1`, and everything else (the final LayerNorm, the pooler, the heads, `logit_scale`) is `L + 1`.
A parameter of layer `i` learns at `learning_rate * layer_decay ** (L + 1 - i)`, times `head_lr_scale` for the
parameters of the heads named in `head_prefixes` (unilm's `task_head_lr_weight`, used for VQAv2).

No weight decay, as in unilm: every parameter with at most one dimension (LayerNorm weights, biases,
`logit_scale`), every bias, and `NO_WEIGHT_DECAY` (unilm's `no_weight_decay()`: the image position table and the
CLS token). The text position table and the mask token are decayed, as in unilm.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

BACKBONE_PREFIX = "beit3."

NO_WEIGHT_DECAY = ("embeddings.image_position_embedding.weight", "embeddings.cls_token", "logit_scale")
"""Parameter names (below the backbone prefix) that get no weight decay besides the 1-D ones and the biases."""

HEAD_PREFIXES = ("classifier",)
"""The modules `head_lr_scale` applies to: the classifier of the classification, VQA and NLVR2 heads (unilm's
`head`; the VQA pooler is not part of it, as in unilm)."""

# leading prefixes of PEFT, DDP / DataParallel and torch.compile; FSDP / activation-checkpoint wrappers anywhere
_LEADING_PREFIXES = ("base_model.model.", "module.", "_orig_mod.")
_WRAPPER_SEGMENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module"}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")


def canonical_parameter_name(name: str) -> str:
    """`name` without wrapper prefixes (PEFT `base_model.model.`, DDP `module.`, FSDP segments), e.g.
    `base_model.model.beit3.encoder.layers.0.mlp.image.fc1.lora_A.default.weight` ->
    `beit3.encoder.layers.0.mlp.image.fc1.lora_A.default.weight`."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _LEADING_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def _backbone_relative(name: str) -> str:
    name = canonical_parameter_name(name)
    return name[len(BACKBONE_PREFIX):] if name.startswith(BACKBONE_PREFIX) else name


def layer_id(name: str, num_layers: int) -> int:
    """
    The layer id of parameter `name` in a BEiT-3 model with `num_layers` encoder layers: 0 for the embeddings,
    `k + 1` for encoder layer `k`, `num_layers + 1` for the rest (final LayerNorm, pooler, heads).
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers <= 0:
        raise ValueError(f"`num_layers` must be a positive integer, got {num_layers!r}.")
    relative = _backbone_relative(name)
    if relative.startswith("embeddings."):
        return 0
    match = _LAYER.match(relative)
    if match is not None:
        index = int(match.group(1))
        if index >= num_layers:
            raise ValueError(f"Parameter {name!r} is in layer {index}, but the model has only {num_layers} layers.")
        return index + 1
    return num_layers + 1


def is_no_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """Whether `parameter` is exempt from weight decay: at most 1-D, a bias, or in `NO_WEIGHT_DECAY`."""
    return parameter.ndim <= 1 or name.endswith(".bias") or _backbone_relative(name) in NO_WEIGHT_DECAY


def _num_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is None and isinstance(getattr(model, "module", None), nn.Module):  # DDP
        config = getattr(model.module, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise ValueError(f"Cannot read `num_hidden_layers` from {type(model).__name__}: pass `num_layers`.")
    return config.num_hidden_layers


def layer_decay_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    head_lr_scale: float = 1.0,
    head_prefixes: Sequence[str] = HEAD_PREFIXES,
    num_layers: int | None = None,
) -> list[dict]:
    """
    Optimizer parameter groups for the trainable parameters of `model`, one per (layer id, head or not, weight
    decay or not), each with its `lr` (`learning_rate * layer_decay ** (num_layers + 1 - layer_id)`, times
    `head_lr_scale` for parameters under `head_prefixes`), its `weight_decay` (0 for `is_no_weight_decay`), and
    `lr_scale` / `layer_id` for inspection. Frozen parameters are left out. `num_layers` defaults to the model
    config's `num_hidden_layers`. Pass the groups to any `torch.optim` optimizer with `lr=learning_rate` (the
    schedulers multiply each group's own `lr`).
    """
    if not learning_rate >= 0:
        raise ValueError(f"`learning_rate` must be >= 0, got {learning_rate!r}.")
    if not weight_decay >= 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay!r}.")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must be in (0, 1] (1 = no decay), got {layer_decay!r}.")
    if not head_lr_scale > 0:
        raise ValueError(f"`head_lr_scale` must be > 0, got {head_lr_scale!r}.")
    if isinstance(head_prefixes, str):
        raise ValueError(f"`head_prefixes` must be a sequence of module names, got the string {head_prefixes!r}.")
    num_layers = _num_layers(model) if num_layers is None else num_layers

    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer = layer_id(name, num_layers)
        relative = _backbone_relative(name)
        is_head = any(relative == prefix or relative.startswith(prefix + ".") for prefix in head_prefixes)
        no_decay = is_no_weight_decay(name, parameter)
        key = (layer, is_head, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer) * (head_lr_scale if is_head else 1.0)
            groups[key] = {
                "params": [],
                "lr": learning_rate * scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "layer_id": layer,
            }
        groups[key]["params"].append(parameter)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters.")
    scales = [group["lr_scale"] for group in groups.values()]
    logger.info(f"{len(groups)} parameter groups (layer decay {layer_decay}, head lr scale {head_lr_scale}): "
                f"learning-rate scales {min(scales):.3g} to {max(scales):.3g}.")
    return list(groups.values())


__all__ = [
    "HEAD_PREFIXES",
    "NO_WEIGHT_DECAY",
    "canonical_parameter_name",
    "is_no_weight_decay",
    "layer_decay_parameter_groups",
    "layer_id",
]
