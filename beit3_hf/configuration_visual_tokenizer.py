"""Configuration of the BEiT v2 visual tokenizer (VQ-KD), whose codes are the targets of BEiT-3's masked image modeling.

The defaults describe the released `vqkd_encoder_base_decoder_3x768x12_clip`: a ViT-B/16 encoder at 224px, an
8192 x 32 codebook, a 3-layer decoder and the 512-wide CLIP ViT-B/16 teacher. `visual_tokenizer_processor_kwargs`
gives the image-processor fields of the release's evaluation transform for such a model.
"""

from transformers import PreTrainedConfig

__all__ = ["BEiT3VisualTokenizerConfig", "TEACHER_NORMALIZATION", "visual_tokenizer_processor_kwargs"]

#: Per-channel (mean, std) the teacher sees (unilm `ScalingLayerForClip` / `ScalingLayerForIM`).
TEACHER_NORMALIZATION = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "dino": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class BEiT3VisualTokenizerConfig(PreTrainedConfig):
    r"""
    Configuration of [`BEiT3VisualTokenizer`]: ViT encoder -> task layer -> L2-normalised codebook -> ViT decoder
    over the code grid -> task layer to the teacher's feature width.

    Args:
        image_size (`int`, defaults to 224): training resolution; fixes both position tables (other multiples of
            `patch_size` are interpolated, as in the release).
        patch_size (`int`, defaults to 16): encoder patch side; the decoder runs over the `image_size // patch_size`
            code grid with patch size 1.
        num_channels (`int`, defaults to 3): image channels.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: the encoder ViT (768, 12, 12, 3072).
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            the decoder ViT (768, 3, 12, 3072; the `1x768x12` releases have one layer).
        codebook_size (`int`, defaults to 8192): number of codes (visual tokens).
        codebook_dim (`int`, defaults to 32): width of a code.
        teacher (`str`, defaults to `"clip"`): `"clip"` or `"dino"`; selects the teacher's input normalisation
            (`TEACHER_NORMALIZATION`, used by `BEiT3VisualTokenizer.teacher_pixel_values`).
        teacher_hidden_size (`int`, defaults to 512): width of the teacher's patch features the decoder regresses
            (CLIP ViT-B/16 after its projection: 512; DINO ViT-B: 768).
        hidden_act (`str`, defaults to `"gelu"`): MLP activation of both ViTs (exact GELU).
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm.
        initializer_range (`float`, defaults to 0.02): std of the (timm) truncated normal init of linear layers.
        ema_decay (`float`, defaults to 0.99): decay of the codebook and code-usage moving averages.
        kmeans_iterations (`int`, defaults to 10): cosine k-means iterations of the first-batch codebook init.
        commitment_weight (`float`, defaults to 1.0): weight of `quantization_loss` (the release's `beta`).
    """

    model_type = "beit3_visual_tokenizer"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 3
    decoder_num_attention_heads: int = 12
    decoder_intermediate_size: int = 3072
    codebook_size: int = 8192
    codebook_dim: int = 32
    teacher: str = "clip"
    teacher_hidden_size: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    ema_decay: float = 0.99
    kmeans_iterations: int = 10
    commitment_weight: float = 1.0

    def __post_init__(self, **kwargs):
        positive = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "intermediate_size", "decoder_hidden_size", "decoder_num_hidden_layers",
                    "decoder_num_attention_heads", "decoder_intermediate_size", "codebook_size", "codebook_dim",
                    "teacher_hidden_size", "kmeans_iterations")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for width, heads in (("hidden_size", "num_attention_heads"),
                             ("decoder_hidden_size", "decoder_num_attention_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"`{width}` ({getattr(self, width)}) must be divisible by `{heads}` ({getattr(self, heads)})."
                )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.teacher not in TEACHER_NORMALIZATION:
            raise ValueError(f"`teacher` must be one of {sorted(TEACHER_NORMALIZATION)}, got {self.teacher!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"`layer_norm_eps` must be positive, got {self.layer_norm_eps!r}.")
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # transformers' `custom_object_save` takes every class whose name holds "Tokenizer" for a text tokenizer and
        # writes a [slow, fast] pair into `auto_map`; a config's and a model's entries are single references
        if isinstance(output.get("auto_map"), dict):
            output["auto_map"] = {
                auto_class: reference[0] if isinstance(reference, (list, tuple)) else reference
                for auto_class, reference in output["auto_map"].items()
            }
        return output

    @property
    def grid_size(self) -> int:
        """Side of the code grid (and of the encoder's patch grid) at `image_size`."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def visual_tokenizer_processor_kwargs(image_size: int = 224) -> dict:
    """`BEiT3ImageProcessor` fields of the release's evaluation transform, ending in [0, 1] pixels (no normalisation).

    unilm `build_vqkd_dataset(is_train=False)` and `test_get_code.py`: bicubic `Resize(int(S / crop_pct))` of the
    shorter side (crop_pct = 0.875 below 384px, else 1), `CenterCrop(S)`, `ToTensor()`. The tokenizer maps these
    pixels to [-1, 1] itself and the teacher's normalisation is `BEiT3VisualTokenizer.teacher_pixel_values`.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    crop_pct = 224 / 256 if image_size < 384 else 1.0
    return dict(
        do_resize=True,
        size={"shortest_edge": int(image_size / crop_pct)},
        resample=3,  # PIL bicubic, torchvision `interpolation=3`
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=False,
    )
