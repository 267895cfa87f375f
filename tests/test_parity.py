"""Parity with the official code: torchscale's BEiT3 backbone and unilm's heads, on random weights, through the
converter CLI (original keys -> our keys -> strict load -> save_pretrained -> from_pretrained)."""

import json

import pytest
import torch

import beit3_hf
from beit3_hf.convert import main as convert_main
from conftest import make_inputs

from official import build_official, needs_official, official_modules

pytestmark = [needs_official, pytest.mark.kernel_sensitive]

ATOL = 1e-4
IMPLEMENTATIONS = ["eager", "sdpa"]


def convert(tmp_path, official_model, wrap_key="model", extra_args=()):
    checkpoint = tmp_path / "original.pth"
    torch.save({wrap_key: official_model.state_dict()}, checkpoint)
    output_dir = tmp_path / "converted"
    convert_main([str(checkpoint), str(output_dir), "--num-attention-heads", "4", *extra_args])
    return output_dir


def load(output_dir, attn_implementation):
    architecture = json.loads((output_dir / "config.json").read_text())["architectures"][0]
    model_class = getattr(beit3_hf, architecture)
    return model_class.from_pretrained(output_dir, attn_implementation=attn_implementation).eval()


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(batch_size=3, text_length=9, pad_from=5)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_backbone(tmp_path, inputs, attn_implementation):
    pixel_values, input_ids, attention_mask = inputs
    official = build_official("backbone")
    model = load(convert(tmp_path, official), attn_implementation)
    assert isinstance(model, beit3_hf.BEiT3Model)
    padding = attention_mask == 0
    real = attention_mask.bool()
    with torch.no_grad():
        # image only
        expected = official.beit3(textual_tokens=None, visual_tokens=pixel_values)["encoder_out"]
        close(model(pixel_values=pixel_values).last_hidden_state, expected)
        # text only, padded
        expected = official.beit3(textual_tokens=input_ids, visual_tokens=None, text_padding_position=padding)
        ours = model(input_ids=input_ids, attention_mask=attention_mask)
        close(ours.last_hidden_state[real], expected["encoder_out"][real])
        # joint, padded text
        expected = official.beit3(textual_tokens=input_ids, visual_tokens=pixel_values,
                                  text_padding_position=padding)["encoder_out"]
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        num_image_tokens = ours.image_last_hidden_state.shape[1]
        close(ours.image_last_hidden_state, expected[:, :num_image_tokens])
        close(ours.text_last_hidden_state[real], expected[:, num_image_tokens:][real])
        # masked image modeling input
        bool_masked_pos = torch.rand(pixel_values.shape[0], 16, generator=torch.Generator().manual_seed(1)) < 0.4
        expected = official.beit3(textual_tokens=None, visual_tokens=pixel_values,
                                  vision_masked_position=bool_masked_pos)["encoder_out"]
        close(model(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state, expected)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_image_classification(tmp_path, inputs, attn_implementation):
    pixel_values, _, _ = inputs
    official = build_official("image_classification", num_labels=5)
    model = load(convert(tmp_path, official, wrap_key="module"), attn_implementation)
    assert isinstance(model, beit3_hf.BEiT3ForImageClassification)
    assert model.config.use_final_layer_norm is False and model.config.num_labels == 5
    with torch.no_grad():
        close(model(pixel_values=pixel_values).logits, official(image=pixel_values))


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_visual_question_answering(tmp_path, inputs, attn_implementation):
    pixel_values, input_ids, attention_mask = inputs
    official = build_official("vqa", num_labels=7)
    model = load(convert(tmp_path, official), attn_implementation)
    assert isinstance(model, beit3_hf.BEiT3ForVisualQuestionAnswering)
    assert model.config.use_final_layer_norm is False
    labels = torch.rand(pixel_values.shape[0], 7)
    with torch.no_grad():
        expected = official(image=pixel_values, question=input_ids, padding_mask=attention_mask == 0)
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    close(ours.logits, expected)
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(expected, labels) * 7
    close(ours.loss, expected_loss)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_visual_reasoning(tmp_path, inputs, attn_implementation):
    pixel_values, input_ids, attention_mask = inputs
    second = torch.flip(pixel_values, dims=[0])
    official = build_official("visual_reasoning", num_labels=2)
    model = load(convert(tmp_path, official), attn_implementation)
    assert isinstance(model, beit3_hf.BEiT3ForVisualReasoning)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        expected = official(image_a=pixel_values, image_b=second, text_description=input_ids,
                            padding_mask=attention_mask == 0)
        pairs = torch.stack([pixel_values, second], dim=1)
        ours = model(pixel_values=pairs, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    close(ours.logits, expected)
    close(ours.loss, torch.nn.functional.cross_entropy(expected, labels))


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_image_text_retrieval(tmp_path, inputs, attn_implementation):
    pixel_values, input_ids, attention_mask = inputs
    official = build_official("retrieval")
    model = load(convert(tmp_path, official), attn_implementation)
    assert isinstance(model, beit3_hf.BEiT3ForImageTextRetrieval)
    with torch.no_grad():
        image_embeds, text_embeds = official(image=pixel_values, text_description=input_ids,
                                             padding_mask=attention_mask == 0, only_infer=True)
        expected_loss, _, _ = official(image=pixel_values, text_description=input_ids,
                                       padding_mask=attention_mask == 0)
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                     return_loss=True)
    close(ours.image_embeds, image_embeds)
    close(ours.text_embeds, text_embeds)
    close(ours.logits_per_image, official.logit_scale.exp() * image_embeds @ text_embeds.t())
    close(ours.logits_per_text, ours.logits_per_image.t())
    close(ours.loss, expected_loss)
    close(model.get_image_features(pixel_values).pooler_output, image_embeds)
    close(model.get_text_features(input_ids, attention_mask).pooler_output, text_embeds)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_captioning(tmp_path, inputs, attn_implementation):
    pixel_values, input_ids, attention_mask = inputs
    official = build_official("captioning")
    model = load(convert(tmp_path, official), attn_implementation)
    assert isinstance(model, beit3_hf.BEiT3ForCaptioning)
    masked = torch.zeros_like(input_ids, dtype=torch.bool)
    masked[:, 2::3] = True
    masked &= attention_mask.bool()
    input_ids = input_ids.masked_fill(masked, model.config.mask_token_id)
    with torch.no_grad():
        expected, _ = official(image=pixel_values, text_ids=input_ids, padding_mask=attention_mask == 0,
                               language_masked_pos=masked)
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    assert ours.logits.shape == (*input_ids.shape, model.config.vocab_size)
    close(ours.logits[masked], expected)
    # every real text position, not only the masked ones
    with torch.no_grad():
        expected_all, _ = official(image=pixel_values, text_ids=input_ids, padding_mask=attention_mask == 0,
                                   language_masked_pos=attention_mask)
    close(ours.logits[attention_mask.bool()], expected_all)


def test_position_tables_drop_the_fairseq_rows(tmp_path):
    official = build_official("backbone")
    model = load(convert(tmp_path, official), "eager")
    torch.testing.assert_close(
        model.embeddings.image_position_embedding.weight, official.beit3.encoder.embed_positions.A.weight[2:]
    )
    assert model.config.max_text_positions == official.beit3.encoder.embed_positions.B.weight.shape[0] - 2


def test_interpolated_positions_match_unilm_resize(tmp_path):
    """A 32px model run at 48px equals unilm's `load_model_and_may_interpolate` resize of the same table."""
    _, _, ft = official_modules()
    official = build_official("image_classification", num_labels=3)
    model = load(convert(tmp_path, official), "eager")

    big = build_official("image_classification", num_labels=3, image_size=48)
    state = official.state_dict()
    table = state["beit3.encoder.embed_positions.A.weight"]
    extra, grid = table[:3], table[3:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    state["beit3.encoder.embed_positions.A.weight"] = torch.cat([extra, grid.permute(0, 2, 3, 1).flatten(0, 2)])
    big.load_state_dict(state)
    pixel_values = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        close(model(pixel_values=pixel_values, interpolate_pos_encoding=True).logits, big(image=pixel_values))
