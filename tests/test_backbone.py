"""BEiT3Backbone: AutoBackbone conventions, shapes and strides, necks, weights shared with BEiT3Model, bad input."""

import re

import pytest
import torch
from transformers import AutoBackbone

import beit3_hf
from beit3_hf import BEiT3Backbone
from conftest import tiny_config


def patch_grids(model: beit3_hf.BEiT3Model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Every hidden state of BEiT3Model's image path, CLS dropped, as (batch, hidden, rows, columns) maps."""
    batch_size, _, height, width = pixel_values.shape
    patch = model.config.patch_size
    hidden_states = model(pixel_values=pixel_values, interpolate_pos_encoding=True, output_hidden_states=True)
    return [
        state[:, 1:].transpose(1, 2).reshape(batch_size, -1, height // patch, width // patch)
        for state in hidden_states.hidden_states
    ]


def test_auto_backbone_and_stage_conventions():
    config = tiny_config()
    backbone = AutoBackbone.from_config(config)
    assert type(backbone) is BEiT3Backbone
    assert backbone.stage_names == ["stem", "stage1", "stage2"]
    assert backbone.out_features == ["stage2"] and backbone.out_indices == [2]  # the last block by default
    assert backbone.channels == [32] and backbone.strides == [8]
    # the image path only: no text expert, text table, mask token or final LayerNorm
    names = [name for name, _ in backbone.named_parameters()]
    assert not [name for name in names if ".text." in name or "token_embedding" in name or "final_layer_norm" in name]
    assert "beit3.embeddings.mask_token" not in names
    # reloading keeps the selection
    assert beit3_hf.BEiT3Config.from_dict(tiny_config(out_indices=[0, 2]).to_dict()).out_features == ["stem", "stage2"]


@pytest.mark.parametrize("size", [(32, 32), (16, 40), (48, 24)])
def test_feature_maps_equal_the_model_image_path(size):
    """Any multiple of the patch, position table interpolated by default; every stage equals BEiT3Model's."""
    torch.manual_seed(0)
    model = beit3_hf.BEiT3Model(tiny_config()).eval()
    backbone = BEiT3Backbone(tiny_config(out_indices=[0, 1, 2])).eval()
    missing, unexpected = backbone.load_state_dict(
        {f"beit3.{key}": value for key, value in model.state_dict().items()}, strict=False
    )
    assert not missing  # everything the backbone has comes from the model
    assert unexpected and all(".text." in k or "token_embedding" in k or "text_position" in k or "mask_token" in k
                              or "final_layer_norm" in k for k in unexpected)
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        output = backbone(pixel_values, output_hidden_states=True)
        expected = patch_grids(model, pixel_values)
    assert len(output.feature_maps) == 3
    for feature_map, grid in zip(output.feature_maps, expected):
        assert feature_map.shape == (2, 32, size[0] // 8, size[1] // 8)
        torch.testing.assert_close(feature_map, grid, rtol=0, atol=0)
    assert len(output.hidden_states) == 3 and output.hidden_states[0].shape[1] == 1 + (size[0] // 8) * (size[1] // 8)
    assert backbone(pixel_values).hidden_states is None  # only on request


@pytest.mark.parametrize("cls", [beit3_hf.BEiT3Model, beit3_hf.BEiT3ForImageClassification])
def test_from_pretrained_of_converted_checkpoints(tmp_path, cls, caplog):
    """The bare model and a fine-tuned head load the same backbone weights; the head weights are named as skipped."""
    torch.manual_seed(0)
    model = cls(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    backbone, info = BEiT3Backbone.from_pretrained(tmp_path, out_indices=[1, 2], output_loading_info=True)
    assert not info["missing_keys"]
    head_keys = {key.split(".")[0] for key in info["unexpected_keys"]}
    assert head_keys == (set() if cls is beit3_hf.BEiT3Model else {"classifier", "fc_norm"})
    if head_keys:
        assert "classifier, fc_norm" in caplog.text
    pixel_values = torch.randn(1, 3, 24, 32)
    base = model if cls is beit3_hf.BEiT3Model else model.beit3
    with torch.no_grad():
        for feature_map, grid in zip(backbone(pixel_values).feature_maps, patch_grids(base, pixel_values)[1:]):
            torch.testing.assert_close(feature_map, grid, rtol=0, atol=0)
    backbone.save_pretrained(tmp_path / "backbone")
    reloaded = BEiT3Backbone.from_pretrained(tmp_path / "backbone")
    assert reloaded.out_features == ["stage1", "stage2"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).feature_maps[0], backbone(pixel_values).feature_maps[0])


@pytest.mark.parametrize(
    "overrides, channels, strides",
    [
        (dict(backbone_neck="simple_pyramid", backbone_neck_channels=16), [16] * 4, [2, 4, 8, 16]),
        (dict(backbone_neck="simple_pyramid", backbone_neck_scales=(2, 1, 0.5)), [256] * 3, [4, 8, 16]),
        (dict(backbone_neck="fpn", num_hidden_layers=4, out_indices=[1, 2, 3, 4]), [32] * 4, [2, 4, 8, 16]),
    ],
)
def test_necks_give_strides_4_to_32_of_patch_16(overrides, channels, strides):
    """Patch 8 here, so strides 2/4/8/16 are what patch 16 makes 4/8/16/32; the maps follow the input's grid."""
    torch.manual_seed(0)
    backbone = AutoBackbone.from_config(tiny_config(**overrides))
    assert backbone.channels == channels and backbone.strides == strides
    pixel_values = torch.randn(2, 3, 32, 64)
    feature_maps = backbone(pixel_values).feature_maps
    assert [tuple(m.shape) for m in feature_maps] == [(2, c, 32 // s, 64 // s) for c, s in zip(channels, strides)]
    sum(m.square().mean() for m in feature_maps).backward()
    assert all(p.grad is not None for p in backbone.parameters())  # every weight takes part


def test_bad_input_names_the_value():
    backbone = AutoBackbone.from_config(tiny_config())
    with pytest.raises(ValueError, match="multiples of the patch size \\(8\\), got 30x32"):
        backbone(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="image size \\(16x16\\)"):
        backbone(torch.randn(1, 3, 16, 16), interpolate_pos_encoding=False)
    with pytest.raises(ValueError, match="got \\(3, 32, 32\\)"):
        backbone(torch.randn(3, 32, 32))
    for out_indices in ([3], [-4], [0, 7]):
        with pytest.raises(ValueError, match=re.escape(f"`out_indices` {out_indices} has {out_indices[-1]}")):
            tiny_config(out_indices=out_indices)
    with pytest.raises(ValueError, match="out_features must be a subset"):
        tiny_config(out_features=["stage9"])
    with pytest.raises(ValueError, match="needs four stages, got out_features=\\['stage2'\\]"):
        tiny_config(backbone_neck="fpn")
    with pytest.raises(ValueError, match="one stage, got out_features=\\['stage1', 'stage2'\\]"):
        tiny_config(backbone_neck="simple_pyramid", out_indices=[1, 2])
    with pytest.raises(ValueError, match="got \\[3.0\\]"):
        tiny_config(backbone_neck="simple_pyramid", backbone_neck_scales=[3])
    with pytest.raises(ValueError, match="'deconv'"):
        tiny_config(backbone_neck="deconv")


# ---------------------------------------------------------------------------------------------------------------------
# Inside transformers' dense-prediction models, through `backbone_config`


def tiny_upernet(num_labels=5):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone_config = tiny_config(backbone_neck="simple_pyramid", backbone_neck_channels=16)
    config = UperNetConfig(backbone_config=backbone_config, hidden_size=16, auxiliary_in_channels=16,
                           auxiliary_channels=16, pool_scales=[1, 2], num_labels=num_labels)
    return UperNetForSemanticSegmentation(config)


def tiny_rt_detr(num_labels=4):
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    backbone_config = tiny_config(backbone_neck="simple_pyramid", backbone_neck_channels=16,
                                  backbone_neck_scales=[2, 1, 0.5])
    config = RTDetrConfig(
        backbone_config=backbone_config, encoder_in_channels=[16, 16, 16], feat_strides=[4, 8, 16],
        encoder_hidden_dim=16, encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16,
        decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32, decoder_layers=2, decoder_attention_heads=2,
        num_queries=10, num_denoising=5, num_labels=num_labels,
    )
    return RTDetrForObjectDetection(config)


def train_step(model, **inputs):
    model.train()
    loss = model(**inputs).loss
    assert torch.isfinite(loss)
    loss.backward()
    backbone_grads = [p.grad for n, p in model.named_parameters() if ".beit3.encoder." in n]
    assert backbone_grads and all(g is not None and g.abs().sum() > 0 for g in backbone_grads)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return loss


def check_save_load(model, tmp_path, pixel_values, output):
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert type(reloaded.config.backbone_config) is beit3_hf.BEiT3Config
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(output(reloaded(pixel_values=pixel_values)), output(model(pixel_values=pixel_values)))


def test_upernet_with_beit3_backbone_trains_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = tiny_upernet()
    assert type(model.backbone) is BEiT3Backbone
    pixel_values, labels = torch.randn(2, 3, 32, 48), torch.randint(0, 5, (2, 32, 48))
    labels[0, :4] = 255  # the ignore index
    train_step(model, pixel_values=pixel_values, labels=labels)
    assert model(pixel_values=pixel_values).logits.shape == (2, 5, 32, 48)
    check_save_load(model, tmp_path, pixel_values, lambda out: out.logits)


def test_rt_detr_with_beit3_backbone_trains_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = tiny_rt_detr()
    assert type(model.model.backbone.model) is BEiT3Backbone
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = [
        dict(class_labels=torch.tensor([1, 3]), boxes=torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])),
        dict(class_labels=torch.tensor([0]), boxes=torch.tensor([[0.5, 0.5, 0.4, 0.4]])),
    ]
    train_step(model, pixel_values=pixel_values, labels=labels)
    model.eval()
    with torch.no_grad():
        output = model(pixel_values=pixel_values)
    assert output.logits.shape == (2, 10, 4) and output.pred_boxes.shape == (2, 10, 4)
    check_save_load(model, tmp_path, pixel_values, lambda out: (out.logits, out.pred_boxes))
