"""PyTorch BEiT v2 visual tokenizer (VQ-KD): the tokenizer whose codes BEiT-3's masked image modeling predicts.

Paper: "BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers" (Peng et al., 2022).
Specification: unilm `beit2/modeling_vqkd.py`, `norm_ema_quantizer.py` and `modeling_finetune.py`; on the same
weights the codes are equal and the reconstructions agree to 1e-5 (fp32).

ViT encoder -> task layer (Linear-Tanh-Linear) -> L2-normalised codebook (nearest code by cosine, EMA updates,
k-means initialisation on the first training batch) -> ViT decoder over the code grid -> task layer to the teacher's
feature width, trained by a cosine loss against the frozen teacher's patch features (passed in as
`teacher_features`), plus the commitment loss.

One pixel convention for the processor and the model: `pixel_values` are RGB in [0, 1] (the processor's
`do_normalize=False` output, i.e. torchvision `ToTensor`). The encoder sees `2x - 1`, which equals the release's
`x * 255 / 127.5 - 1` bit for bit on such pixels; the teacher sees `teacher_pixel_values(pixel_values)` (CLIP or
ImageNet normalisation). Deliberate departures from the release:
- no batch-wide `if x.max() <= 1: x *= 255` guess: pixels outside [0, 1] raise (checked on CPU tensors);
- an uninitialised codebook raises at inference instead of silently k-means-ing the inference batch;
- the code-usage average (`cluster_size`) moves in training only, so inference leaves the model unchanged;
- under torch.distributed the first-batch k-means codebook is broadcast from rank 0, so ranks cannot diverge.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_visual_tokenizer import TEACHER_NORMALIZATION, BEiT3VisualTokenizerConfig
from .modeling_beit3 import _reads_values, eager_attention_forward

logger = logging.get_logger(__name__)

__all__ = [
    "BEiT3VectorQuantizer",
    "BEiT3VisualTokenizer",
    "BEiT3VisualTokenizerOutput",
    "codebook_usage",
]


@dataclass
class BEiT3VisualTokenizerOutput(ModelOutput):
    """
    Output of [`BEiT3VisualTokenizer`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): `quantization_loss + reconstruction_loss`, when
            `teacher_features` are given.
        quantization_loss (`torch.FloatTensor` of shape `()`): commitment loss
            `commitment_weight * MSE(codes.detach(), image_embeds)` (the release's only VQ term).
        reconstruction_loss (`torch.FloatTensor` of shape `()`, *optional*): mean `1 - cos(reconstruction,
            teacher_features)` over all patches, when `teacher_features` are given.
        codebook_indices (`torch.LongTensor` of shape `(batch_size, num_patches)`): the visual tokens.
        perplexity (`torch.FloatTensor` of shape `()`): `exp(entropy)` of the batch's code histogram (1 when one
            code takes everything, `codebook_size` when use is uniform).
        codebook_usage (`torch.FloatTensor` of shape `()`): fraction of the codes used at least once in the batch.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches, codebook_dim)`): the L2-normalised
            encoder vectors that were quantised.
        quantized_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches, codebook_dim)`): their codes,
            with the straight-through gradient of `image_embeds`.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_patches, teacher_hidden_size)`): the
            decoder's prediction of the teacher's patch features.
    """

    loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_indices: torch.LongTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    quantized_embeds: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None


def l2_normalize(tensor: torch.Tensor) -> torch.Tensor:
    return F.normalize(tensor, p=2, dim=-1)


def codebook_usage(indices: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(perplexity, fraction of codes used)` of one batch of code indices (any shape)."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum()
    perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum())
    return perplexity, (counts > 0).float().mean()


def _sample_rows(vectors: torch.Tensor, num: int) -> torch.Tensor:
    """`num` rows of `vectors`: distinct ones when there are enough, else drawn with replacement (as the release)."""
    if vectors.shape[0] >= num:
        return vectors[torch.randperm(vectors.shape[0], device=vectors.device)[:num]]
    return vectors[torch.randint(0, vectors.shape[0], (num,), device=vectors.device)]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(tensor)
    return tensor


def _broadcast_(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.broadcast(tensor, src=0)
    return tensor


# ----------------------------------------------------------------------------------------------------------------
# The quantizer
# ----------------------------------------------------------------------------------------------------------------


class BEiT3VectorQuantizer(nn.Module):
    """
    BEiT v2's L2-normalised EMA codebook (`NormEMAVectorQuantizer`), fp32 and outside autocast.

    Inputs are L2-normalised; the nearest code is the argmin of `|z|^2 + |e|^2 - 2 z.e` over the stored codebook
    (cosine, since trained codes are unit vectors). The codebook is no gradient parameter: in training it starts from
    cosine k-means on the first batch (`initialize_codebook`) and then follows `ema_update`. `cluster_size` is the
    moving average of each code's hits, which `restart_dead_codes` reads.
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        decay: float = 0.99,
        kmeans_iterations: int = 10,
        commitment_weight: float = 1.0,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.decay = decay
        self.kmeans_iterations = kmeans_iterations
        self.commitment_weight = commitment_weight
        self.codebook = nn.Parameter(torch.zeros(codebook_size, codebook_dim), requires_grad=False)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))

    def nearest_codes(self, vectors: torch.Tensor) -> torch.LongTensor:
        """Index of the nearest code of each unit vector `(..., codebook_dim)`, shape `(...)`."""
        if not self.initialized:
            raise ValueError(
                "The codebook was never initialised (`quantizer.initialized` is False): load trained weights, or run "
                "a training step first (the first training batch k-means-initialises it)."
            )
        flat = vectors.reshape(-1, self.codebook_dim).to(self.codebook.dtype)
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True) + self.codebook.pow(2).sum(dim=1) - 2 * flat @ self.codebook.t()
        )
        return distances.argmin(dim=1).view(vectors.shape[:-1])

    @torch.no_grad()
    def initialize_codebook(self, vectors: torch.Tensor):
        """Cosine k-means of unit vectors `(num_vectors, codebook_dim)` becomes the codebook; empty clusters keep
        their previous centre, starting from randomly sampled vectors."""
        vectors = vectors.to(self.codebook.dtype)
        means = _sample_rows(vectors, self.codebook_size)
        for _ in range(self.kmeans_iterations):
            assignment = (vectors @ means.t()).argmax(dim=1)
            counts = torch.bincount(assignment, minlength=self.codebook_size)
            sums = torch.zeros_like(means).index_add_(0, assignment, vectors)
            new_means = l2_normalize(sums / counts.clamp(min=1).unsqueeze(1))
            means = torch.where((counts == 0).unsqueeze(1), means, new_means)
        self.codebook.copy_(means)
        _broadcast_(self.codebook)
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, indices: torch.Tensor):
        """One training step: each hit code moves to `l2norm(decay * code + (1 - decay) * l2norm(mean of its
        vectors))`, codes without hits keep their direction, and `cluster_size` averages the hit counts (summed over
        processes under torch.distributed)."""
        vectors = vectors.to(self.codebook.dtype)
        counts = _all_reduce_(torch.bincount(indices, minlength=self.codebook_size).to(vectors.dtype))
        sums = _all_reduce_(torch.zeros_like(self.codebook).index_add_(0, indices, vectors))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        means = l2_normalize(sums / counts.clamp(min=1).unsqueeze(1))
        means = torch.where((counts == 0).unsqueeze(1), self.codebook, means)
        self.codebook.copy_(l2_normalize(self.decay * self.codebook + (1 - self.decay) * means))

    @torch.no_grad()
    def restart_dead_codes(self, vectors: torch.Tensor, threshold: float) -> int:
        """Replaces every code whose `cluster_size` is below `threshold` by a random one of `vectors` (unit vectors
        `(..., codebook_dim)`, e.g. `output.image_embeds`) and sets its usage to `threshold`; returns how many.

        Not in the release: a hook for training loops that fight codebook collapse."""
        dead = self.cluster_size < threshold
        num_dead = int(dead.sum())
        if num_dead:
            samples = _sample_rows(vectors.reshape(-1, self.codebook_dim).to(self.codebook.dtype), num_dead)
            self.codebook[dead] = l2_normalize(samples)
            self.cluster_size[dead] = threshold
            _broadcast_(self.codebook)
            _broadcast_(self.cluster_size)
        return num_dead

    def forward(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor, torch.Tensor]:
        """Quantises `(..., codebook_dim)` vectors. In training it first k-means-initialises an empty codebook and
        afterwards takes the EMA step. Returns `(unit vectors, codes with straight-through gradient, indices,
        commitment loss)`."""
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            embeds = l2_normalize(vectors.to(self.codebook.dtype))
            flat = embeds.reshape(-1, self.codebook_dim)
            if self.training and not self.initialized:
                logger.info("Initialising the codebook by k-means on the first training batch.")
                self.initialize_codebook(flat.detach())
            indices = self.nearest_codes(flat)
            codes = F.embedding(indices, self.codebook)  # before the EMA step, as in the release
            if self.training:
                self.ema_update(flat.detach(), indices)
            loss = self.commitment_weight * F.mse_loss(codes.detach(), flat)
            codes = flat + (codes - flat).detach()
        return embeds, codes.view_as(embeds), indices.view(embeds.shape[:-1]), loss

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, decay={self.decay}"


# ----------------------------------------------------------------------------------------------------------------
# The ViTs (BEiT v2 `VisionTransformer` as VQ-KD builds it)
# ----------------------------------------------------------------------------------------------------------------


class BEiT3VisualTokenizerAttention(nn.Module):
    """Softmax attention; the query and value projections have biases, the key projection none (BEiT's zero k bias)."""

    def __init__(self, config: BEiT3VisualTokenizerConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_length, _ = hidden_states.shape
        head_shape = (batch_size, seq_length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(head_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(head_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(head_shape).transpose(1, 2)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self, query, key, value, None, is_causal=False, scaling=self.scaling, dropout=0.0
        )
        return self.out_proj(attn_output.reshape(batch_size, seq_length, -1))


class BEiT3VisualTokenizerMLP(nn.Module):
    def __init__(self, config: BEiT3VisualTokenizerConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class BEiT3VisualTokenizerLayer(GradientCheckpointingLayer):
    """Pre-LN block without layer scale: `x + Attn(LN1(x))`, then `x + MLP(LN2(x))`."""

    def __init__(self, config: BEiT3VisualTokenizerConfig, hidden_size: int, num_heads: int, intermediate_size: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = BEiT3VisualTokenizerAttention(config, hidden_size, num_heads)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = BEiT3VisualTokenizerMLP(config, hidden_size, intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class BEiT3VisualTokenizerTransformer(nn.Module):
    """
    The encoder or the decoder: patch embedding, CLS token, absolute positions, blocks, and a final LayerNorm over the
    patch tokens (the CLS output is dropped; the release's mean-pooling ViT with `return_patch_tokens=True`). Both
    position tables are sized for the `config.grid_size` grid; the decoder has patch size 1 over the code grid.
    """

    def __init__(
        self,
        config: BEiT3VisualTokenizerConfig,
        in_channels: int,
        patch_size: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
    ):
        super().__init__()
        self.patch_embedding = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, hidden_size))
        self.layers = nn.ModuleList(
            BEiT3VisualTokenizerLayer(config, hidden_size, num_heads, intermediate_size) for _ in range(num_layers)
        )
        self.layer_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def position_embeddings(self, height: int, width: int) -> torch.Tensor:
        """The table for a `height x width` grid: bicubic with the release's (DINO's) `(size + 0.1) / grid` scale
        factors, CLS row kept."""
        table = self.position_embedding
        grid = math.isqrt(table.shape[1] - 1)
        if (height, width) == (grid, grid):
            return table
        patches = table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(
            patches, scale_factor=((height + 0.1) / grid, (width + 0.1) / grid), mode="bicubic", align_corners=False
        )
        patches = patches.permute(0, 2, 3, 1).reshape(1, height * width, -1)
        return torch.cat([table[:, :1], patches], dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """`(batch, channels, H, W)` -> patch features `(batch, (H / patch) * (W / patch), hidden)`."""
        embeddings = self.patch_embedding(inputs.to(self.patch_embedding.weight.dtype))
        height, width = embeddings.shape[-2:]
        embeddings = embeddings.flatten(2).transpose(1, 2)
        cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
        hidden_states = torch.cat([cls_tokens, embeddings], dim=1) + self.position_embeddings(height, width)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.layer_norm(hidden_states[:, 1:])


class BEiT3VisualTokenizerTaskLayer(nn.Module):
    """Linear -> Tanh -> Linear: encoder features to the code width, or decoder features to the teacher's."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.activation_fn = nn.Tanh()
        self.fc2 = nn.Linear(hidden_size, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class BEiT3VisualTokenizer(PreTrainedModel):
    """
    BEiT v2's VQ-KD visual tokenizer: `get_codebook_indices` gives the visual tokens of [0, 1] pixels; `forward`
    also reconstructs the teacher's features and, given them, returns the training loss.

    Example:

    ```python
    >>> import beit3_hf
    >>> from transformers import AutoImageProcessor, AutoModel
    >>> tokenizer = AutoModel.from_pretrained("path/to/converted/vqkd")  # doctest: +SKIP
    >>> processor = AutoImageProcessor.from_pretrained("path/to/converted/vqkd")  # doctest: +SKIP
    >>> tokens = tokenizer.get_codebook_indices(processor(image, return_tensors="pt").pixel_values)  # doctest: +SKIP
    >>> tokens.shape  # doctest: +SKIP
    torch.Size([1, 196])
    ```
    """

    config: BEiT3VisualTokenizerConfig
    config_class = BEiT3VisualTokenizerConfig
    base_model_prefix = "visual_tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BEiT3VisualTokenizerLayer"]
    _supports_sdpa = True
    # the codebook's moving averages need fp32 even when the rest loads in half precision
    _keep_in_fp32_modules_strict = ["quantizer"]

    def __init__(self, config: BEiT3VisualTokenizerConfig):
        super().__init__(config)
        self.encoder = BEiT3VisualTokenizerTransformer(
            config, config.num_channels, config.patch_size, config.hidden_size, config.num_hidden_layers,
            config.num_attention_heads, config.intermediate_size,
        )  # fmt: skip
        self.encoder_task_layer = BEiT3VisualTokenizerTaskLayer(config.hidden_size, config.codebook_dim)
        self.quantizer = BEiT3VectorQuantizer(
            config.codebook_size, config.codebook_dim, config.ema_decay, config.kmeans_iterations,
            config.commitment_weight,
        )  # fmt: skip
        self.decoder = BEiT3VisualTokenizerTransformer(
            config, config.codebook_dim, 1, config.decoder_hidden_size, config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads, config.decoder_intermediate_size,
        )  # fmt: skip
        self.decoder_task_layer = BEiT3VisualTokenizerTaskLayer(config.decoder_hidden_size, config.teacher_hidden_size)
        self.post_init()

    def _init_weights(self, module: nn.Module):
        """The release's init: timm truncated normal for linear layers and tokens, PyTorch's default for the patch
        convolutions, residual projections shrunk with depth (BEiT's `fix_init_weight`), an empty codebook."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BEiT3VisualTokenizerTransformer):  # after its children (they come first)
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embedding, std=std)
            for depth, layer in enumerate(module.layers, start=1):
                init.trunc_normal_(layer.attention.out_proj.weight, std=std / math.sqrt(2.0 * depth))
                init.trunc_normal_(layer.mlp.fc2.weight, std=std / math.sqrt(2.0 * depth))
        elif isinstance(module, BEiT3VectorQuantizer):
            init.zeros_(module.codebook)
            init.zeros_(module.initialized)
            init.zeros_(module.cluster_size)

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"`pixel_values` must have shape (batch_size, channels, height, width), got {shape}.")
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` has {num_channels} channels, but the tokenizer takes `num_channels` = "
                f"{self.config.num_channels} (shape {tuple(pixel_values.shape)})."
            )
        if batch_size == 0 or height == 0 or width == 0:
            raise ValueError(f"`pixel_values` is empty: shape {tuple(pixel_values.shape)}.")
        patch_size = self.config.patch_size
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"Input image size ({height}x{width}) must be a multiple of the patch size ({patch_size})."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(f"`pixel_values` must be floating point pixels in [0, 1], got dtype {pixel_values.dtype}.")
        if _reads_values(pixel_values):
            low, high = (value.item() for value in torch.aminmax(pixel_values))
            if not (0 <= low and high <= 1):
                raise ValueError(
                    f"`pixel_values` must lie in [0, 1] (the tokenizer's image processor output, do_normalize=False), "
                    f"got values in [{low}, {high}]."
                )

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[0, 1] pixels -> encoder task-layer vectors `(batch, num_patches, codebook_dim)` and the patch grid."""
        self._check_pixel_values(pixel_values)
        features = self.encoder(pixel_values * 2 - 1)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        with torch.autocast(device_type=features.device.type, enabled=False):  # fp32, as the release
            return self.encoder_task_layer(features.to(self.encoder_task_layer.fc2.weight.dtype)), grid

    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Codes `(batch, height * width, codebook_dim)` on a `grid` -> predicted teacher features."""
        batch_size, _, codebook_dim = codes.shape
        code_map = codes.transpose(1, 2).reshape(batch_size, codebook_dim, *grid)
        return self.decoder_task_layer(self.decoder(code_map))

    def teacher_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels in the teacher's normalisation (CLIP or ImageNet, `config.teacher`), as the release's
        scaling layer gives them from the tokenizer's input."""
        self._check_pixel_values(pixel_values)
        mean, std = TEACHER_NORMALIZATION[self.config.teacher]
        mean, std = (pixel_values.new_tensor(values).view(1, -1, 1, 1) for values in (mean, std))
        return (pixel_values - mean) / std

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Visual tokens `(batch, num_patches)` of [0, 1] pixels; changes nothing, in either mode."""
        return self.quantizer.nearest_codes(l2_normalize(self.encode(pixel_values)[0]))

    def _check_teacher_features(self, teacher_features: torch.Tensor, reconstruction: torch.Tensor):
        if teacher_features.shape[-1] != self.config.teacher_hidden_size:
            raise ValueError(
                f"`teacher_features` are {teacher_features.shape[-1]} wide, but the decoder predicts "
                f"`teacher_hidden_size` = {self.config.teacher_hidden_size} features."
            )
        if teacher_features.shape != reconstruction.shape:
            raise ValueError(
                f"`teacher_features` must have shape (batch_size, num_patches, teacher_hidden_size) = "
                f"{tuple(reconstruction.shape)} (the teacher's patch tokens, no CLS), got "
                f"{tuple(teacher_features.shape)}."
            )

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, teacher_features: torch.Tensor | None = None
    ) -> BEiT3VisualTokenizerOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                RGB pixels in [0, 1] (the tokenizer's image processor output). Height and width are multiples of
                `patch_size`; sizes other than `image_size` interpolate the position tables.
            teacher_features (`torch.FloatTensor` of shape `(batch_size, num_patches, teacher_hidden_size)`):
                *Optional.* The frozen teacher's patch features of the same images (CLIP: `ln_post(tokens)[:, 1:]
                @ proj` on `teacher_pixel_values(pixel_values)`); given, the output has the reconstruction and total
                losses.

        In training mode the call also moves the codebook (k-means on the first batch, then one EMA step).
        """
        features, grid = self.encode(pixel_values)
        image_embeds, codes, indices, quantization_loss = self.quantizer(features)
        reconstruction = self.decode(codes, grid)
        loss = reconstruction_loss = None
        if teacher_features is not None:
            self._check_teacher_features(teacher_features, reconstruction)
            target = l2_normalize(teacher_features.detach().to(reconstruction.dtype))
            reconstruction_loss = (1 - (l2_normalize(reconstruction) * target).sum(dim=-1)).mean()
            loss = quantization_loss + reconstruction_loss
        perplexity, usage = codebook_usage(indices, self.config.codebook_size)
        return BEiT3VisualTokenizerOutput(
            loss=loss,
            quantization_loss=quantization_loss,
            reconstruction_loss=reconstruction_loss,
            codebook_indices=indices,
            perplexity=perplexity,
            codebook_usage=usage,
            image_embeds=image_embeds,
            quantized_embeds=codes,
            reconstruction=reconstruction,
        )
