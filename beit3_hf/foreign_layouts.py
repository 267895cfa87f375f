"""BEiT-3 weights in other projects' layouts, read into the unilm layout that `convert.py` converts.

- `"unilm"`: the released `.pth` files (torchscale names, experts `A` = image, `B` = text); passed through.
- `"transformers_pr"`: the unmerged transformers PR (huggingface/transformers#39534, rebased from #22289; Hub
  checkpoints `Raghavan/beit3_*`, `leon0402/beit3_base_patch16_224`): `beit3.text_embedding`,
  `beit3.vision_embedding.projection`, `self_attn.{query,key,value,out}_proj.{image,text}`, `inner_attn_ln`,
  `ffn.{image,text}`, final norm `beit3.encoder.fc_norm`, position tables `beit3.encoder.embed_positions.{image,text}`
  that keep fairseq's two unused rows, heads `classifier*`, `vision_classifier` / `language_classifier`,
  `mlm_classifier`, VQA pooler `beit3.pooler`. The experts have identical shapes, so nothing in the tensors says
  which is which: the PR's code today (#39534) routes image tokens to `.image`, which is read as `A`;
  `swap_experts=True` reads the 2023 revision's files (#22289 mapped `A` to `.text`).
- `"timm"`: timm's BEiT-3 (`beit3_{base,large}_patch16_224.*`, remapped onto timm's `VisionTransformer` by its
  `_convert_beit3`): the image path alone, `blocks.N`, fused `attn.qkv`, `attn.norm` / `mlp.norm` for the sub-LNs,
  `pos_embed` without the fairseq rows, no mask token, ImageNet head `fc_norm` + `head`. Converted into an
  image-only model (`BEiT3Config(image_only=True)`): no text experts, text input refused.

`to_unilm_layout` reads any of them; a state dict that is none of them raises one error listing the layouts and
the marker keys that recognise them, and the keys the file has instead.
"""

from __future__ import annotations

import re

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["LAYOUT_MARKERS", "detect_source_layout", "to_unilm_layout"]

#: Layout -> keys any one of which identifies it.
LAYOUT_MARKERS = {
    "unilm": ("beit3.vision_embed.proj.weight", "beit3.text_embed.weight"),
    "transformers_pr": ("beit3.vision_embedding.projection.weight", "beit3.text_embedding.weight"),
    "timm": ("blocks.0.attn.qkv.weight",),
}
#: Keys of a directory this package wrote (already converted: load it with `from_pretrained`).
CONVERTED_MARKERS = ("beit3.embeddings.patch_embedding.weight", "embeddings.patch_embedding.weight")

# fairseq position tables start at row 2; rows 0 and 1 are never read, so the converter drops them
FAIRSEQ_POSITION_OFFSET = 2

# transformers PR key -> unilm key; `{E}` stands for the expert (`image`/`text`, written back as `A`/`B`)
# fmt: off
PR_KEY_MAPPING = {
    r"^beit3\.text_embedding\.weight$":                                 r"beit3.text_embed.weight",
    r"^beit3\.vision_embedding\.projection\.(weight|bias)$":            r"beit3.vision_embed.proj.\1",
    r"^beit3\.vision_embedding\.(cls_token|mask_token)$":               r"beit3.vision_embed.\1",
    r"^beit3\.encoder\.embed_positions\.{E}\.weight$":                  r"beit3.encoder.embed_positions.\1.weight",
    r"^beit3\.encoder\.layers\.(\d+)\.self_attn\.(query|key|value|out)_proj\.{E}\.(weight|bias)$":
        r"beit3.encoder.layers.\1.self_attn.\2_proj.\3.\4",
    r"^beit3\.encoder\.layers\.(\d+)\.self_attn\.inner_attn_ln\.{E}\.(weight|bias)$":
        r"beit3.encoder.layers.\1.self_attn.inner_attn_ln.\2.\3",
    r"^beit3\.encoder\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm)\.{E}\.(weight|bias)$":
        r"beit3.encoder.layers.\1.\2.\3.\4",
    r"^beit3\.encoder\.layers\.(\d+)\.ffn\.{E}\.(fc1|fc2|ffn_layernorm)\.(weight|bias)$":
        r"beit3.encoder.layers.\1.ffn.\2.\3.\4",
    r"^beit3\.encoder\.fc_norm\.{E}\.(weight|bias)$":                   r"beit3.encoder.layer_norm.\1.\2",
    r"^beit3\.pooler\.(norm|dense)\.(weight|bias)$":                    r"pooler.\1.\2",
    r"^fc_norm\.(weight|bias)$":                                        r"fc_norm.\1",
    r"^classifier\.(weight|bias)$":                                     r"head.\1",
    r"^classifier\.(0|1|3)\.(weight|bias)$":                            r"head.\1.\2",
    r"^classifier\.(norm1|dense1|norm2|dense2)\.(weight|bias)$":        r"head.\1.\2",
    r"^vision_classifier\.weight$":                                     r"vision_head.weight",
    r"^language_classifier\.weight$":                                   r"language_head.weight",
    r"^logit_scale$":                                                   r"logit_scale",
    r"^mlm_classifier\.(weight|bias)$":                                 r"mlm_head.\1",
}
# timm key -> unilm key (image expert `A` only); `attn.qkv` is split and `pos_embed` reshaped separately
TIMM_KEY_MAPPING = {
    r"^cls_token$":                                                     r"beit3.vision_embed.cls_token",
    r"^patch_embed\.proj\.(weight|bias)$":                              r"beit3.vision_embed.proj.\1",
    r"^blocks\.(\d+)\.norm1\.(weight|bias)$":                           r"beit3.encoder.layers.\1.self_attn_layer_norm.A.\2",
    r"^blocks\.(\d+)\.attn\.norm\.(weight|bias)$":                      r"beit3.encoder.layers.\1.self_attn.inner_attn_ln.A.\2",
    r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$":                      r"beit3.encoder.layers.\1.self_attn.out_proj.A.\2",
    r"^blocks\.(\d+)\.norm2\.(weight|bias)$":                           r"beit3.encoder.layers.\1.final_layer_norm.A.\2",
    r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$":                  r"beit3.encoder.layers.\1.ffn.A.\2.\3",
    r"^blocks\.(\d+)\.mlp\.norm\.(weight|bias)$":                       r"beit3.encoder.layers.\1.ffn.A.ffn_layernorm.\2",
    r"^norm\.(weight|bias)$":                                           r"beit3.encoder.layer_norm.A.\1",
    r"^fc_norm\.(weight|bias)$":                                        r"fc_norm.\1",
    r"^head\.(weight|bias)$":                                           r"head.\1",
}
# fmt: on
TIMM_QKV = r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"


def detect_source_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """The layout of `state_dict` ("unilm", "transformers_pr" or "timm"); one ValueError for anything else."""
    for layout, markers in LAYOUT_MARKERS.items():
        if any(key in state_dict for key in markers):
            return layout
    if any(key in state_dict for key in CONVERTED_MARKERS):
        raise ValueError(
            "This state dict is already in this package's layout (`beit3.embeddings.*`): load its directory with "
            "`from_pretrained` instead of converting it."
        )
    known = "; ".join(f"{layout} ({' or '.join(markers)})" for layout, markers in LAYOUT_MARKERS.items())
    groups: dict[str, int] = {}  # keys grouped by their first two name parts
    for key in state_dict:
        parts = key.split(".")
        group = ".".join(parts[:2]) + (".*" if len(parts) > 2 else "")
        groups[group] = groups.get(group, 0) + 1
    found = ", ".join(f"{group} ({count})" for group, count in sorted(groups.items())[:30])
    raise ValueError(
        f"Not a BEiT-3 checkpoint in any layout the converter reads (unknown layout). It reads these layouts, each "
        f"recognised by one of its keys: {known}. This file has none of those keys; its {len(state_dict)} keys are "
        f"{found or 'none'}."
    )


def _map(state_dict, mapping, special=None) -> tuple[dict[str, torch.Tensor], list[str]]:
    converted, unplaced = {}, []
    for key, value in state_dict.items():
        if special is not None and special(key, value, converted):
            continue
        for pattern, replacement in mapping.items():
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key)] = value
                break
        else:
            unplaced.append(key)
    return converted, unplaced


def _pr_to_unilm(state_dict, swap_experts: bool):
    experts = {"image": "B", "text": "A"} if swap_experts else {"image": "A", "text": "B"}
    mapping = {}
    for pattern, replacement in PR_KEY_MAPPING.items():
        if "{E}" not in pattern:
            mapping[pattern] = replacement
            continue
        # one pattern per expert, so the replacement can name A or B; `\N` of the expert group is replaced literally
        index = pattern[: pattern.index("{E}")].count("(") + 1
        for name, letter in experts.items():
            expert_pattern = pattern.replace("{E}", f"({name})")
            mapping[expert_pattern] = replacement.replace(f"\\{index}", letter)
    converted, unplaced = _map(state_dict, mapping)
    names = {"query": "q", "key": "k", "value": "v"}
    pattern = r"\.self_attn\.(query|key|value)_proj\."
    return {re.sub(pattern, lambda m: f".self_attn.{names[m[1]]}_proj.", k): v for k, v in converted.items()}, unplaced


def _timm_to_unilm(state_dict):
    def special(key, value, converted):
        if match := re.match(TIMM_QKV, key):
            for name, part in zip("qkv", value.chunk(3)):
                converted[f"beit3.encoder.layers.{match[1]}.self_attn.{name}_proj.A.{match[2]}"] = part
            return True
        if key == "pos_embed":  # (1, 1 + patches, D) -> the release's table, fairseq rows back in front
            table = value.reshape(-1, value.shape[-1])
            converted["beit3.encoder.embed_positions.A.weight"] = torch.cat(
                [table.new_zeros(FAIRSEQ_POSITION_OFFSET, table.shape[-1]), table]
            )
            return True
        return False

    converted, unplaced = _map(state_dict, TIMM_KEY_MAPPING, special)
    if "fc_norm.weight" in converted and "head.weight" not in converted:
        # timm's pretraining weights: a pooled norm without a classifier, which the backbone has no place for
        dropped = sorted(key for key in converted if key.startswith("fc_norm."))
        logger.warning(f"Dropping {dropped}: timm's pooled norm without a classifier head has no place in BEiT3Model.")
        for key in dropped:
            del converted[key]
    if "head.weight" in converted and converted["head.weight"].shape[0] == 0:
        del converted["head.weight"], converted["head.bias"]
    hidden_size = converted["beit3.vision_embed.proj.weight"].shape[0]
    # timm drops the mask token (its ViT has no masked image modeling); zeros, read only with `bool_masked_pos`
    converted.setdefault("beit3.vision_embed.mask_token", torch.zeros(1, 1, hidden_size))
    return converted, unplaced


def to_unilm_layout(
    state_dict: dict[str, torch.Tensor], swap_experts: bool = False
) -> tuple[dict[str, torch.Tensor], str]:
    """`state_dict` in the unilm layout, and the layout it came in. Raises one ValueError listing the keys that
    have no place in the layout the file was recognised as."""
    layout = detect_source_layout(state_dict)
    if swap_experts and layout != "transformers_pr":
        raise ValueError(f"`swap_experts` is for the transformers PR's 2023 files; this file is in the {layout} layout.")
    if layout == "unilm":
        return state_dict, layout
    converted, unplaced = _pr_to_unilm(state_dict, swap_experts) if layout == "transformers_pr" else _timm_to_unilm(
        state_dict
    )
    if unplaced:
        raise ValueError(
            f"Recognised the {layout} layout (by {' or '.join(LAYOUT_MARKERS[layout])}) and read {len(converted)} "
            f"of its keys, but these {len(unplaced)} have no place in it: {sorted(unplaced)}."
        )
    logger.info(f"Read {len(state_dict)} {layout} keys into the unilm layout.")
    return converted, layout
