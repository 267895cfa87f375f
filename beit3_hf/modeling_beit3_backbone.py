"""BEiT-3 as a transformers backbone (`AutoBackbone`) for detection and segmentation.

[`BEiT3Backbone`] runs the image-only path of [`BEiT3Model`] (patch embedding, CLS, the absolute image position
table resized to the input grid, the image experts of every block) and returns the patch states of the selected
stages as `(batch_size, channels, height / patch, width / patch)` maps, CLS dropped. The text experts, text
embeddings, the mask token and the final LayerNorm are not part of it; loading a converted checkpoint skips them (and
any task head) and says so.

An optional neck (`config.backbone_neck`) turns the single-scale ViT into a pyramid of strides 4/8/16/32 (for patch
16):

* `"simple_pyramid"`: ViTDet's simple feature pyramid (Li et al., 2022; detectron2 `SimpleFeaturePyramid`) on one
  stage, the last block by default: deconvolutions up, identity, max-pooling down, then a 1x1 and a 3x3 convolution
  with channels-first LayerNorms to `backbone_neck_channels` channels. The BEiT-3 paper follows ViTDet for COCO; it
  uses every block and only LayerNorms, so it trains the same with the tiny batches of a CPU and inside detectors
  that freeze the backbone's BatchNorms (RT-DETR's `freeze_backbone_batch_norms`).
* `"fpn"`: BEiT's deconvolution FPN, transformers' own `BeitFPNNeck` (the neck of `BeitBackbone(add_fpn=True)`, as in
  unilm's BEiT segmentation): four stages at scales 4, 2, 1, 1/2, `hidden_size` channels, one BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput
from transformers.models.beit.modeling_beit import BeitFPNNeck
from transformers.utils import can_return_tuple, logging

from .configuration_beit3 import BEiT3Config
from .modeling_beit3 import BEiT3Embeddings, BEiT3Model, BEiT3Multiway, BEiT3PreTrainedModel

logger = logging.get_logger(__name__)


class BEiT3LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a `(batch, channels, height, width)` map (detectron2's `LayerNorm`)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BEiT3SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: one level per `config.backbone_neck_scales` entry, from one patch grid."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        dim, channels, eps = config.hidden_size, config.backbone_neck_channels, config.layer_norm_eps
        if dim % 4:
            raise ValueError(f"The simple pyramid divides `hidden_size` by 4 at scale 4; got hidden_size={dim}.")
        self.scales = list(config.backbone_neck_scales)
        self.levels = nn.ModuleList()
        for scale in self.scales:
            if scale == 4.0:
                layers = [
                    nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                    BEiT3LayerNorm2d(dim // 2, eps=eps),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
                ]
                level_dim = dim // 4
            elif scale == 2.0:
                layers, level_dim = [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
            elif scale == 1.0:
                layers, level_dim = [], dim
            else:  # 0.5, checked by the config
                layers, level_dim = [nn.MaxPool2d(kernel_size=2, stride=2)], dim
            layers += [
                nn.Conv2d(level_dim, channels, kernel_size=1, bias=False),
                BEiT3LayerNorm2d(channels, eps=eps),
                nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                BEiT3LayerNorm2d(channels, eps=eps),
            ]
            self.levels.append(nn.Sequential(*layers))

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        (feature_map,) = feature_maps
        return tuple(level(feature_map) for level in self.levels)


class BEiT3ImageModel(BEiT3Model):
    """[`BEiT3Model`] without what image-only input never runs: the text experts, the text tables, the mask token
    and the final LayerNorm. Its weights keep `BEiT3Model`'s names, so converted checkpoints load into it."""

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        for module in self.modules():
            if isinstance(module, BEiT3Multiway):
                module.text = None
                if module.has_image_text:
                    del module.image_text
                    module.has_image_text = False
        embeddings = self.embeddings
        embeddings.token_embedding = embeddings.text_position_embedding = embeddings.mask_token = None
        self.final_layer_norm = None

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def _init_weights(self, module: nn.Module):
        if isinstance(module, BEiT3Embeddings):  # the image tables only
            std = self.config.initializer_range
            for weight in (module.image_position_embedding.weight, module.cls_token):
                init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
        else:
            super()._init_weights(module)


class BEiT3Backbone(BackboneMixin, BEiT3PreTrainedModel):
    """
    BEiT-3's image path as a backbone: `feature_maps` of the stages in `config.out_features` (the patch embeddings
    `"stem"`, or block outputs `"stage1"` ... `"stage{num_hidden_layers}"`, before the final LayerNorm), optionally
    through a multi-scale neck (`config.backbone_neck`). Any height and width that are multiples of the patch size
    work; the position table is resized to the grid unless `interpolate_pos_encoding=False`.

    Example:

    ```python
    >>> import torch
    >>> from beit3_hf import BEiT3Backbone
    >>> backbone = BEiT3Backbone.from_pretrained("path/to/converted/beit3", backbone_neck="simple_pyramid")
    >>> [tuple(m.shape) for m in backbone(torch.randn(1, 3, 512, 640)).feature_maps]  # strides 4, 8, 16, 32
    [(1, 256, 128, 160), (1, 256, 64, 80), (1, 256, 32, 40), (1, 256, 16, 20)]
    ```
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # the parts `BEiT3ImageModel` lacks: skipped without a warning (task heads are still reported)
    _keys_to_ignore_on_load_unexpected = [
        r"\.text\.",
        r"\.image_text\.",
        r"embeddings\.(token_embedding|text_position_embedding|mask_token)",
        r"final_layer_norm\.",
    ]

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        config.check_backbone_neck()
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.beit3 = BEiT3ImageModel(config)
        if config.backbone_neck == "simple_pyramid":
            self.neck = BEiT3SimpleFeaturePyramid(config)
        elif config.backbone_neck == "fpn":
            self.neck = BeitFPNNeck(config)
        else:
            self.neck = None
        self.post_init()

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map (after the neck)."""
        if self.config.backbone_neck == "simple_pyramid":
            return [self.config.backbone_neck_channels] * len(self.config.backbone_neck_scales)
        return [self.config.hidden_size] * len(self.out_features)

    @property
    def strides(self) -> list[int | float]:
        """Input pixels per feature-map cell of each returned map."""
        patch = self.config.patch_size
        if self.config.backbone_neck == "simple_pyramid":
            scales = self.config.backbone_neck_scales
        elif self.config.backbone_neck == "fpn":
            scales = (4.0, 2.0, 1.0, 0.5)
        else:
            scales = (1.0,) * len(self.out_features)
        return [int(patch / scale) if (patch / scale).is_integer() else patch / scale for scale in scales]

    def get_input_embeddings(self) -> nn.Module:
        return self.beit3.embeddings.patch_embedding

    def _init_weights(self, module: nn.Module):
        if isinstance(module, (nn.ConvTranspose2d, nn.BatchNorm2d)):  # the necks' layers BEiT-3 itself lacks
            PreTrainedModel._init_weights(self, module)
        else:
            super()._init_weights(module)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        Loads the image path of any converted BEiT-3 checkpoint (the bare model or one with a task head). The text
        path and the final LayerNorm are skipped silently; any other weight it has no place for (a task head) is
        named in transformers' load report and in one log line. Config keywords (e.g. `backbone_neck="fpn"`,
        `out_indices=[4, 6, 8, 12]`) override the saved config. (transformers 5.24's `AutoBackbone.from_pretrained`
        asks the Hub whether a local path is a repository, so load local directories with this class.)
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        skipped = sorted({key.split(".")[0] for key in loading_info.get("unexpected_keys", ())})
        if skipped:
            logger.warning(
                f"BEiT3Backbone loaded the image path of {pretrained_model_name_or_path} and skipped its task-head "
                f"weights: {', '.join(skipped)}."
            )
        return (model, loading_info) if output_loading_info else model

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool = True,
        **kwargs,
    ) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images; `height` and `width` must be multiples of `config.patch_size`.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `True`):
                Resize the image position table to the input grid (bicubic, as [`BEiT3Model`] does). `False` requires
                inputs of `config.image_size`.

        Returns `BackboneOutput` with `feature_maps` (one `(batch_size, channels, h, w)` map per selected stage, or
        per neck level), and `hidden_states` (embeddings and every block, CLS first) with `output_hidden_states=True`.
        """
        if pixel_values is None or pixel_values.ndim != 4:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"`pixel_values` must have shape (batch_size, channels, height, width), got {shape}.")
        batch_size, _, height, width = pixel_values.shape
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"BEiT3Backbone needs height and width that are multiples of the patch size ({patch}), got "
                f"{height}x{width}; pad or resize the images (e.g. an image processor's `pad_size`)."
            )
        outputs = self.beit3(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=True,
            output_attentions=output_attentions,
        )
        grid = (height // patch, width // patch)
        feature_maps = tuple(
            hidden_state[:, 1:].transpose(1, 2).reshape(batch_size, -1, *grid)
            for stage, hidden_state in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        if self.neck is not None:
            feature_maps = tuple(self.neck(feature_maps))
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["BEiT3Backbone", "BEiT3ImageModel", "BEiT3LayerNorm2d", "BEiT3SimpleFeaturePyramid"]
