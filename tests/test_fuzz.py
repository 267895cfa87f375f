"""Property test of every forward: for any mix of shapes, dtypes, modalities and values, a model either returns
finite outputs or raises ValueError / TypeError (never an IndexError or RuntimeError from inside torch)."""

import functools

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from beit3_hf import (
    BEiT3ForCaptioning,
    BEiT3ForImageClassification,
    BEiT3ForImageTextRetrieval,
    BEiT3ForVisualQuestionAnswering,
    BEiT3ForVisualReasoning,
    BEiT3Model,
)
from conftest import HEADS, TINY, tiny_config

pytestmark = pytest.mark.kernel_sensitive  # numbers compared across kernels and orders: CI reruns these

VOCAB, MAX_TEXT, IMAGE = TINY["vocab_size"], TINY["max_text_positions"], TINY["image_size"]
NUM_LABELS = 3
ID_DTYPES = (torch.long, torch.int, torch.int16, torch.float32, torch.bool)
PIXEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.long)
EXAMPLES = 400


@functools.cache
def model(model_class, attn_implementation):
    torch.manual_seed(0)
    return model_class(tiny_config(num_labels=NUM_LABELS, attn_implementation=attn_implementation)).eval()


FAULTS = (
    "channels", "side", "rank", "pairs", "id_dtype", "no_tokens", "too_long", "negative_id", "id_past_vocab",
    "text_batch", "mask_shape", "label_past_range", "empty_batch",
)


@st.composite
def forward_calls(draw):
    """(model, keyword arguments): valid inputs of every shape and dtype the models take, half of them with one
    fault drawn from `FAULTS`."""
    model_class = draw(st.sampled_from(HEADS))
    fault = draw(st.one_of(st.none(), st.sampled_from(FAULTS)))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    batch_size = 0 if fault == "empty_batch" else draw(st.integers(1, 3))
    needs_image = model_class in (BEiT3ForImageClassification, BEiT3ForVisualQuestionAnswering,
                                  BEiT3ForVisualReasoning, BEiT3ForCaptioning)
    needs_text = model_class in (BEiT3ForVisualQuestionAnswering, BEiT3ForVisualReasoning, BEiT3ForCaptioning)
    with_image = needs_image or draw(st.booleans())
    with_text = model_class is not BEiT3ForImageClassification and (needs_text or not with_image or draw(st.booleans()))
    kwargs = {}

    if with_image:
        interpolate = draw(st.booleans())
        height = width = IMAGE
        if interpolate:
            height, width = draw(st.sampled_from((16, 24, 40))), draw(st.sampled_from((16, 32, 48)))
        if fault == "side":
            height = draw(st.sampled_from((IMAGE + 4, 12)))
        channels = draw(st.sampled_from((1, 4))) if fault == "channels" else 3
        shape = (batch_size, channels, height, width)
        if model_class is BEiT3ForVisualReasoning:
            shape = shape[:1] + ((1 if fault == "pairs" else 2),) + shape[1:]
        if fault == "rank":
            shape = shape[1:]
        dtype = draw(st.sampled_from(PIXEL_DTYPES))
        pixels = torch.randn(shape, generator=generator) * draw(st.sampled_from((1.0, 30.0)))
        kwargs["pixel_values"] = pixels.to(dtype) if dtype.is_floating_point else pixels.abs().to(dtype)
        kwargs["interpolate_pos_encoding"] = interpolate

    if with_text:
        text_batch = batch_size + 1 if fault == "text_batch" else batch_size
        length = {"no_tokens": 0, "too_long": MAX_TEXT + 1}.get(fault) or draw(st.integers(1, MAX_TEXT))
        ids = torch.randint(0, VOCAB, (text_batch, length), generator=generator)
        if fault in ("negative_id", "id_past_vocab") and ids.numel():
            ids.view(-1)[draw(st.integers(0, ids.numel() - 1))] = -1 if fault == "negative_id" else VOCAB
        id_dtype = draw(st.sampled_from(ID_DTYPES[2:])) if fault == "id_dtype" else draw(st.sampled_from(ID_DTYPES[:2]))
        kwargs["input_ids"] = ids.to(id_dtype)
        if draw(st.booleans()) or fault == "mask_shape":
            mask = torch.ones(text_batch, length, dtype=torch.long)
            if length > 1 and text_batch > 0:  # padding after at least one real token
                mask[draw(st.integers(0, text_batch - 1)), draw(st.integers(1, length - 1)):] = 0
            kwargs["attention_mask"] = mask[:, 1:] if fault == "mask_shape" else mask

    has_labels = model_class not in (BEiT3Model, BEiT3ForImageTextRetrieval)
    if has_labels and (draw(st.booleans()) or fault == "label_past_range"):
        past = 5 if fault == "label_past_range" else 0
        if model_class is BEiT3ForVisualQuestionAnswering:
            kwargs["labels"] = torch.rand(batch_size, NUM_LABELS + past, generator=generator)
        elif model_class is BEiT3ForCaptioning:
            shape = kwargs["input_ids"].shape
            labels = torch.randint(0, VOCAB + past, shape, generator=generator)
            kwargs["labels"] = labels.masked_fill(torch.rand(shape, generator=generator) < 0.5, -100)
        else:
            kwargs["labels"] = torch.randint(0, NUM_LABELS + past, (batch_size,), generator=generator)
    if model_class is BEiT3ForImageTextRetrieval:
        kwargs["return_loss"] = draw(st.booleans())
    attn_implementation = draw(st.sampled_from(("sdpa", "eager")))
    event(f"fault: {fault}")
    return model(model_class, attn_implementation), kwargs


def tensors_in(output):
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from tensors_in(value)
    elif isinstance(output, (tuple, list)):
        for value in output:
            yield from tensors_in(value)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(forward_calls())
def test_every_forward_returns_finite_outputs_or_raises_value_or_type_error(call):
    model, kwargs = call
    try:
        with torch.no_grad():
            output = model(**kwargs)
    except (ValueError, TypeError) as error:
        event(f"{type(error).__name__}")
        return
    event("finite output")
    tensors = list(tensors_in(output))
    assert tensors, f"{type(model).__name__} returned no tensors"
    for tensor in tensors:
        assert torch.isfinite(tensor.float()).all(), f"{type(model).__name__}: non-finite output for {describe(kwargs)}"


def describe(kwargs) -> dict:
    return {key: (tuple(value.shape), value.dtype) if torch.is_tensor(value) else value for key, value in kwargs.items()}


def test_the_fuzz_test_can_fail():
    """The property is not vacuous: a raw torch error from inside a forward is reported as a failure."""
    broken = model(BEiT3Model, "sdpa")
    original = broken.embeddings.embed_text
    broken.embeddings.embed_text = lambda input_ids, offset=0: broken.embeddings.token_embedding(input_ids + VOCAB)
    try:
        with pytest.raises(IndexError):
            test_every_forward_returns_finite_outputs_or_raises_value_or_type_error.hypothesis.inner_test(
                (broken, {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
            )
    finally:
        broken.embeddings.embed_text = original
