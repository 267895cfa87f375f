"""Parameter counts of a BEiT-3 model by Multiway group, the way the paper reports them.

The paper's giant model (Table 2) is "1.9B = shared attention 317M + V-FFN 692M + L-FFN 692M + VL-FFN 52M";
`count_parameters_by_group(BEiT3Model(BEiT3Config.from_preset("giant")))` gives those groups (build it under
`with torch.device("meta"):` to count without allocating memory).
"""

from torch import nn

from .modeling_beit3 import BEiT3Model, BEiT3Multiway

PARAMETER_GROUPS = (
    "shared_attention",
    "image_attention",
    "text_attention",
    "image_ffn",
    "text_ffn",
    "image_text_ffn",
    "embeddings",
    "other",
)


def count_parameters_by_group(model: nn.Module) -> dict[str, int]:
    """
    Number of parameters of a BEiT-3 model (the backbone or any head, PEFT-wrapped or quantised) in each group:

    - `shared_attention`, `image_attention`, `text_attention`: the attention half of every block (its LayerNorm,
      q/k/v/out projections and sub-LN), shared across modalities (paper) or one expert per modality (release);
    - `image_ffn`, `text_ffn`, `image_text_ffn`: the FFN half of every block (its LayerNorm and the feed-forward
      network), per expert; `image_text_ffn` is the vision-language expert of the top `num_image_text_layers` blocks;
    - `embeddings`: patch, token and position embeddings, CLS and mask tokens;
    - `other`: everything else (final LayerNorm, pooler, task heads).

    Every group is present (0 when the architecture has none), every parameter is counted once, and the values add
    up to the model's parameter count. Works on the meta device.
    """
    backbones = [module for module in model.modules() if isinstance(module, BEiT3Model)]
    if len(backbones) != 1:
        raise ValueError(f"Expected a model holding one BEiT3Model, found {len(backbones)} in {type(model).__name__}.")
    backbone = backbones[0]
    counts = dict.fromkeys(PARAMETER_GROUPS, 0)
    counted: set[int] = set()

    def add(group: str, module: nn.Module):
        for parameter in module.parameters():
            if id(parameter) not in counted:
                counted.add(id(parameter))
                counts[group] += parameter.numel()

    def add_routed(part: str, module: nn.Module):
        """Multiway experts go to `<expert>_<part>`, modules without experts below them to `shared_<part>`."""
        if isinstance(module, BEiT3Multiway):
            for expert_name, expert in module.named_children():
                add(f"{expert_name}_{part}", expert)
        elif any(isinstance(child, BEiT3Multiway) for child in module.modules()):
            for child in module.children():
                add_routed(part, child)
        else:
            add(f"shared_{part}", module)

    for layer in backbone.encoder.layers:
        add_routed("attention", layer.layer_norm1)
        add_routed("attention", layer.self_attn)
        add_routed("ffn", layer.layer_norm2)
        add_routed("ffn", layer.mlp)
    add("embeddings", backbone.embeddings)
    add("other", model)
    return counts


__all__ = ["PARAMETER_GROUPS", "count_parameters_by_group"]
