"""Masked data modeling: the masks (`beit3_hf.masking`), `BEiT3ForMaskedDataModeling` and its conversion from the
released pretrained layout."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForPreTraining

from beit3_hf import (
    BEiT3Config,
    BEiT3ForCaptioning,
    BEiT3ForMaskedDataModeling,
    BEiT3ForMaskedDataModelingOutput,
    BEiT3Model,
    BlockMaskingGenerator,
    mask_text_tokens,
)
from beit3_hf.convert import convert_checkpoint

from conftest import HEADS, make_inputs, tiny_config
from official import build_official, needs_official, official_modules

VISUAL_VOCAB = 64  # a small codebook keeps the tiny image head small
SPECIAL_IDS = (0, 1, 2)  # <s>, <pad>, </s> of the tiny vocabulary
MASK_ID = 99  # `mask_token_id` of the tiny config (the last id)


def build(seed=0, **overrides):
    torch.manual_seed(seed)
    return BEiT3ForMaskedDataModeling(tiny_config(visual_vocab_size=VISUAL_VOCAB, **overrides)).eval()


def mdm_inputs(kind="image_text", batch_size=2, seed=0):
    """A batch of `kind` (image, text or image_text) with masks and labels, as a pretraining collator builds it."""
    pixel_values, input_ids, attention_mask = make_inputs(batch_size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    if kind in ("image", "image_text"):
        masking = BlockMaskingGenerator(4, mask_ratio=0.4)
        inputs["pixel_values"] = pixel_values
        inputs["bool_masked_pos"] = torch.stack([masking(generator) for _ in range(batch_size)])
        inputs["image_labels"] = torch.randint(0, VISUAL_VOCAB, (batch_size, 16), generator=generator)
    if kind in ("text", "image_text"):
        masked_ids, text_labels = mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, 0.5, generator)
        text_labels[0, 1] = input_ids[0, 1]  # at least one masked token
        masked_ids[0, 1] = MASK_ID
        inputs.update(input_ids=masked_ids, attention_mask=attention_mask, text_labels=text_labels)
    return inputs


# ---------------------------------------------------------------- block masks


@pytest.mark.parametrize("input_size, mask_ratio", [(14, 0.4), (4, 0.4), (8, 0.4), (24, 0.4), ((2, 8), 0.5),
                                                    ((6, 3), 0.75), (14, 1.0), (14, 0.0)])
def test_block_masks_hit_the_count_exactly_with_valid_blocks(input_size, mask_ratio):
    masking = BlockMaskingGenerator(input_size, mask_ratio=mask_ratio)
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    expected = round(mask_ratio * height * width)
    assert masking.num_masking_patches == expected
    covered_by_blocks = 0
    for seed in range(100):
        mask, blocks = masking.sample(torch.Generator().manual_seed(seed))
        assert mask.shape == (height, width) and mask.dtype == torch.bool
        assert int(mask.sum()) == expected
        union = torch.zeros_like(mask)
        for top, left, block_height, block_width in blocks:
            assert 0 <= top and top + block_height <= height and 0 <= left and left + block_width <= width
            assert block_height * block_width >= masking.min_num_patches
            assert masking.min_aspect <= block_height / block_width <= masking.max_aspect
            union[top:top + block_height, left:left + block_width] = True
        assert not (union & ~mask).any()  # every block is masked
        covered_by_blocks += int(union.sum())
        flat = masking(torch.Generator().manual_seed(seed))
        assert flat.shape == (height * width,) and torch.equal(flat, mask.flatten())  # row-major patch order
    if 0 < mask_ratio < 1:  # block-wise, not patch by patch: the random fill of the rest is small
        assert covered_by_blocks >= 0.9 * 100 * expected


def test_block_masks_are_blocks_not_scattered_patches():
    """At BEiT's 14x14 / 40%, a mask is a few rectangles: far fewer masked-unmasked edges than random patches."""
    def edges(mask):
        return int((mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum())

    masking = BlockMaskingGenerator(14, mask_ratio=0.4)
    generator = torch.Generator().manual_seed(0)
    block_edges = sum(edges(masking.sample(generator)[0]) for _ in range(50))
    random_edges = 0
    for _ in range(50):
        mask = torch.zeros(196, dtype=torch.bool)
        mask[torch.randperm(196, generator=generator)[:78]] = True
        random_edges += edges(mask.view(14, 14))
    assert block_edges < 0.5 * random_edges


def test_min_block_scales_with_small_grids():
    """`min_num_patches` defaults to BEiT's 16 at 14x14 and more, `round(16 * num_patches / 196)` (at least 1) on
    smaller grids, and never more than the patches to mask; an explicit value is kept."""
    assert BlockMaskingGenerator(14).min_num_patches == 16
    assert BlockMaskingGenerator(24).min_num_patches == 16
    assert BlockMaskingGenerator(8).min_num_patches == round(16 * 64 / 196) == 5
    assert BlockMaskingGenerator(4).min_num_patches == 1
    assert BlockMaskingGenerator(14, num_masking_patches=10).min_num_patches == 10
    assert BlockMaskingGenerator(14, min_num_patches=4).min_num_patches == 4
    masking = BlockMaskingGenerator(14, mask_ratio=0.5, min_num_patches=30, max_num_patches=40)
    for seed in range(20):
        _, blocks = masking.sample(random.Random(seed))
        assert blocks and all(30 <= h * w <= 40 for _, _, h, w in blocks)


def test_block_masks_are_deterministic_given_a_generator():
    masking = BlockMaskingGenerator(14)
    for make in (lambda seed: torch.Generator().manual_seed(seed), random.Random):
        first = [masking(make(seed)) for seed in range(5)]
        again = [masking(make(seed)) for seed in range(5)]
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert len({tuple(mask.tolist()) for mask in first}) == 5
    torch.manual_seed(3)
    first = masking()
    torch.manual_seed(3)
    assert torch.equal(first, masking())  # the global generator without one


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_size=0), r"`input_size` must be a positive integer, got 0"),
        (dict(input_size=(14, 14, 1)), r"`input_size` must be an int or a \(height, width\) pair"),
        (dict(input_size=14, mask_ratio=1.5), r"`mask_ratio` must be a number in \[0, 1\], got 1.5"),
        (dict(input_size=14, mask_ratio=-0.1), r"`mask_ratio` must be a number in \[0, 1\], got -0.1"),
        (dict(input_size=14, mask_ratio=float("nan")), r"`mask_ratio` must be a number in \[0, 1\], got nan"),
        (dict(input_size=4, num_masking_patches=17), r"`num_masking_patches` must be an integer in \[0, 16\].*got 17"),
        (dict(input_size=4, num_masking_patches=2.5), r"`num_masking_patches` must be an integer.*got 2.5"),
        (dict(input_size=14, min_num_patches=100), r"`min_num_patches` \(100\) is larger than `num_masking_patches`"),
        (dict(input_size=14, min_num_patches=0), r"`min_num_patches` must be a positive integer, got 0"),
        (dict(input_size=14, max_num_patches=8), r"`max_num_patches` \(8\) is smaller than `min_num_patches` \(16\)"),
        (dict(input_size=14, min_aspect=float("inf")), r"`min_aspect` must be a positive finite number, got inf"),
        (dict(input_size=14, min_aspect=0), r"`min_aspect` must be a positive finite number, got 0"),
        (dict(input_size=14, min_aspect=2.0, max_aspect=1.0), r"`min_aspect` \(2.0\) is larger than `max_aspect`"),
        (dict(input_size=14, max_attempts=0), r"`max_attempts` must be a positive integer, got 0"),
    ],
)
def test_block_masking_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockMaskingGenerator(**kwargs)


def test_block_masking_refuses_a_foreign_generator():
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator, a random.Random or None"):
        BlockMaskingGenerator(14)(generator=42)


# ---------------------------------------------------------------- text masks


def test_text_masks_never_touch_special_or_padding_tokens():
    _, input_ids, attention_mask = make_inputs(batch_size=4, text_length=12)
    input_ids[1, 5] = 99  # a <mask> already there is special too
    special = (*SPECIAL_IDS, 99)
    masked_ids, labels = mask_text_tokens(input_ids, attention_mask, special, MASK_ID, 1.0)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special))
    assert torch.equal(masked_ids == MASK_ID, eligible | (input_ids == 99))
    assert torch.equal(labels, input_ids.masked_fill(~eligible, -100))  # the original ids, -100 elsewhere
    assert torch.equal(masked_ids[~eligible], input_ids[~eligible])
    untouched, labels = mask_text_tokens(input_ids, attention_mask, special, MASK_ID, 0.0)
    assert torch.equal(untouched, input_ids) and (labels == -100).all()


@pytest.mark.parametrize("probability", [0.15, 0.5])
def test_text_mask_rate_matches_the_probability(probability):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 99, (64, 128), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:, 100:] = 0
    input_ids[:, 0], input_ids[:, 100:] = 0, 1
    masked_ids, labels = mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, probability, generator)
    eligible = 64 * 99
    rate = (labels != -100).sum().item() / eligible
    assert abs(rate - probability) < 4 * math.sqrt(probability * (1 - probability) / eligible)
    assert (labels[:, 100:] == -100).all() and (labels[:, 0] == -100).all()
    assert torch.equal(masked_ids == MASK_ID, labels != -100)  # every masked token becomes <mask>: no 80/10/10


def test_text_masks_are_deterministic_given_a_generator():
    _, input_ids, attention_mask = make_inputs(batch_size=8, text_length=20)
    first = mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, 0.3, torch.Generator().manual_seed(1))
    again = mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, 0.3, torch.Generator().manual_seed(1))
    other = mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, 0.3, torch.Generator().manual_seed(2))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_text_masking_refuses_bad_arguments():
    _, input_ids, attention_mask = make_inputs()
    with pytest.raises(ValueError, match=r"`probability` must be a number in \[0, 1\], got 1.2"):
        mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, 1.2)
    with pytest.raises(ValueError, match=r"`probability` must be a number in \[0, 1\], got -0.5"):
        mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, -0.5)
    with pytest.raises(ValueError, match=r"integer token ids, got torch.float32"):
        mask_text_tokens(input_ids.float(), attention_mask, SPECIAL_IDS, MASK_ID)
    with pytest.raises(ValueError, match=r"`attention_mask` \(2, 3\) must match `input_ids` \(2, 7\)"):
        mask_text_tokens(input_ids, attention_mask[:, :3], SPECIAL_IDS, MASK_ID)
    with pytest.raises(ValueError, match=r"`mask_token_id` must be a non-negative integer, got -1"):
        mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, -1)
    with pytest.raises(ValueError, match=r"`special_ids` must be integer token ids"):
        mask_text_tokens(input_ids, attention_mask, ["<s>"], MASK_ID)
    with pytest.raises(ValueError, match=r"`generator` must be a torch.Generator or None, got Random"):
        mask_text_tokens(input_ids, attention_mask, SPECIAL_IDS, MASK_ID, 0.15, random.Random(0))


# ---------------------------------------------------------------- the model


def test_config_holds_the_codebook_and_the_loss_weights():
    config = BEiT3Config()
    assert (config.visual_vocab_size, config.text_loss_weight, config.image_loss_weight) == (8192, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"`visual_vocab_size` must be a positive integer, got 0"):
        BEiT3Config(visual_vocab_size=0)
    with pytest.raises(ValueError, match=r"`text_loss_weight` must be a non-negative finite number, got -1"):
        BEiT3Config(text_loss_weight=-1)
    with pytest.raises(ValueError, match=r"`image_loss_weight` must be a non-negative finite number, got nan"):
        BEiT3Config(image_loss_weight=float("nan"))
    with pytest.raises(ValueError, match="both 0"):
        BEiT3Config(text_loss_weight=0, image_loss_weight=0.0)


def test_head_and_mask_token_keys():
    """`text_head` and `image_head` next to the shared backbone; the mask token is the backbone's own (every
    released file has it, every head had it), so no other head's keys change."""
    model = build()
    keys = set(model.state_dict())
    assert {key for key in keys if not key.startswith("beit3.")} == {
        "text_head.weight", "text_head.bias", "image_head.weight", "image_head.bias"}
    assert model.text_head.weight.shape == (100, 32) and model.image_head.weight.shape == (VISUAL_VOCAB, 32)
    assert "beit3.embeddings.mask_token" in keys
    backbone_keys = set(BEiT3Model(tiny_config()).state_dict())
    assert {key.removeprefix("beit3.") for key in keys if key.startswith("beit3.")} == backbone_keys
    for head in HEADS[1:]:
        head_keys = {key.removeprefix("beit3.") for key in head(tiny_config()).state_dict() if key.startswith("beit3.")}
        assert head_keys == backbone_keys, head.__name__
    assert {key for key in BEiT3ForCaptioning(tiny_config()).state_dict() if not key.startswith("beit3.")} == {
        "lm_head.weight", "lm_head.bias"}


def test_text_head_is_not_tied_to_the_token_embedding(tmp_path):
    model = build()
    assert model.text_head.weight.data_ptr() != model.beit3.embeddings.token_embedding.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = BEiT3ForMaskedDataModeling.from_pretrained(tmp_path)
    assert not torch.equal(loaded.text_head.weight, loaded.beit3.embeddings.token_embedding.weight)
    assert torch.equal(loaded.text_head.weight, model.text_head.weight)


@pytest.mark.parametrize("kind", ["image", "text", "image_text"])
def test_each_batch_kind_predicts_its_masked_positions(kind):
    model = build()
    inputs = mdm_inputs(kind)
    with torch.no_grad():
        out = model(**inputs)
        backbone = model.beit3(
            **{key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask", "bool_masked_pos")
               if key in inputs}
        )
    assert isinstance(out, BEiT3ForMaskedDataModelingOutput) and list(out.keys())[0] == "loss"
    has_image, has_text = kind != "text", kind != "image"
    for part, present in (("image", has_image), ("text", has_text)):
        fields = (getattr(out, f"{part}_{name}") for name in ("logits", "loss", "accuracy"))
        assert all((value is not None) == present for value in fields), part
    expected_loss = 0
    if has_image:
        masked = inputs["bool_masked_pos"]
        assert out.image_logits.shape == (int(masked.sum()), VISUAL_VOCAB)
        states = backbone.image_last_hidden_state[:, 1:][masked]
        torch.testing.assert_close(out.image_logits, model.image_head(states))
        labels = inputs["image_labels"][masked]
        torch.testing.assert_close(out.image_loss, F.cross_entropy(out.image_logits, labels))
        torch.testing.assert_close(out.image_accuracy, (out.image_logits.argmax(-1) == labels).float().mean())
        expected_loss = expected_loss + out.image_loss
    if has_text:
        predicted = inputs["text_labels"] != -100
        assert out.text_logits.shape == (int(predicted.sum()), 100)
        torch.testing.assert_close(out.text_logits, model.text_head(backbone.text_last_hidden_state[predicted]))
        torch.testing.assert_close(out.text_loss, F.cross_entropy(out.text_logits, inputs["text_labels"][predicted]))
        expected_loss = expected_loss + out.text_loss
    torch.testing.assert_close(out.loss, expected_loss)


@pytest.mark.parametrize("kind, unused", [("image", ".text."), ("text", ".image.")])
def test_one_modality_uses_its_own_experts_only(kind, unused):
    """Image-only input takes the image-only path (text experts unused), text-only the text path."""
    model = build().train()
    model(**mdm_inputs(kind)).loss.backward()
    touched = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not any(unused in name for name in touched)
    assert any(".image." in name for name in touched) == (kind == "image")
    head = "image_head.weight" if kind == "image" else "text_head.weight"
    assert head in touched and ("image_head.weight" in touched) == (kind == "image")
    assert ("beit3.embeddings.mask_token" in touched) == (kind == "image")


def test_gradient_reaches_both_heads_the_mask_token_and_every_used_expert():
    model = build().train()
    model(**mdm_inputs("image_text")).loss.backward()
    untouched = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not untouched, untouched


def test_only_masked_positions_count():
    """Labels at unmasked patches (full-grid codes or -100) and at padding are never read."""
    model = build()
    inputs = mdm_inputs("image_text")
    masked = inputs["bool_masked_pos"]
    with torch.no_grad():
        out = model(**inputs)
        changed_labels = inputs["image_labels"].clone()
        changed_labels[~masked] = (changed_labels[~masked] + 1) % VISUAL_VOCAB
        changed = model(**{**inputs, "image_labels": changed_labels})
        minus = model(**{**inputs, "image_labels": inputs["image_labels"].masked_fill(~masked, -100)})
        padding_labels = inputs["text_labels"].clone()
        padding_labels[inputs["attention_mask"] == 0] = 5
        padded = model(**{**inputs, "text_labels": padding_labels})
    for other in (changed, minus, padded):
        assert torch.equal(other.loss, out.loss) and torch.equal(other.image_logits, out.image_logits)
        assert torch.equal(other.text_logits, out.text_logits)
    # a masked patch labelled -100 leaves the loss; changing a masked label changes it
    first = masked.nonzero()[0].tolist()
    ignored = inputs["image_labels"].clone()
    ignored[tuple(first)] = -100
    with torch.no_grad():
        fewer = model(**{**inputs, "image_labels": ignored})
    assert fewer.image_logits.shape == out.image_logits.shape and fewer.image_loss != out.image_loss
    keep = torch.ones(out.image_logits.shape[0], dtype=torch.bool)
    keep[0] = False
    torch.testing.assert_close(fewer.image_loss, F.cross_entropy(out.image_logits[keep],
                                                                 inputs["image_labels"][masked][keep]))


def test_mask_token_replaces_patches_before_the_position_embedding():
    model = build()
    embeddings = model.beit3.embeddings
    with torch.no_grad():
        embeddings.mask_token.normal_()
        pixel_values = make_inputs()[0]
        masked = torch.zeros(2, 16, dtype=torch.bool)
        masked[0, 3] = masked[1, 10] = True
        plain = embeddings.embed_image(pixel_values)
        out = embeddings.embed_image(pixel_values, masked)
    positions = embeddings.image_position_embedding.weight
    torch.testing.assert_close(out[0, 1 + 3], embeddings.mask_token[0, 0] + positions[1 + 3])
    torch.testing.assert_close(out[1, 1 + 10], embeddings.mask_token[0, 0] + positions[1 + 10])
    keep = torch.cat([torch.ones(2, 1, dtype=torch.bool), ~masked], dim=1)
    torch.testing.assert_close(out[keep], plain[keep])


def test_without_labels_the_text_head_reads_the_mask_tokens():
    model = build()
    inputs = mdm_inputs("image_text")
    inputs.pop("text_labels"), inputs.pop("image_labels")
    with torch.no_grad():
        out = model(**inputs)
    assert out.loss is None and out.text_loss is None and out.image_loss is None
    is_mask = (inputs["input_ids"] == MASK_ID) & inputs["attention_mask"].bool()
    assert out.text_logits.shape == (int(is_mask.sum()), 100)
    assert out.image_logits.shape == (int(inputs["bool_masked_pos"].sum()), VISUAL_VOCAB)


def test_loss_weights():
    inputs = mdm_inputs("image_text")
    with torch.no_grad():
        plain = build()(**inputs)
        weighted = build(text_loss_weight=0.25, image_loss_weight=2.0)(**inputs)
        image_only = build(text_loss_weight=0.0)(**inputs)
    torch.testing.assert_close(weighted.text_loss, plain.text_loss)
    torch.testing.assert_close(weighted.loss, 0.25 * plain.text_loss + 2.0 * plain.image_loss)
    torch.testing.assert_close(image_only.loss, plain.image_loss)
    with torch.no_grad():
        text_part = build(text_loss_weight=0.5)(**mdm_inputs("text"))
    torch.testing.assert_close(text_part.loss, 0.5 * text_part.text_loss)  # only the parts present


def test_nothing_masked_gives_zero_loss_that_backpropagates():
    model = build().train()
    inputs = mdm_inputs("image_text")
    inputs["bool_masked_pos"] = torch.zeros_like(inputs["bool_masked_pos"])
    inputs["text_labels"] = torch.full_like(inputs["text_labels"], -100)
    out = model(**inputs)
    assert out.image_logits.shape == (0, VISUAL_VOCAB) and out.text_logits.shape == (0, 100)
    assert out.loss.item() == 0 and out.text_accuracy.item() == 0
    out.loss.backward()  # no error: the zero loss is still part of the graph


def test_eager_and_sdpa_agree_and_tuples_on_request():
    model = build()
    inputs = mdm_inputs("image_text")
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**inputs)
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True, output_hidden_states=True)
        as_tuple = model(**inputs, return_dict=False)
    for key in ("loss", "text_logits", "image_logits"):
        torch.testing.assert_close(sdpa[key], eager[key], atol=1e-5, rtol=0)
    assert len(eager.hidden_states) == 3 and eager.attentions[0].shape == (2, 4, 17 + 7, 17 + 7)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], sdpa.loss)


def test_higher_resolution_with_interpolated_positions():
    model = build()
    masked = BlockMaskingGenerator(6)(torch.Generator().manual_seed(0))[None]
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 48, 48), bool_masked_pos=masked,
                    image_labels=torch.zeros(1, 36, dtype=torch.long), interpolate_pos_encoding=True)
    assert out.image_logits.shape == (int(masked.sum()), VISUAL_VOCAB)


def test_save_load_bit_exact_and_auto_class_offline(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(loaded) is BEiT3ForMaskedDataModeling and loaded.config.visual_vocab_size == VISUAL_VOCAB
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name
    inputs = mdm_inputs("image_text")
    with torch.no_grad():
        first, second = model(**inputs), loaded(**inputs)
    assert torch.equal(first.loss, second.loss) and torch.equal(first.image_logits, second.image_logits)
    assert type(AutoModelForPreTraining.from_config(model.config)) is BEiT3ForMaskedDataModeling
    backbone = AutoModel.from_pretrained(tmp_path)  # the pretrained backbone, without the heads
    assert type(backbone) is BEiT3Model
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, model.beit3.state_dict()[name]), name


def _bad(case):
    inputs = mdm_inputs("image_text")
    masked = inputs["bool_masked_pos"]
    if case == "image_labels_without_pixels":
        return {key: inputs[key] for key in ("input_ids", "image_labels")}
    if case == "image_labels_without_mask":
        return {**inputs, "bool_masked_pos": None}
    if case == "mask_without_pixels":
        return {key: inputs[key] for key in ("input_ids", "bool_masked_pos")}
    if case == "mask_shape":
        return {**inputs, "bool_masked_pos": masked[:, :5], "image_labels": None}
    if case == "mask_dtype":
        return {**inputs, "bool_masked_pos": masked.long()}
    if case == "image_labels_shape":
        return {**inputs, "image_labels": inputs["image_labels"][:, :5]}
    if case == "image_label_too_large":
        return {**inputs, "image_labels": inputs["image_labels"].masked_fill(masked, VISUAL_VOCAB)}
    if case == "image_label_negative":
        return {**inputs, "image_labels": inputs["image_labels"].masked_fill(masked, -3)}
    if case == "image_labels_float":
        return {**inputs, "image_labels": inputs["image_labels"].float()}
    if case == "text_labels_without_ids":
        return {key: inputs[key] for key in ("pixel_values", "bool_masked_pos", "text_labels")}
    if case == "text_labels_shape":
        return {**inputs, "text_labels": inputs["text_labels"][:, :3]}
    if case == "text_label_too_large":
        return {**inputs, "text_labels": inputs["text_labels"].masked_fill(inputs["text_labels"] != -100, 100)}
    if case == "nothing":
        return {}
    raise ValueError(case)


@pytest.mark.parametrize(
    "case, match",
    [
        ("image_labels_without_pixels", r"`image_labels` were given without `pixel_values`"),
        ("image_labels_without_mask", r"`image_labels` were given without `bool_masked_pos`"),
        ("mask_without_pixels", r"`bool_masked_pos` was given without `pixel_values`"),
        ("mask_shape", r"`bool_masked_pos` must have shape \(batch_size, num_patches\) = \(2, 16\), got \(2, 5\)"),
        ("mask_dtype", r"`bool_masked_pos` must be a bool tensor .* got dtype torch.int64"),
        ("image_labels_shape", r"`image_labels` must match `bool_masked_pos` in shape \(2, 16\).*got \(2, 5\)"),
        ("image_label_too_large", rf"`image_labels` contains {VISUAL_VOCAB}, outside \[0, {VISUAL_VOCAB}\) or -100"),
        ("image_label_negative", r"`image_labels` contains -3, outside"),
        ("image_labels_float", r"`image_labels` must hold integer visual-token ids, got dtype torch.float32"),
        ("text_labels_without_ids", r"`text_labels` were given without `input_ids`"),
        ("text_labels_shape", r"`text_labels` must match `input_ids` in shape \(2, 7\), got \(2, 3\)"),
        ("text_label_too_large", r"`text_labels` contains 100, outside \[0, 100\) or -100 .*`vocab_size` is 100"),
        ("nothing", r"needs `pixel_values`, `input_ids`, or both"),
    ],
)
def test_bad_inputs_name_the_value(case, match):
    with pytest.raises(ValueError, match=match):
        build()(**_bad(case))


# ---------------------------------------------------------------- against the official backbone


@needs_official
def test_converted_pretrained_file_matches_the_official_backbone_and_heads(tmp_path):
    """A file in the released pretrained layout with a small codebook, converted with `--task pretraining`: the
    logits equal the original
    `mlm_head` / `mim_head` applied to the torchscale backbone at the masked positions (its `vision_masked_position`
    is the same mask-token replacement)."""
    official = build_official("pretraining", codebook_size=VISUAL_VOCAB)
    checkpoint = tmp_path / "pretrained.pth"
    torch.save({"model": official.state_dict()}, checkpoint)
    model = convert_checkpoint(checkpoint, num_attention_heads=4, task="pretraining")
    assert type(model) is BEiT3ForMaskedDataModeling and model.config.visual_vocab_size == VISUAL_VOCAB
    with pytest.raises(ValueError, match=r"They fit the pretraining task: pass `--task pretraining`"):
        convert_checkpoint(checkpoint, num_attention_heads=4)  # detection takes 8192 rows only
    official_modules()
    inputs = mdm_inputs("image_text")
    with torch.no_grad():
        out = model(**inputs)
        encoded = official.beit3(
            textual_tokens=inputs["input_ids"], visual_tokens=inputs["pixel_values"],
            text_padding_position=inputs["attention_mask"] == 0, vision_masked_position=inputs["bool_masked_pos"],
        )["encoder_out"]
        image_only = official.beit3(textual_tokens=None, visual_tokens=inputs["pixel_values"],
                                    vision_masked_position=inputs["bool_masked_pos"])["encoder_out"]
        image_out = model(**{key: inputs[key] for key in ("pixel_values", "bool_masked_pos", "image_labels")})
    predicted = inputs["text_labels"] != -100
    expected_image = official.mim_head(encoded[:, 1:17][inputs["bool_masked_pos"]])
    expected_text = official.mlm_head(encoded[:, 17:][predicted])
    torch.testing.assert_close(out.image_logits, expected_image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.text_logits, expected_text, atol=1e-4, rtol=1e-4)
    expected_image_only = official.mim_head(image_only[:, 1:][inputs["bool_masked_pos"]])
    torch.testing.assert_close(image_out.image_logits, expected_image_only, atol=1e-4, rtol=1e-4)
