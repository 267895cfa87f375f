"""PyTorch BEiT-3: a Multiway Transformer for images, text and image-text pairs.

Paper: "Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks" (Wang et al., 2022).
Specification: torchscale 0.3.0 (`model/BEiT3.py`, `architecture/encoder.py`, `component/*`) for the backbone and
Microsoft unilm `beit3/modeling_finetune.py` for the heads; on the same weights the outputs are equal (fp32, 1e-4).

One sequence, image first: `[image CLS, image patches..., text tokens...]`. Every block runs a single softmax
attention over the whole sequence; each token's LayerNorms, projections and feed-forward network come from the
expert of its modality (`BEiT3Multiway`). Image-only input uses the image experts everywhere, text-only input the
text experts. Conventions kept from the release, each said once where it happens:
- the text `attention_mask` is 1 for real tokens (torchscale's padding mask is the opposite);
- GELU and softmax run in fp32 in eager mode;
- fairseq's position offset (tables start at row 2) is dropped by the converter, so positions start at 0.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.integrations import deepspeed_config
from transformers.loss.loss_utils import ForSequenceClassificationLoss
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_beit3 import BEiT3Config

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BEiT3ModelOutput(ModelOutput):
    """
    Output of [`BEiT3Model`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens + text_length, hidden_size)`):
            Final hidden states of the joint sequence (image CLS, image patches, then text tokens).
        image_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`, *optional*):
            The image part of `last_hidden_state` (CLS first); `None` without image input.
        text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`, *optional*):
            The text part of `last_hidden_state`; `None` without text input.
        cache (`Cache`, *optional*): key/value cache, when one was passed in.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): embeddings plus the output of every block
            (before the final LayerNorm), with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): attention probabilities of every block,
            `(batch_size, num_heads, query_length, key_length)`, with `output_attentions=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BEiT3ImageTextRetrievalOutput(ModelOutput):
    """
    Output of [`BEiT3ForImageTextRetrieval`] (the layout of `CLIPOutput`).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): symmetric contrastive (InfoNCE) loss, with
            `return_loss=True` and both modalities given.
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`): scaled cosine
            similarities `logit_scale.exp() * image_embeds @ text_embeds.T`.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`): the transpose.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): L2-normalised image embeddings.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): L2-normalised text embeddings.
        image_model_output / text_model_output ([`BaseModelOutputWithPooling`], *optional*): the image-only and
            text-only passes (`pooler_output` = the embedding; `hidden_states` / `attentions` on request).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in super().to_tuple())


@dataclass
class BEiT3CaptioningOutput(ModelOutput):
    """
    Output of [`BEiT3ForCaptioning`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy over the positions whose `labels`
            are not -100.
        logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`): vocabulary scores for
            every text position.
        cache (`Cache`, *optional*): key/value cache for generation.
        hidden_states, attentions: as in [`BEiT3ModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BEiT3ForMaskedDataModelingOutput(ModelOutput):
    """
    Output of [`BEiT3ForMaskedDataModeling`]. Logits cover the masked positions only, in the order of
    `bool_masked_pos.nonzero()` (image) and of the text positions predicted (`text_labels != -100`), batch first.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): `text_loss_weight * text_loss + image_loss_weight *
            image_loss` over the parts whose labels were given.
        text_loss (`torch.FloatTensor` of shape `()`, *optional*): mean cross-entropy over the labelled text tokens
            of the batch (0 when none is labelled), with `text_labels`.
        image_loss (`torch.FloatTensor` of shape `()`, *optional*): mean cross-entropy over the labelled masked
            patches of the batch, with `image_labels`.
        text_logits (`torch.FloatTensor` of shape `(num_masked_text_tokens, vocab_size)`, *optional*): vocabulary
            scores of the predicted text positions, with `input_ids`.
        image_logits (`torch.FloatTensor` of shape `(num_masked_patches, visual_vocab_size)`, *optional*):
            visual-token scores of the masked patches, with `bool_masked_pos`.
        text_accuracy / image_accuracy (`torch.FloatTensor` of shape `()`, *optional*): share of the labelled
            positions whose argmax is the label (0 when none is labelled), with the labels.
        hidden_states, attentions: as in [`BEiT3ModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    image_loss: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    image_logits: torch.FloatTensor | None = None
    text_accuracy: torch.FloatTensor | None = None
    image_accuracy: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# The Multiway primitive
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BEiT3ModalitySplit:
    """
    How the positions computed in one forward divide between the experts. The first `num_image_tokens` are image
    tokens, the remaining `num_text_tokens` text tokens. `image_text` says the input is an image-text pair, which
    selects the `image_text` expert in the blocks that have one: true whenever text meets an image, including text
    decoded against an image that is already in the key/value cache (the new positions are then all text).
    """

    num_image_tokens: int
    num_text_tokens: int
    image_text: bool

    @classmethod
    def of(cls, num_image_tokens: int, num_text_tokens: int, image_in_cache: bool = False) -> "BEiT3ModalitySplit":
        image_text = num_text_tokens > 0 and (num_image_tokens > 0 or image_in_cache)
        return cls(num_image_tokens, num_text_tokens, image_text)


class BEiT3Multiway(nn.Module):
    """
    Sends image tokens to `self.image` and text tokens to `self.text` (the image tokens come first), or every token
    to `self.image_text` (the paper's vision-language expert of the top blocks) when the input is image-text and the
    module has one. An expert is never called on an empty slice (4-bit bitsandbytes layers crash on those).
    """

    def __init__(self, image: nn.Module, text: nn.Module, image_text: nn.Module | None = None):
        super().__init__()
        self.image = image
        self.text = text
        self.has_image_text = image_text is not None
        if image_text is not None:
            self.image_text = image_text

    def forward(self, hidden_states: torch.Tensor, split: BEiT3ModalitySplit) -> torch.Tensor:
        if split.image_text and self.has_image_text:
            return self.image_text(hidden_states)
        if split.num_text_tokens == 0:
            return self.image(hidden_states)
        if self.text is None:  # an image-only model (`config.image_only`); BEiT3Model refuses text before this
            raise ValueError("This BEiT-3 model is image-only (no text experts); it cannot take text tokens.")
        if split.num_image_tokens == 0:
            return self.text(hidden_states)
        image_states, text_states = hidden_states.split([split.num_image_tokens, split.num_text_tokens], dim=1)
        return torch.cat([self.image(image_states), self.text(text_states)], dim=1)


def multiway(make: Callable[[], nn.Module], *, experts: bool = True, image_text: bool = False) -> nn.Module:
    """A `BEiT3Multiway` of fresh `make()` modules, or one shared `make()` module when `experts=False`."""
    if not experts:
        return make()
    return BEiT3Multiway(make(), make(), make() if image_text else None)


def route(module: nn.Module, hidden_states: torch.Tensor, split: BEiT3ModalitySplit) -> torch.Tensor:
    """Applies a Multiway module with its routing, or a shared module to every token."""
    if isinstance(module, BEiT3Multiway):
        return module(hidden_states, split)
    return module(hidden_states)


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def _reads_values(tensor: torch.Tensor) -> bool:
    """
    Checks of tensor *values* (token ids, class labels) copy a number to the host, which on an accelerator waits for
    the device. They run on CPU tensors, outside torch.compile; on a GPU an out-of-range id still ends in the
    embedding's device-side assert, so validate there in the data pipeline (the processor's ids always fit its
    tokenizer; check `len(tokenizer) <= config.vocab_size` once).
    """
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def check_index_range(name: str, tensor: torch.Tensor, limit: int, limit_name: str, ignore_index: int | None = None):
    """ValueError naming the first offending value when `tensor` holds an index outside `[0, limit)`."""
    if not _reads_values(tensor):
        return
    values = tensor if ignore_index is None else tensor[tensor != ignore_index]
    if values.numel() == 0:
        return
    low, high = values.min().item(), values.max().item()
    if low < 0 or high >= limit:
        allowed = f"[0, {limit})" + ("" if ignore_index is None else f" or {ignore_index} (ignored)")
        raise ValueError(
            f"`{name}` contains {low if low < 0 else high}, outside {allowed}: `{limit_name}` is {limit}."
        )


def check_class_labels(labels: torch.Tensor, logits: torch.Tensor, config: BEiT3Config):
    """Labels that `ForSequenceClassificationLoss` can use for `config.problem_type` (inferred as it infers it)."""
    problem_type = config.problem_type
    if problem_type is None:
        if config.num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "single_label_classification":
        if labels.dtype not in (torch.long, torch.int):
            raise ValueError(f"Single-label classification takes integer class ids as `labels`, got {labels.dtype}.")
        if labels.numel() != logits.shape[0]:
            raise ValueError(
                f"Class `labels` must hold one class id per example (batch_size = {logits.shape[0]}), "
                f"got shape {tuple(labels.shape)}."
            )
        check_index_range("labels", labels, config.num_labels, "num_labels", ignore_index=-100)
    elif not labels.is_floating_point():
        raise ValueError(f"{problem_type} takes float `labels`, got {labels.dtype}.")
    elif config.num_labels > 1 and labels.shape != logits.shape:
        raise ValueError(
            f"{problem_type} `labels` must have shape (batch_size, num_labels) = {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}."
        )


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------


class BEiT3Embeddings(nn.Module):
    """Patch and token embeddings, each modality with its own position table (image row 0 is the CLS token)."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.image_position_embedding = nn.Embedding(config.num_patches + 1, config.hidden_size)
        if config.image_only:  # the image path alone (timm's weights): no text tables
            self.token_embedding = self.text_position_embedding = None
        else:
            self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
            self.text_position_embedding = nn.Embedding(config.max_text_positions, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_image_positions(self, height: int, width: int) -> torch.Tensor:
        """The image position table resized (bicubic, CLS row kept) to a `height x width` patch grid."""
        table = self.image_position_embedding.weight
        grid = int(math.sqrt(table.shape[0] - 1))
        if (height, width) == (grid, grid):
            return table
        cls_position, patch_positions = table[:1], table[1:]
        patch_positions = patch_positions.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_positions = F.interpolate(
            patch_positions.float(), size=(height, width), mode="bicubic", align_corners=False
        ).to(table.dtype)
        patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(height * width, -1)
        return torch.cat([cls_position, patch_positions], dim=0)

    def embed_image(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` has {num_channels} channels, but the model takes `num_channels` = "
                f"{self.config.num_channels} (shape {tuple(pixel_values.shape)}); convert the images to RGB, e.g. "
                "with the BEiT3ImageProcessor."
            )
        if pixel_values.is_complex():
            raise ValueError(f"`pixel_values` must be real numbers, got dtype {pixel_values.dtype}.")
        if batch_size == 0 or height == 0 or width == 0:
            raise ValueError(f"`pixel_values` is empty: shape {tuple(pixel_values.shape)}.")
        if not interpolate_pos_encoding and (height, width) != (self.config.image_size, self.config.image_size):
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model's image size "
                f"({self.config.image_size}x{self.config.image_size}). Resize the images, or pass "
                "`interpolate_pos_encoding=True` to resize the image position embeddings."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Input image size ({height}x{width}) must be a multiple of the patch size ({self.patch_size})."
            )
        weight = self.patch_embedding.weight
        embeddings = self.patch_embedding(pixel_values.to(dtype=weight.dtype))
        grid_height, grid_width = embeddings.shape[-2:]
        embeddings = embeddings.flatten(2).transpose(1, 2)  # (batch, num_patches, hidden)
        num_patches = embeddings.shape[1]

        if bool_masked_pos is not None:
            if bool_masked_pos.dtype != torch.bool:
                raise ValueError(
                    f"`bool_masked_pos` must be a bool tensor (True = masked), got dtype {bool_masked_pos.dtype}; "
                    "convert it with `.bool()`."
                )
            if bool_masked_pos.shape != (batch_size, num_patches):
                raise ValueError(
                    f"`bool_masked_pos` must have shape (batch_size, num_patches) = {(batch_size, num_patches)}, "
                    f"got {tuple(bool_masked_pos.shape)}."
                )
            mask = bool_masked_pos.unsqueeze(-1).type_as(embeddings)
            embeddings = embeddings * (1 - mask) + self.mask_token.to(embeddings.dtype) * mask

        cls_tokens = self.cls_token.to(embeddings.dtype).expand(batch_size, -1, -1)
        embeddings = torch.cat([cls_tokens, embeddings], dim=1)
        return embeddings + self.interpolate_image_positions(grid_height, grid_width)

    def embed_text(self, input_ids: torch.Tensor, position_offset: int = 0) -> torch.Tensor:
        if input_ids.dtype not in (torch.long, torch.int):
            raise ValueError(f"`input_ids` must hold integer token ids (int64 or int32), got dtype {input_ids.dtype}.")
        batch_size, text_length = input_ids.shape
        if batch_size == 0 or text_length == 0:
            raise ValueError(
                f"`input_ids` is empty: shape {tuple(input_ids.shape)}. Give at least one token (the processor adds "
                "`<s>` and `</s>`), or leave `input_ids` out for image-only input."
            )
        check_index_range("input_ids", input_ids, self.config.vocab_size, "vocab_size")
        if position_offset + text_length > self.config.max_text_positions:
            raise ValueError(
                f"Text of length {position_offset + text_length} is longer than the text position table "
                f"(`max_text_positions` = {self.config.max_text_positions}); truncate the input."
            )
        position_ids = torch.arange(position_offset, position_offset + text_length, device=input_ids.device)
        return self.token_embedding(input_ids) + self.text_position_embedding(position_ids)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        text_position_offset: int = 0,
    ) -> torch.Tensor:
        """`[image CLS, patches..., text...]`, either part optional; padding text is zeroed, as in torchscale."""
        parts = []
        if pixel_values is not None:
            parts.append(self.embed_image(pixel_values, bool_masked_pos, interpolate_pos_encoding))
        if input_ids is not None:
            text = self.embed_text(input_ids, text_position_offset)
            if attention_mask is not None:  # after adding positions, as torchscale does
                text = text * attention_mask.unsqueeze(-1).to(text.dtype)
            parts.append(text.to(parts[0].dtype) if parts else text)
        return self.dropout(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])


# ----------------------------------------------------------------------------------------------------------------
# Attention, feed-forward, block
# ----------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # an SDPA-style mask (True = attend), e.g. with output_attentions
            attention_mask = torch.zeros_like(attn_weights).masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class BEiT3Attention(nn.Module):
    """One softmax attention over the joint sequence; projections and the sub-LN (Magneto) are Multiway."""

    def __init__(self, config: BEiT3Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False  # the captioning mask is passed explicitly; never let a backend assume causality

        def linear():
            return nn.Linear(config.hidden_size, config.hidden_size)

        experts = config.multiway_attention
        self.q_proj = multiway(linear, experts=experts)
        self.k_proj = multiway(linear, experts=experts)
        self.v_proj = multiway(linear, experts=experts)
        self.sub_layer_norm = multiway(lambda: nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps), experts=experts)
        self.out_proj = multiway(linear, experts=experts)

    def forward(
        self,
        hidden_states: torch.Tensor,
        split: BEiT3ModalitySplit,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_length, _ = hidden_states.shape
        head_shape = (batch_size, seq_length, self.num_heads, self.head_dim)
        query = route(self.q_proj, hidden_states, split).view(head_shape).transpose(1, 2)
        key = route(self.k_proj, hidden_states, split).view(head_shape).transpose(1, 2)
        value = route(self.v_proj, hidden_states, split).view(head_shape).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention_interface = eager_attention_forward
        if not output_attentions:  # only eager materialises the probabilities
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            is_causal=False,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        attn_output = attn_output.reshape(batch_size, seq_length, -1)
        attn_output = route(self.sub_layer_norm, attn_output, split)
        attn_output = route(self.out_proj, attn_output, split)
        return attn_output, attn_weights


class BEiT3MLP(nn.Module):
    """fc1 -> activation -> sub-LN -> fc2 (one expert)."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.sub_layer_norm = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)
        if self.config._attn_implementation == "eager":
            # torchscale computes the activation in fp32 (`activation_fn(x.float()).type_as(x)`); eager mode keeps
            # that for bit-level fidelity under autocast, the fast backends stay in the compute dtype.
            hidden_states = self.activation_fn(hidden_states.float()).type_as(hidden_states)
        else:
            hidden_states = self.activation_fn(hidden_states)
        hidden_states = self.activation_dropout(hidden_states)
        hidden_states = self.sub_layer_norm(hidden_states)
        return self.fc2(hidden_states)


class BEiT3DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample during training."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class BEiT3EncoderLayer(GradientCheckpointingLayer):
    """Pre-LN block: `x + Attn(LN1(x))`, then `x + FFN(LN2(x))`, every part routed by modality."""

    def __init__(self, config: BEiT3Config, layer_idx: int, drop_path: float = 0.0):
        super().__init__()
        layer_norm = lambda: nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # noqa: E731
        has_image_text_expert = layer_idx >= config.num_hidden_layers - config.num_image_text_layers
        self.layer_norm1 = multiway(layer_norm, experts=config.multiway_attention)
        self.self_attn = BEiT3Attention(config, layer_idx)
        self.layer_norm2 = multiway(layer_norm, image_text=has_image_text_expert)
        self.mlp = multiway(lambda: BEiT3MLP(config), image_text=has_image_text_expert)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = BEiT3DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        split: BEiT3ModalitySplit,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        hidden_states = route(self.layer_norm1, hidden_states, split)
        hidden_states, attn_weights = self.self_attn(
            hidden_states, split, attention_mask=attention_mask, cache=cache, output_attentions=output_attentions
        )
        hidden_states = residual + self.drop_path(self.dropout(hidden_states))

        residual = hidden_states
        hidden_states = route(self.layer_norm2, hidden_states, split)
        hidden_states = route(self.mlp, hidden_states, split)
        hidden_states = residual + self.drop_path(self.dropout(hidden_states))
        return hidden_states, attn_weights


class BEiT3Encoder(nn.Module):
    def __init__(self, config: BEiT3Config):
        super().__init__()
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            BEiT3EncoderLayer(config, layer_idx, drop_path_rates[layer_idx])
            for layer_idx in range(config.num_hidden_layers)
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        split: BEiT3ModalitySplit,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        """The blocks in turn; `hidden_states` holds the embeddings and every block's output (no final norm)."""
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(
                hidden_states, split, attention_mask=attention_mask, cache=cache, output_attentions=output_attentions
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


# ----------------------------------------------------------------------------------------------------------------
# Base classes
# ----------------------------------------------------------------------------------------------------------------


#: Keys (without the `beit3.` prefix a base model drops) that prove a checkpoint of another BEiT-3 layout, which
#: `from_pretrained` would otherwise load as unexpected keys, leaving the model randomly initialised.
FOREIGN_LAYOUT_KEYS = {
    "the transformers PR's (huggingface/transformers#39534)": r"(^|\.)(text_embedding\.weight|vision_embedding\.projection\.weight)$",
    "the original unilm release's": r"(^|\.)(text_embed\.weight|vision_embed\.proj\.weight)$",
    "timm's": r"^blocks\.\d+\.attn\.qkv\.weight$",
}


def check_foreign_layout(unexpected_keys, path) -> None:
    """ValueError naming the converter when `unexpected_keys` (of a `from_pretrained`) prove another layout."""
    for layout, pattern in FOREIGN_LAYOUT_KEYS.items():
        found = sorted(key for key in unexpected_keys if re.search(pattern, key))
        if found:
            raise ValueError(
                f"{path} holds BEiT-3 weights in {layout} layout (e.g. `{found[0]}`), which this model does not "
                f"load (its parameters would stay random). Convert them once with `beit3-convert {path} OUTPUT_DIR` "
                "(`pip install beit3-hf`), then load OUTPUT_DIR."
            )


class BEiT3PreTrainedModel(PreTrainedModel):
    config: BEiT3Config
    config_class = BEiT3Config
    base_model_prefix = "beit3"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BEiT3EncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _input_embed_layer = "token_embedding"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing (with the command that converts them) weights of another
        BEiT-3 layout: the transformers PR's, timm's or the original `.pth` keys."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        check_foreign_layout(loading_info.get("unexpected_keys", ()), pretrained_model_name_or_path)
        return (model, loading_info) if output_loading_info else model

    def _init_weights(self, module: nn.Module):
        """unilm's init: truncated normal (cut at one std) for linear layers, LayerNorms at 1/0."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std, a=-std, b=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, BEiT3Embeddings):
            text_tables = module.token_embedding is not None  # absent in image-only models
            if text_tables:
                init.normal_(module.token_embedding.weight, std=self.config.hidden_size**-0.5)
            for weight in (module.image_position_embedding.weight,
                           *((module.text_position_embedding.weight,) if text_tables else ()),
                           module.cls_token, module.mask_token):  # fmt: skip
                init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class BEiT3Model(BEiT3PreTrainedModel):
    """
    The BEiT-3 backbone: image-only, text-only or joint image-text encoding.

    Example:

    ```python
    >>> import torch, beit3_hf
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("path/to/converted/beit3")
    >>> out = model(pixel_values=torch.randn(1, 3, 224, 224), input_ids=torch.tensor([[0, 10, 2343, 2]]))
    >>> out.image_last_hidden_state.shape, out.text_last_hidden_state.shape
    ```
    """

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.embeddings = BEiT3Embeddings(config)
        self.encoder = BEiT3Encoder(config)
        if config.use_final_layer_norm:
            layer_norm = lambda: nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # noqa: E731
            self.final_layer_norm = multiway(layer_norm, image_text=config.num_image_text_layers > 0)
        else:
            self.final_layer_norm = None
        if config.image_only:  # timm's vision-only weights: no text experts anywhere
            for module in self.modules():
                if isinstance(module, BEiT3Multiway):
                    module.text = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding):
        self.embeddings.token_embedding = value

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        causal_text: bool = False,
        cache: Cache | None = None,
        num_cached_image_tokens: int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BEiT3ModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`, *optional*):
                Images, normalised by [`BEiT3ImageProcessor`].
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
                Token ids of the BEiT-3 (XLM-R layout) tokenizer.
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
                1 for real text tokens, 0 for padding. Covers the text only: image tokens are never padding.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                Patches to replace by the learned mask token (masked image modeling).
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Resize the image position table (bicubic, CLS row kept) to the input resolution.
            causal_text (`bool`, *optional*, defaults to `False`):
                Captioning mask: image tokens see only the image; text tokens see the image, earlier text and
                themselves.
            cache (`Cache`, *optional*): key/value cache (captioning generation). An image goes into an empty cache;
                later calls add text only.
            num_cached_image_tokens (`int`, *optional*, defaults to 0): with a filled `cache` and no `pixel_values`,
                how many of the cached positions are image tokens. The rest of the cache is text, so the new text
                continues at position `cache length - num_cached_image_tokens`.

        Token ids and labels are checked against the vocabulary and the label count when they are on the CPU; on an
        accelerator that check would wait for the device, so it is left to the data pipeline.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if input_ids is not None and self.config.image_only:
            raise ValueError(
                f"This BEiT-3 model is image-only (`config.image_only`, e.g. converted from timm's vision-only "
                f"weights): it has no text experts or token embedding, so it cannot take `input_ids` (got shape "
                f"{tuple(input_ids.shape)}). Pass `pixel_values` alone, or use a checkpoint with text experts."
            )
        self._check_input_shapes(pixel_values, input_ids, attention_mask)
        past_length = cache.get_seq_length() if cache is not None else 0
        num_cached_image_tokens = self._num_cached_image_tokens(pixel_values, past_length, num_cached_image_tokens)

        hidden_states = self.embeddings(
            pixel_values,
            input_ids,
            attention_mask,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            text_position_offset=past_length - num_cached_image_tokens,
        )
        num_text_tokens = input_ids.shape[1] if input_ids is not None else 0
        split = BEiT3ModalitySplit.of(
            hidden_states.shape[1] - num_text_tokens, num_text_tokens, image_in_cache=num_cached_image_tokens > 0
        )
        mask = self._attention_mask(
            hidden_states, attention_mask, split, num_cached_image_tokens + split.num_image_tokens, causal_text, cache
        )
        encoder_outputs = self.encoder(
            hidden_states,
            split,
            attention_mask=mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = encoder_outputs.last_hidden_state
        if self.final_layer_norm is not None:
            hidden_states = route(self.final_layer_norm, hidden_states, split)

        image_states, text_states = hidden_states.split([split.num_image_tokens, split.num_text_tokens], dim=1)
        return BEiT3ModelOutput(
            last_hidden_state=hidden_states,
            image_last_hidden_state=image_states if pixel_values is not None else None,
            text_last_hidden_state=text_states if input_ids is not None else None,
            cache=cache,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )

    @staticmethod
    def _check_input_shapes(pixel_values, input_ids, attention_mask):
        if pixel_values is None and input_ids is None:
            raise ValueError("BEiT3Model needs `pixel_values`, `input_ids`, or both; got neither.")
        if pixel_values is not None and pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        if input_ids is not None and input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must have shape (batch_size, text_length), got {tuple(input_ids.shape)}.")
        if pixel_values is not None and input_ids is not None and pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"`pixel_values` and `input_ids` have different batch sizes: {pixel_values.shape[0]} and "
                f"{input_ids.shape[0]}."
            )
        if attention_mask is not None and (input_ids is None or attention_mask.shape != input_ids.shape):
            raise ValueError(
                "`attention_mask` must match `input_ids` in shape, got "
                f"{tuple(attention_mask.shape)} for input_ids of shape "
                f"{None if input_ids is None else tuple(input_ids.shape)}."
            )

    @staticmethod
    def _num_cached_image_tokens(pixel_values, past_length: int, num_cached_image_tokens: int | None) -> int:
        if pixel_values is not None:
            if past_length > 0:
                raise ValueError(
                    f"`pixel_values` were given with a cache that already holds {past_length} positions; the image "
                    "must come first, into an empty cache."
                )
            return 0
        num_cached_image_tokens = num_cached_image_tokens or 0
        if num_cached_image_tokens < 0:
            raise ValueError(f"`num_cached_image_tokens` must not be negative, got {num_cached_image_tokens}.")
        if num_cached_image_tokens > past_length:
            raise ValueError(
                f"`num_cached_image_tokens` ({num_cached_image_tokens}) is larger than the cache ({past_length} "
                "positions)."
            )
        return num_cached_image_tokens

    def _attention_mask(
        self,
        hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        split: BEiT3ModalitySplit,
        num_image_positions: int,
        causal_text: bool,
        cache: Cache | None,
    ):
        """
        The joint mask in the form the attention backend wants (or `None` when nothing is masked). Keys are the
        cached positions, then the new ones; the first `num_image_positions` of them are image tokens.
        """
        if text_attention_mask is None and not causal_text:
            return None
        batch_size = hidden_states.shape[0]
        if text_attention_mask is None:
            text_attention_mask = torch.ones(
                batch_size, split.num_text_tokens, dtype=torch.long, device=hidden_states.device
            )
        # a 2D mask over every key: cached positions and new image tokens are always real, then the new text
        prefix_length = (cache.get_seq_length() if cache is not None else 0) + split.num_image_tokens
        prefix = torch.ones(batch_size, prefix_length, dtype=text_attention_mask.dtype, device=hidden_states.device)
        attention_mask = torch.cat([prefix, text_attention_mask], dim=1)

        and_mask_function = None
        if causal_text:
            if self.config._attn_implementation.startswith("flash"):
                raise ValueError(
                    f"The captioning mask (text sees the image and earlier text) cannot be expressed with "
                    f"attn_implementation={self.config._attn_implementation!r}; use 'sdpa', 'eager' or 'flex_attention'."
                )

            def and_mask_function(batch_idx, head_idx, q_idx, kv_idx):
                # image tokens see the image; text tokens see the image, earlier text and themselves
                return (kv_idx < num_image_positions) | ((q_idx >= num_image_positions) & (kv_idx <= q_idx))

        return create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=cache,
            and_mask_function=and_mask_function,
        )


# ----------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------


class BEiT3Pooler(nn.Module):
    """First token -> LayerNorm -> Linear -> tanh."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(self.layer_norm(hidden_states[:, 0])))


class BEiT3ClassifierHead(nn.Module):
    """[LayerNorm] -> Linear -> LayerNorm -> GELU -> Linear (unilm's `TwoLayerMLP` and VQA head)."""

    def __init__(self, in_features: int, hidden_features: int, num_labels: int, eps: float, norm_input: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_features, eps=eps) if norm_input else nn.Identity()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.norm2 = nn.LayerNorm(hidden_features, eps=eps)
        self.dense2 = nn.Linear(hidden_features, num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense2(F.gelu(self.norm2(self.dense1(self.norm1(hidden_states)))))


def _scaled_head_init(module: nn.Linear, std: float, scale: float = 1e-3):
    """unilm's `head.weight.data.mul_(0.001)` after its truncated normal, expressed as one init."""
    init.trunc_normal_(module.weight, std=std * scale, a=-std * scale, b=std * scale)
    if module.bias is not None:
        init.zeros_(module.bias)


class BEiT3ForImageClassification(BEiT3PreTrainedModel):
    """Image classification: mean of the patch tokens (CLS excluded) -> LayerNorm -> Linear."""

    accepts_loss_kwargs = False

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.beit3 = BEiT3Model(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if module is getattr(self, "classifier", None) and isinstance(module, nn.Linear):
            _scaled_head_init(module, self.config.initializer_range)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices (or float targets for
            regression / multi-label, following `config.problem_type`).
        """
        if pixel_values is None:
            raise ValueError("BEiT3ForImageClassification needs `pixel_values`.")
        outputs = self.beit3(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        pooled = self.fc_norm(outputs.image_last_hidden_state[:, 1:].mean(dim=1))
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            check_class_labels(labels, logits, self.config)
            loss = ForSequenceClassificationLoss(labels, logits, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class BEiT3ForVisualQuestionAnswering(BEiT3PreTrainedModel):
    """VQA: pooler on the image CLS of the joint sequence -> Linear(D,2D) -> LayerNorm -> GELU -> Linear."""

    accepts_loss_kwargs = False

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.beit3 = BEiT3Model(config)
        self.pooler = BEiT3Pooler(config)
        self.classifier = BEiT3ClassifierHead(
            config.hidden_size, 2 * config.hidden_size, config.num_labels, config.layer_norm_eps, norm_input=False
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        labels (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*): soft answer scores in
            [0, 1] (VQA: 0.3/0.6/0.9/1.0 for 1/2/3/4+ annotators). Loss = BCE-with-logits summed over answers,
            averaged over the batch (`mean * num_labels`), as in unilm.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("BEiT3ForVisualQuestionAnswering needs both `pixel_values` and `input_ids`.")
        outputs = self.beit3(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.pooler(outputs.image_last_hidden_state))
        loss = None
        if labels is not None:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"VQA `labels` must be soft scores of shape (batch_size, num_labels) = {tuple(logits.shape)}, "
                    f"got {tuple(labels.shape)}."
                )
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float()) * labels.shape[1]
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class BEiT3ForVisualReasoning(BEiT3PreTrainedModel):
    """
    NLVR2: is a statement true of a pair of images? Each image is encoded jointly with the text; the image CLS and
    the first text token of both passes are concatenated (4D) and classified by a two-layer MLP.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.beit3 = BEiT3Model(config)
        self.classifier = BEiT3ClassifierHead(
            4 * config.hidden_size, 2 * config.hidden_size, config.num_labels, config.layer_norm_eps, norm_input=True
        )
        self.post_init()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        classifier = getattr(self, "classifier", None)
        if classifier is not None and module in (classifier.dense1, classifier.dense2):
            _scaled_head_init(module, self.config.initializer_range)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 2, num_channels, height, width)`): the image pairs.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): 1 = the statement is true.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("BEiT3ForVisualReasoning needs both `pixel_values` and `input_ids`.")
        if pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
            raise ValueError(
                "BEiT3ForVisualReasoning takes image pairs: `pixel_values` of shape "
                f"(batch_size, 2, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        batch_size = pixel_values.shape[0]
        # both images of every pair in one pass: [all first images; all second images]
        images = pixel_values.transpose(0, 1).flatten(0, 1)
        input_ids = input_ids.repeat(2, 1)
        attention_mask = attention_mask.repeat(2, 1) if attention_mask is not None else None
        outputs = self.beit3(
            pixel_values=images,
            input_ids=input_ids,
            attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        per_image = torch.cat(
            [outputs.image_last_hidden_state[:, 0], outputs.text_last_hidden_state[:, 0]], dim=-1
        )  # (2 * batch, 2D)
        first, second = per_image.split([batch_size, batch_size], dim=0)
        logits = self.classifier(torch.cat([first, second], dim=-1))
        loss = None
        if labels is not None:
            check_class_labels(labels, logits, self.config)
            loss = ForSequenceClassificationLoss(labels, logits, self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class BEiT3ForImageTextRetrieval(BEiT3PreTrainedModel):
    """
    Dual encoder for image-text retrieval and zero-shot classification: separate image-only and text-only passes,
    first token, bias-free projection, L2 normalisation; similarities scaled by `logit_scale.exp()`.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.beit3 = BEiT3Model(config)
        self.image_projection = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.text_projection = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if module is self:
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """The image-only pass; `pooler_output` is the L2-normalised image embedding, `(batch_size, hidden_size)`."""
        return self._embed(
            self.image_projection,
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """The text-only pass; `pooler_output` is the L2-normalised embedding of the first (`<s>`) token."""
        return self._embed(
            self.text_projection,
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def _embed(self, projection: nn.Linear, **backbone_inputs) -> BaseModelOutputWithPooling:
        """One single-modality pass: first token -> bias-free projection -> L2 normalisation."""
        outputs = self.beit3(**backbone_inputs, return_dict=True)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=F.normalize(projection(outputs.last_hidden_state[:, 0]), dim=-1),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BEiT3ImageTextRetrievalOutput | tuple:
        r"""
        return_loss (`bool`, *optional*): return the symmetric contrastive loss; matching pairs share a batch index.
        """
        if pixel_values is None and input_ids is None:
            raise ValueError("BEiT3ForImageTextRetrieval needs `pixel_values`, `input_ids`, or both.")
        output_kwargs = dict(
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True
        )
        image_outputs = text_outputs = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, interpolate_pos_encoding, **output_kwargs)
        if input_ids is not None:
            text_outputs = self.get_text_features(input_ids, attention_mask, **output_kwargs)
        image_embeds = image_outputs.pooler_output if image_outputs is not None else None
        text_embeds = text_outputs.pooler_output if text_outputs is not None else None

        logits_per_image = logits_per_text = loss = None
        if image_embeds is not None and text_embeds is not None:
            logits_per_image = self.logit_scale.exp() * image_embeds @ text_embeds.t()
            logits_per_text = logits_per_image.t()
            if return_loss:
                if logits_per_image.shape[0] != logits_per_image.shape[1]:
                    raise ValueError(
                        "The contrastive loss needs one text per image; got "
                        f"{logits_per_image.shape[0]} images and {logits_per_image.shape[1]} texts."
                    )
                targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
                loss = (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2
        return BEiT3ImageTextRetrievalOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_model_output=image_outputs,
            text_model_output=text_outputs,
        )


class BEiT3ForCaptioning(BEiT3PreTrainedModel, GenerationMixin):
    """
    Captioning as masked-token prediction under a captioning mask (image <-> image, text -> image and earlier
    text). Training replaces some caption tokens by `<mask>` and predicts them; `logits` cover every text position.

    `generate()` decodes as unilm's `CaptioningHandler` does: every step feeds the last word followed by `<mask>` and
    reads the next word off the `<mask>` slot. The image is encoded once, in the first step, and then lives in the
    key/value cache with the caption; the `<mask>` slot's keys and values are dropped from the cache after each step,
    since the next step feeds the chosen word in its place. Greedy decoding reproduces unilm's incremental decoding
    token for token; beam search is transformers' (see `docs/usage.md` for how it relates to unilm's).

    Example:

    ```python
    >>> import beit3_hf
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> model = AutoModelForImageTextToText.from_pretrained("path/to/beit3-base-coco-captioning")
    >>> processor = AutoProcessor.from_pretrained("path/to/beit3-base-coco-captioning")
    >>> pixel_values = processor(images=image, return_tensors="pt").pixel_values
    >>> processor.batch_decode(model.generate(pixel_values=pixel_values), skip_special_tokens=True)
    ```
    """

    accepts_loss_kwargs = False
    # `generate(pixel_values=...)` starts every caption from `<s>` (the bos token) when no prompt is given
    main_input_name = "input_ids"

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.beit3 = BEiT3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        num_cached_image_tokens: int | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BEiT3CaptioningOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): the original token at each
            position to predict (typically where `input_ids` holds `<mask>`), -100 elsewhere. Not shifted: position
            `i` of the logits predicts position `i` of the labels.
        cache (`Cache`, *optional*): key/value cache. Empty, it requires `pixel_values` and is filled with the image
            and the text; holding an image (and earlier text), it takes the next text tokens without `pixel_values`.
        use_cache (`bool`, *optional*): start a new `DynamicCache` when no `cache` is given.
        num_cached_image_tokens (`int`, *optional*): with a filled `cache`, how many of its positions are image
            tokens; defaults to an image at the model's resolution (`num_patches + 1`). `generate()` passes it.
        """
        if input_ids is None:
            raise ValueError("BEiT3ForCaptioning needs `input_ids`.")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if pixel_values is None:
            if cache is None or cache.get_seq_length() == 0:
                raise ValueError("BEiT3ForCaptioning needs `pixel_values`, or a `cache` that already holds the image.")
            if num_cached_image_tokens is None:
                num_cached_image_tokens = self.config.num_patches + 1
        outputs = self.beit3(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            causal_text=True,
            cache=cache,
            num_cached_image_tokens=num_cached_image_tokens,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.text_last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"Captioning `labels` must match `input_ids` in shape {tuple(input_ids.shape)}, "
                    f"got {tuple(labels.shape)}."
                )
            check_index_range("labels", labels, self.config.vocab_size, "vocab_size", ignore_index=-100)
            # the mean over labelled positions; 0 (not NaN) for a batch in which nothing is labelled
            total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
            loss = total / labels.ne(-100).sum().clamp(min=1)
        return BEiT3CaptioningOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """
        [`GenerationMixin.generate`] from `pixel_values`, optionally after a prompt.

        Without `input_ids` every caption starts from `<s>`. A prompt may come straight from the processor
        (`<s> words </s>` and padding): each row is continued after its last word, so the closing `</s>` and the
        padding are removed. Rows of one batch must then hold prompts of the same length, as text positions start
        at the first token (left padding would shift them).
        """
        input_ids = kwargs.pop("input_ids", None)
        if inputs is not None and input_ids is not None:
            raise ValueError("Pass the prompt as `inputs` or as `input_ids`, not both.")
        input_ids = inputs if input_ids is None else input_ids
        if input_ids is not None:
            input_ids = self._prompt_for_generation(input_ids, kwargs.pop("attention_mask", None))
        return super().generate(input_ids, *args, **kwargs)

    def _prompt_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The real tokens of each row without a closing `</s>`; all rows must have the same number."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` {tuple(attention_mask.shape)} must match `input_ids` {tuple(input_ids.shape)}."
            )
        prompts = []
        for ids, mask in zip(input_ids, attention_mask.bool()):
            ids = ids[mask]
            if len(ids) > 1 and ids[-1] == self.config.eos_token_id:
                ids = ids[:-1]
            prompts.append(ids)
        lengths = sorted({len(ids) for ids in prompts})
        if len(lengths) > 1:
            raise ValueError(
                f"The prompts have different lengths ({lengths} tokens without padding); BEiT-3 positions text from "
                "its first token, so generate prompts of different lengths in separate calls."
            )
        if lengths[0] == 0:
            raise ValueError("A prompt is empty: it needs at least the `<s>` token (the processor adds it).")
        return torch.stack(prompts)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> dict:
        """The tokens not yet in the cache, followed by the `<mask>` slot whose logits predict the next token."""
        if cache is not None and cache.is_compileable:
            raise ValueError(
                f"BEiT3ForCaptioning decodes with a dynamic cache; got a {type(cache).__name__}. Leave "
                "`cache_implementation` unset (static caches are not supported)."
            )
        kwargs.pop("attention_mask", None)  # prompts carry no padding (see `generate`), so every token is real
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, **kwargs
        )
        new_ids = model_inputs["input_ids"]
        mask_slot = new_ids.new_full((new_ids.shape[0], 1), self.config.mask_token_id)
        model_inputs["input_ids"] = torch.cat([new_ids, mask_slot], dim=1)
        if model_inputs.get("pixel_values") is None and cache is not None and cache.get_seq_length() > 0:
            # the cache holds the image and every token of `input_ids` that is not fed again
            cached_text_length = input_ids.shape[1] - new_ids.shape[1]
            model_inputs["num_cached_image_tokens"] = cache.get_seq_length() - cached_text_length
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: dict, *args, **kwargs) -> dict:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if model_kwargs.get("cache") is not None:
            # drop the `<mask>` slot: the next step feeds the chosen token at its position
            model_kwargs["cache"].crop(-1)
        return model_kwargs


class BEiT3ForMaskedDataModeling(BEiT3PreTrainedModel):
    """
    BEiT-3's pretraining objective, masked data modeling: predict the text tokens replaced by `<mask>` over the
    vocabulary (`text_head`) and the visual tokens of masked image patches over the tokenizer's codebook
    (`image_head`), for images, texts or image-text pairs (one joint sequence). Masked patches are replaced by the
    learned `beit3.embeddings.mask_token` after the patch embedding, before the position embedding, as in BEiT.
    The heads run on the masked positions only. The targets of `image_labels` are the codes of a BEiT v2 visual
    tokenizer ([`BEiT3VisualTokenizer`]); `beit3_hf.masking` draws the masks.

    Example:

    ```python
    >>> import torch, beit3_hf
    >>> from beit3_hf.masking import BlockMaskingGenerator
    >>> from transformers import AutoModelForPreTraining
    >>> model = AutoModelForPreTraining.from_pretrained("path/to/beit3-base-pretrained")  # BEiT3ForMaskedDataModeling
    >>> bool_masked_pos = BlockMaskingGenerator(14, mask_ratio=0.4)()[None]  # (1, 196)
    >>> out = model(pixel_values=torch.randn(1, 3, 224, 224), bool_masked_pos=bool_masked_pos,
    ...             image_labels=torch.randint(0, 8192, (1, 196)))
    >>> out.image_loss, out.image_logits.shape  # (78, 8192)
    ```
    """

    accepts_loss_kwargs = False

    def __init__(self, config: BEiT3Config):
        super().__init__(config)
        self.beit3 = BEiT3Model(config)
        self.text_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.image_head = nn.Linear(config.hidden_size, config.visual_vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.text_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.text_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        text_labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BEiT3ForMaskedDataModelingOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): token ids in which the
            masked positions already hold `<mask>` (`beit3_hf.masking.mask_text_tokens`).
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*): True at the patches
            replaced by the mask token (`beit3_hf.masking.BlockMaskingGenerator`), in row-major grid order.
        image_labels (`torch.LongTensor` of shape `(batch_size, num_patches)`, *optional*): visual-token ids in
            `[0, visual_vocab_size)`. Only the masked patches are read, so the tokenizer's full grid of codes can be
            passed as it is (any value, -100 included, is ignored at unmasked patches; -100 at a masked patch leaves
            it out of the loss).
        text_labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): the original token at each
            masked position, -100 elsewhere. They choose the text positions predicted; without them these are the
            `<mask>` positions of `input_ids` (`config.mask_token_id`). Padding (`attention_mask` 0) is never
            predicted.

        The loss is `config.text_loss_weight * text_loss + config.image_loss_weight * image_loss` over the parts
        whose labels are given; each part is a mean over the batch's labelled positions.
        """
        self._check_labels(pixel_values, input_ids, bool_masked_pos, image_labels, text_labels)
        outputs = self.beit3(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )

        image_logits = image_loss = image_accuracy = None
        if bool_masked_pos is not None:
            masked_patches = outputs.image_last_hidden_state[:, 1:][bool_masked_pos]  # CLS excluded
            image_logits = _predict(self.image_head, masked_patches, self.config.visual_vocab_size)
            if image_labels is not None:
                image_loss, image_accuracy = _masked_prediction_loss(image_logits, image_labels[bool_masked_pos])

        text_logits = text_loss = text_accuracy = None
        if input_ids is not None:
            predicted = text_labels.ne(-100) if text_labels is not None else input_ids.eq(self.config.mask_token_id)
            if attention_mask is not None:
                predicted = predicted & attention_mask.bool()
            text_logits = _predict(
                self.text_head, outputs.text_last_hidden_state[predicted], self.config.vocab_size
            )
            if text_labels is not None:
                text_loss, text_accuracy = _masked_prediction_loss(text_logits, text_labels[predicted])

        weighted = [
            weight * part
            for weight, part in ((self.config.text_loss_weight, text_loss), (self.config.image_loss_weight, image_loss))
            if part is not None
        ]
        return BEiT3ForMaskedDataModelingOutput(
            loss=sum(weighted) if weighted else None,
            text_loss=text_loss,
            image_loss=image_loss,
            text_logits=text_logits,
            image_logits=image_logits,
            text_accuracy=text_accuracy,
            image_accuracy=image_accuracy,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _check_labels(self, pixel_values, input_ids, bool_masked_pos, image_labels, text_labels):
        if bool_masked_pos is not None and pixel_values is None:
            raise ValueError("`bool_masked_pos` was given without `pixel_values`: it masks patches of an image.")
        if image_labels is not None:
            if pixel_values is None:
                raise ValueError("`image_labels` were given without `pixel_values`.")
            if bool_masked_pos is None:
                raise ValueError(
                    "`image_labels` were given without `bool_masked_pos`: the image loss is taken at the masked "
                    "patches (mask them with `beit3_hf.masking.BlockMaskingGenerator`)."
                )
            if image_labels.dtype not in (torch.long, torch.int):
                raise ValueError(f"`image_labels` must hold integer visual-token ids, got dtype {image_labels.dtype}.")
            if image_labels.shape != bool_masked_pos.shape:
                raise ValueError(
                    f"`image_labels` must match `bool_masked_pos` in shape {tuple(bool_masked_pos.shape)} "
                    f"(batch_size, num_patches), got {tuple(image_labels.shape)}."
                )
            if bool_masked_pos.dtype == torch.bool:  # else the image embedding names the dtype
                check_index_range(
                    "image_labels", image_labels[bool_masked_pos], self.config.visual_vocab_size, "visual_vocab_size",
                    ignore_index=-100,
                )
        if text_labels is not None:
            if input_ids is None:
                raise ValueError("`text_labels` were given without `input_ids`.")
            if text_labels.dtype not in (torch.long, torch.int):
                raise ValueError(f"`text_labels` must hold integer token ids, got dtype {text_labels.dtype}.")
            if text_labels.shape != input_ids.shape:
                raise ValueError(
                    f"`text_labels` must match `input_ids` in shape {tuple(input_ids.shape)}, "
                    f"got {tuple(text_labels.shape)}."
                )
            check_index_range("text_labels", text_labels, self.config.vocab_size, "vocab_size", ignore_index=-100)


def _predict(head: nn.Linear, hidden_states: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`head` on the selected rows `(num_selected, hidden_size)`. On no rows it is not called (4-bit layers crash on
    empty input); the empty logits still hang off the backbone, so a batch with nothing masked backpropagates.
    Under DeepSpeed it is called all the same: every process must call the same modules (ZeRO-3 gathers the head's
    weights from all processes at the call, ZeRO-1/2 reduce gradients in the order the backward pass makes them),
    and DeepSpeed does not train quantized heads."""
    if hidden_states.shape[0] == 0 and deepspeed_config() is None:
        return hidden_states.sum() + hidden_states.new_zeros(0, num_classes)
    return head(hidden_states)


def _masked_prediction_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the labelled rows (-100: not labelled) and the argmax accuracy; both 0 without any."""
    labelled = labels.ne(-100)
    count = labelled.sum().clamp(min=1)
    loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=-100, reduction="sum") / count
    with torch.no_grad():
        accuracy = (logits.argmax(dim=-1).eq(labels) & labelled).sum().float() / count
    return loss, accuracy


__all__ = [
    "BEiT3PreTrainedModel",
    "BEiT3Model",
    "BEiT3ForImageClassification",
    "BEiT3ForVisualQuestionAnswering",
    "BEiT3ForVisualReasoning",
    "BEiT3ForImageTextRetrieval",
    "BEiT3ForCaptioning",
    "BEiT3ForMaskedDataModeling",
    "BEiT3ModelOutput",
    "BEiT3ImageTextRetrievalOutput",
    "BEiT3CaptioningOutput",
    "BEiT3ForMaskedDataModelingOutput",
    "BEiT3Multiway",
]
