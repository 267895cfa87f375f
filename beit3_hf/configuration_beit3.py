"""BEiT-3 configuration."""

import math
import os
import shutil

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# Sizes of the released checkpoints (unilm `beit3/modeling_utils.py`) and of the paper's unreleased giant model.
BEIT3_PRESETS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # Paper Table 2 (ViT-giant layout, patch 14), with the paper's Multiway layout: shared attention, V/L FFN
    # experts in every block and a VL FFN expert in the top three. Never released.
    "giant": dict(
        hidden_size=1408,
        num_hidden_layers=40,
        num_attention_heads=16,
        intermediate_size=6144,
        patch_size=14,
        multiway_attention=False,
        num_image_text_layers=3,
    ),
}

#: Fields of the transformers PR's BEiT-3 config (huggingface/transformers#22289 and #39534, model type "beit3" too)
#: that this config does not have: a directory carrying them holds the PR's layout, which `beit3-convert` reads.
PR_CONFIG_FIELDS = ("embed_dim", "layers", "sub_layernorm", "subln", "encoder_normalize_before", "max_source_positions",
                    "img_size")  # fmt: skip

BACKBONE_NECKS = ("simple_pyramid", "fpn")


class BEiT3Config(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a BEiT-3 Multiway Transformer and its task heads.

    Every block runs one softmax attention over the joint sequence `[image CLS, image patches, text tokens]`, while
    projections, layer norms and feed-forward networks come from per-modality experts. The defaults describe the
    released *base* checkpoints; `BEiT3Config.from_preset("large")` gives the large ones.

    Args:
        hidden_size (`int`, defaults to 768): width of the token representations.
        num_hidden_layers (`int`, defaults to 12): number of Multiway blocks.
        num_attention_heads (`int`, defaults to 12): attention heads; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 3072): hidden width of each feed-forward expert.
        hidden_act (`str`, defaults to `"gelu"`): feed-forward activation (exact erf GELU in the release).
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on embeddings and on each block's residual branches.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        activation_dropout (`float`, defaults to 0.0): dropout after the feed-forward activation.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth; layer `i` drops its branches with probability
            `linspace(0, drop_path_rate, num_hidden_layers)[i]`, as in torchscale.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.
        image_size (`int`, defaults to 224): input resolution (square); sets the size of the image position table.
        patch_size (`int`, defaults to 16): side of the square patches.
        num_channels (`int`, defaults to 3): image channels.
        vocab_size (`int`, defaults to 64010): rows of the token embedding (the released tokenizer uses 64002 ids).
        max_text_positions (`int`, defaults to 1022): longest text the model can embed. The release stores a
            1024-row table whose first two rows are fairseq padding that is never read; the converter drops them.
        use_final_layer_norm (`bool`, defaults to `True`): whether a final (Multiway) LayerNorm follows the last
            block. The release calls this `normalize_output`; it is off for the ImageNet and VQA checkpoints.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal (cut at ±1 std, as in unilm)
            used for linear layers.
        multiway_attention (`bool`, defaults to `True`): whether the attention half of each block (its LayerNorm,
            q/k/v/out projections and sub-LN) has an image and a text expert, as in the released "decoupled"
            checkpoints. `False` shares it across modalities, as in the paper.
        num_image_text_layers (`int`, defaults to 0): how many top blocks also have an `image_text` (the paper's
            vision-language) FFN expert, used for every token of image-text input (the paper uses 3; the release has
            none). Image-only and text-only input still use the image and text experts there. Read from the
            earlier name `num_vl_layers` too.
        logit_scale_init_value (`float`, defaults to ln(1/0.07)): initial `logit_scale` of the retrieval head.
        visual_vocab_size (`int`, defaults to 8192): visual tokens the masked-image-modeling head predicts over (the
            codebook of the BEiT v2 tokenizer whose codes are the targets).
        text_loss_weight / image_loss_weight (`float`, default to 1.0): weights of the text and image parts of the
            masked-data-modeling loss, `text_loss_weight * text_loss + image_loss_weight * image_loss` over the
            parts a batch has labels for. Non-negative, not both 0.
        pad_token_id / bos_token_id / eos_token_id / mask_token_id: XLM-R ids of the BEiT-3 tokenizer (1, 0, 2 and
            64001; `mask_token_id` defaults to the last id when the vocabulary is smaller than the release's).
        image_only (`bool`, defaults to `False`): the image path alone, with no token embedding, text position table
            or text experts (timm's vision-only BEiT-3 weights, `beit3-convert` of a timm file); text input raises
            a ValueError. `vocab_size` and `max_text_positions` are then unused.
        out_features / out_indices (`list`, *optional*): the stages [`BEiT3Backbone`] returns (or feeds its neck),
            by name in `stage_names` (`"stem"` = the patch embeddings, `"stage{i}"` = the output of block `i`) or by
            index (negative ones count from the end); the last stage by default. Only read by the backbone.
        backbone_neck (`str`, *optional*): multi-scale neck of [`BEiT3Backbone`]. `"simple_pyramid"` (ViTDet's simple
            feature pyramid, on the one selected stage) or `"fpn"` (BEiT's deconvolution FPN, on four selected
            stages, as transformers' `BeitBackbone(add_fpn=True)`); `None` returns the patch grids themselves.
        backbone_neck_channels (`int`, defaults to 256): output channels of the simple pyramid (the FPN keeps
            `hidden_size`).
        backbone_neck_scales (`tuple[float]`, defaults to `(4.0, 2.0, 1.0, 0.5)`): scales of the simple pyramid's
            levels relative to the patch grid, each one of 4, 2, 1, 0.5 (strides 4/8/16/32 for patch 16).
    """

    model_type = "beit3"
    #: Auto class -> `module.Class` of every head, written into `auto_map` by `save_pretrained` once the class is
    #: registered for remote code (`beit3_hf.remote_code`, run by `import beit3_hf`), so a saved directory loads
    #: with `trust_remote_code=True` without the package.
    remote_auto_map = {}
    #: The module files `remote_auto_map` names, with the files they import (filled with it), copied next to the
    #: config so that the directory's code is complete whichever class saved it.
    remote_code_files = ()

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        if self._auto_class is not None and self.remote_auto_map:
            self.auto_map = {**self.remote_auto_map, **(getattr(self, "auto_map", None) or {})}
            os.makedirs(save_directory, exist_ok=True)
            for file in self.remote_code_files:
                shutil.copyfile(file, os.path.join(save_directory, os.path.basename(file)))
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        vocab_size: int = 64010,
        max_text_positions: int = 1022,
        use_final_layer_norm: bool = True,
        initializer_range: float = 0.02,
        multiway_attention: bool = True,
        num_image_text_layers: int = 0,
        logit_scale_init_value: float = 2.6592600345611572,
        visual_vocab_size: int = 8192,
        text_loss_weight: float = 1.0,
        image_loss_weight: float = 1.0,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        mask_token_id: int | None = None,
        image_only: bool = False,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        backbone_neck: str | None = None,
        backbone_neck_channels: int = 256,
        backbone_neck_scales: tuple[float, ...] | list[float] = (4.0, 2.0, 1.0, 0.5),
        **kwargs,
    ):
        pr_fields = sorted(set(kwargs) & set(PR_CONFIG_FIELDS))
        if pr_fields:
            raise ValueError(
                f"This is the config of the transformers PR's BEiT-3 (huggingface/transformers#39534, fields "
                f"{pr_fields}), which shares the model type 'beit3' but not the layout; loading it would build a "
                "wrong, randomly initialised model. Convert the checkpoint once with `beit3-convert CHECKPOINT_DIR "
                "OUTPUT_DIR` (add `--swap-experts` for files of the 2023 revision, #22289), then load OUTPUT_DIR."
            )
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.max_text_positions = max_text_positions
        self.use_final_layer_norm = use_final_layer_norm
        self.initializer_range = initializer_range
        self.multiway_attention = multiway_attention
        if "num_vl_layers" in kwargs:  # the name before 0.2; configs saved with it still load
            num_image_text_layers = kwargs.pop("num_vl_layers")
        self.num_image_text_layers = num_image_text_layers
        self.logit_scale_init_value = logit_scale_init_value
        self.visual_vocab_size = visual_vocab_size
        self.text_loss_weight = text_loss_weight
        self.image_loss_weight = image_loss_weight
        if mask_token_id is None:  # the release's <mask> (64001) when it fits, else the last id
            mask_token_id = 64001 if vocab_size > 64001 else vocab_size - 1
        self.mask_token_id = mask_token_id
        if not isinstance(image_only, bool):
            raise ValueError(f"`image_only` must be a bool, got {image_only!r}.")
        self.image_only = image_only
        self.backbone_neck = backbone_neck
        self.backbone_neck_channels = backbone_neck_channels
        self.backbone_neck_scales = [float(scale) for scale in backbone_neck_scales]
        kwargs.pop("stage_names", None)  # derived from num_hidden_layers
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self._validate()
        # backbone stages (transformers' BackboneConfigMixin): the patch embeddings, then every block
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, num_hidden_layers + 1)]
        if out_indices is not None:
            num_stages = len(self.stage_names)
            for index in out_indices:
                if isinstance(index, bool) or not isinstance(index, int) or not -num_stages <= index < num_stages:
                    raise ValueError(
                        f"`out_indices` {list(out_indices)!r} has {index!r}, out of range for the {num_stages} stages "
                        f"{self.stage_names} (0 = the patch embeddings, {num_hidden_layers} = the last block)."
                    )
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        self.check_backbone_neck()

    def _validate(self):
        positive = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                    "patch_size", "num_channels", "vocab_size", "max_text_positions", "visual_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        for name in ("hidden_dropout_prob", "attention_dropout", "activation_dropout", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"`layer_norm_eps` must be positive, got {self.layer_norm_eps!r}.")
        if not 0 <= self.num_image_text_layers <= self.num_hidden_layers:
            raise ValueError(
                f"`num_image_text_layers` must be between 0 and `num_hidden_layers` ({self.num_hidden_layers}), "
                f"got {self.num_image_text_layers!r}."
            )
        for name in ("text_loss_weight", "image_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"`{name}` must be a non-negative finite number, got {value!r}.")
        if self.text_loss_weight == 0 and self.image_loss_weight == 0:
            raise ValueError("`text_loss_weight` and `image_loss_weight` are both 0: the loss would be 0.")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"`mask_token_id` ({self.mask_token_id}) must be below `vocab_size` ({self.vocab_size}).")

    def check_backbone_neck(self):
        """ValueError unless the neck options fit each other and the selected stages (`out_features`)."""
        if self.backbone_neck not in (None, *BACKBONE_NECKS):
            raise ValueError(f"`backbone_neck` must be None or one of {BACKBONE_NECKS}, got {self.backbone_neck!r}.")
        if self.backbone_neck == "fpn" and len(self.out_features) != 4:
            raise ValueError(
                f"`backbone_neck='fpn'` needs four stages, got out_features={self.out_features}; e.g. "
                f"`out_indices=[4, 6, 8, 12]` for a 12-block model (BEiT's choice)."
            )
        if self.backbone_neck == "simple_pyramid":
            if len(self.out_features) != 1:
                raise ValueError(
                    f"`backbone_neck='simple_pyramid'` builds every level from one stage, got out_features="
                    f"{self.out_features}; select one (the last block by default)."
                )
            scales = self.backbone_neck_scales
            if not scales or any(scale not in (4.0, 2.0, 1.0, 0.5) for scale in scales) or len(set(scales)) != len(scales):
                raise ValueError(
                    f"`backbone_neck_scales` must be distinct values among 4, 2, 1 and 0.5, got {scales!r}."
                )
        channels = self.backbone_neck_channels
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"`backbone_neck_channels` must be a positive integer, got {channels!r}.")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "BEiT3Config":
        """`BEiT3Config.from_preset("large", image_size=384)`: a named size (base, large, giant) plus overrides."""
        if name not in BEIT3_PRESETS:
            raise ValueError(f"Unknown BEiT-3 preset {name!r}; choose one of {sorted(BEIT3_PRESETS)}.")
        return cls(**{**BEIT3_PRESETS[name], **kwargs})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


__all__ = ["BEiT3Config", "BEIT3_PRESETS"]
