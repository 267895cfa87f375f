"""The official BEiT-3 code (torchscale 0.3.0 backbone + unilm heads from the `beit3-gml` wheel) on random weights.

The official modules import four helpers from timm (`drop_path`, `trunc_normal_`, `register_model`,
`get_state_dict`). timm imports torchvision at import time, which here would pull a multi-GB CUDA build of torch,
so when timm is not importable a stand-in with those four helpers is registered instead. None of them touches
the model math: drop path is 0 in these tests and the weights are overwritten after construction.
"""

import sys
import types

import pytest
import torch

OFFICIAL_INSTALL_HINT = (
    "pip install --no-deps torchscale==0.3.0 beit3-gml==0.1.3 && "
    "pip install --no-deps --no-build-isolation fairscale==0.4.0"
)


def _install_timm_stand_in():
    try:
        import timm.models.layers  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - missing timm or a broken torchvision underneath it
        pass

    def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
        if drop_prob == 0.0 or not training:
            return x
        keep_prob = 1 - drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask / keep_prob if scale_by_keep else x * mask

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    utils = types.ModuleType("timm.utils")
    layers.drop_path = drop_path
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry.register_model = lambda fn: fn
    utils.get_state_dict = lambda model, *args, **kwargs: model.state_dict()
    timm.models, models.layers, models.registry, timm.utils = models, layers, registry, utils
    sys.modules.update(
        {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry,
         "timm.utils": utils}
    )


def official_modules():
    """(torchscale BEiT3, EncoderConfig, unilm modeling_finetune); raises ImportError when not installed."""
    _install_timm_stand_in()
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    from beit3 import modeling_finetune

    return BEiT3, EncoderConfig, modeling_finetune


def _official_code_installed() -> bool:
    try:
        official_modules()
    except ImportError:
        return False
    return True


HAVE_OFFICIAL = _official_code_installed()
needs_official = pytest.mark.skipif(
    not HAVE_OFFICIAL, reason=f"the official torchscale/unilm code is not installed ({OFFICIAL_INSTALL_HINT})"
)
"""Marks a test that compares against the official code (installed by .ci/run; optional elsewhere)."""


def official_args(hidden_size=32, layers=2, heads=4, ffn=64, image_size=32, patch_size=8, vocab_size=100,
                  normalize_output=True):
    _, EncoderConfig, _ = official_modules()
    return EncoderConfig(
        img_size=image_size, patch_size=patch_size, vocab_size=vocab_size, multiway=True,
        layernorm_embedding=False, normalize_output=normalize_output, no_output_layer=True, drop_path_rate=0.0,
        encoder_embed_dim=hidden_size, encoder_attention_heads=heads, encoder_ffn_embed_dim=ffn,
        encoder_layers=layers, checkpoint_activations=None,
    )


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (LayerNorm scales included), so experts really differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("logit_scale"):
                param.copy_(2.0 + 0.1 * noise)
            elif param.ndim == 1 and "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)
    return module


#: Rows of the released pretrained files' `mim_head` (the BEiT v2 tokenizer's codebook).
CODEBOOK_SIZE = 8192


def build_official(task: str, seed: int = 0, num_labels: int = 3, codebook_size: int = CODEBOOK_SIZE, **dims):
    """The official model for `task` with random weights, in eval mode. "pretraining" is the layout of the
    pretrained files, whose training code is unreleased: the torchscale backbone plus `mlm_head` (hidden ->
    vocabulary) and `mim_head` (hidden -> `codebook_size`), the four keys unilm's loaders allow besides it."""
    BEiT3, _, ft = official_modules()
    normalize_output = task not in ("image_classification", "vqa")
    args = official_args(normalize_output=normalize_output, **dims)
    if task in ("backbone", "pretraining"):
        class Backbone(torch.nn.Module):  # checkpoints keep the backbone under `beit3.`
            def __init__(self):
                super().__init__()
                self.beit3 = BEiT3(args)
                if task == "pretraining":
                    self.mlm_head = torch.nn.Linear(args.encoder_embed_dim, args.vocab_size)
                    self.mim_head = torch.nn.Linear(args.encoder_embed_dim, codebook_size)

        model = Backbone()
    elif task == "image_classification":
        model = ft.BEiT3ForImageClassification(args, num_classes=num_labels)
    elif task == "vqa":
        model = ft.BEiT3ForVisualQuestionAnswering(args, num_classes=num_labels)
    elif task == "visual_reasoning":
        model = ft.BEiT3ForVisualReasoning(args, num_classes=num_labels)
    elif task == "retrieval":
        model = ft.BEiT3ForRetrieval(args)
    elif task == "captioning":
        model = ft.BEiT3ForCaptioning(args)
    else:
        raise ValueError(task)
    return randomize_(model, seed).eval()
