"""BEiT-3 weights in timm's and the transformers PR's layouts: detection, conversion, and refusal at load time.

Both layouts are produced here from the official model's random weights: timm's by its published conversion
(`_convert_beit3` in timm 1.0's `vision_transformer.py`, re-stated in `timm_state_dict`), the PR's by the module
names of its modeling file (huggingface/transformers#39534). Converting either must give exactly the tensors that
converting the original gives; timm's own model is compared too where timm imports (it needs torchvision).
"""

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForVisualQuestionAnswering

import beit3_hf
from beit3_hf.convert import convert_checkpoint, convert_state_dict, main
from beit3_hf.foreign_layouts import detect_source_layout, to_unilm_layout

from official import build_official, needs_official

DIMS = dict(hidden_size=32, layers=2, heads=4, ffn=64, image_size=32, patch_size=8, vocab_size=100)


def timm_state_dict(original: dict) -> dict:
    """timm 1.0.31 `vision_transformer._convert_beit3`: the image expert only, timm ViT names, fused q/k/v."""
    state_dict = dict(original)
    for key in ("beit3.text_embed.weight", "beit3.vision_embed.mask_token"):
        state_dict.pop(key, None)
    rules = [
        (r"beit3\.", ""), (r"vision_embed\.cls_token", "cls_token"), (r"vision_embed\.", "patch_embed."),
        (r"embed_positions\.", "pos_embed."), (r"encoder\.", ""), (r"layers\.", "blocks."),
        (r"ffn_layernorm\.", "norm."), (r"ffn\.", "mlp."), (r"self_attn_layer_norm\.", "norm1."),
        (r"self_attn\.", "attn."), (r"final_layer_norm\.", "norm2."), (r"inner_attn_ln", "norm"),
        (r"out_proj", "proj"), (r"\.A\.", "."),
    ]  # fmt: skip
    renamed = {}
    for key, value in state_dict.items():
        if ".B." in key:
            continue
        for old, new in rules:
            key = re.sub(old, new, key)
        if key == "pos_embed.weight":
            renamed["pos_embed"] = value[2:].unsqueeze(0)
        else:
            renamed[key] = value
    out, stash = {}, {}
    for key, value in renamed.items():
        match = re.fullmatch(r"blocks\.(\d+)\.attn\.(q|k|v)_proj\.(weight|bias)", key)
        if not match:
            out[key] = value
            continue
        parts = stash.setdefault((match[1], match[3]), {})
        parts[match[2]] = value
        if len(parts) == 3:
            out[f"blocks.{match[1]}.attn.qkv.{match[3]}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def pr_state_dict(original: dict, swap_experts: bool = False) -> dict:
    """The transformers PR's names (`Beit3Model`: `text_embedding`, `vision_embedding.projection`,
    `encoder.embed_positions.{image,text}`, `self_attn.{query,key,value,out}_proj`, `encoder.fc_norm`; heads
    `classifier`, `beit3.pooler`, `vision_/language_classifier`, `mlm_classifier`)."""
    experts = {"A": "text", "B": "image"} if swap_experts else {"A": "image", "B": "text"}
    rules = [
        (r"^beit3\.text_embed\.", "beit3.text_embedding."),
        (r"^beit3\.vision_embed\.proj\.", "beit3.vision_embedding.projection."),
        (r"^beit3\.vision_embed\.", "beit3.vision_embedding."),
        (r"\.self_attn\.q_proj\.", ".self_attn.query_proj."), (r"\.self_attn\.k_proj\.", ".self_attn.key_proj."),
        (r"\.self_attn\.v_proj\.", ".self_attn.value_proj."),
        (r"^beit3\.encoder\.layer_norm\.", "beit3.encoder.fc_norm."),
        (r"^pooler\.", "beit3.pooler."), (r"^head\.", "classifier."), (r"^vision_head\.", "vision_classifier."),
        (r"^language_head\.", "language_classifier."), (r"^mlm_head\.", "mlm_classifier."),
        (r"\.(A|B)(\.|$)", lambda m: f".{experts[m[1]]}{m[2]}"),
    ]  # fmt: skip
    out = {}
    for key, value in original.items():
        for old, new in rules:
            key = re.sub(old, new, key)
        out[key] = value
    return out


def assert_same_tensors(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


@needs_official
@pytest.mark.parametrize("task", ["image_classification", "vqa", "visual_reasoning", "retrieval", "captioning"])
@pytest.mark.parametrize("swap_experts", [False, True])
def test_transformers_pr_layout_converts_to_the_same_tensors(task, swap_experts):
    original = build_official(task, num_labels=3, **DIMS).state_dict()
    pr = pr_state_dict(original, swap_experts=swap_experts)
    assert detect_source_layout(pr) == "transformers_pr"
    unilm, layout = to_unilm_layout(pr, swap_experts=swap_experts)
    assert layout == "transformers_pr"
    assert_same_tensors(convert_state_dict(unilm, task), convert_state_dict(original, task))


@needs_official
def test_transformers_pr_directory_is_refused_at_load_and_converted_by_the_cli(tmp_path):
    official = build_official("vqa", num_labels=3, **DIMS)
    pr_dir = tmp_path / "beit3_pr_vqa"
    pr_dir.mkdir()
    save_file({k: v.contiguous() for k, v in pr_state_dict(official.state_dict()).items()}, pr_dir / "model.safetensors")
    # the PR's config fields (transformers#39534 `Beit3Config`), under our model type
    pr_config = {"model_type": "beit3", "architectures": ["Beit3ForQuestionAnswering"], "embed_dim": 32, "layers": 2,
                 "hidden_size": 64, "num_attention_heads": 4, "img_size": 32, "patch_size": 16, "sub_layernorm": True}  # fmt: skip
    (pr_dir / "config.json").write_text(json.dumps(pr_config))
    with pytest.raises(ValueError, match=r"transformers PR's BEiT-3 .*`beit3-convert CHECKPOINT_DIR OUTPUT_DIR`"):
        AutoModelForVisualQuestionAnswering.from_pretrained(pr_dir)

    main([str(pr_dir), str(tmp_path / "out"), "--num-attention-heads", "4"])
    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "out")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    input_ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    attention_mask = (input_ids != 1).long()
    with torch.no_grad():
        expected = official(image=pixel_values, question=input_ids, padding_mask=1 - attention_mask)
        actual = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@needs_official
def test_weights_of_another_layout_under_our_config_are_refused_with_the_command(tmp_path):
    """A directory whose config is ours but whose weights are not (they would all be unexpected keys)."""
    original = build_official("image_classification", num_labels=3, **DIMS).state_dict()
    beit3_hf.BEiT3ForImageClassification(beit3_hf.BEiT3Config(**_tiny())).config.save_pretrained(tmp_path)
    for layout, state_dict in {"timm's": timm_state_dict(original), "transformers PR's": pr_state_dict(original)}.items():
        save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp_path / "model.safetensors")
        with pytest.raises(ValueError, match=rf"{layout} .*layout .*`beit3-convert {re.escape(str(tmp_path))} OUTPUT_DIR`"):
            beit3_hf.BEiT3ForImageClassification.from_pretrained(tmp_path)


def _tiny():
    return dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                patch_size=8, vocab_size=100, num_labels=3, use_final_layer_norm=False)  # fmt: skip


@needs_official
def test_timm_layout_converts_to_an_image_only_classifier(tmp_path):
    official = build_official("image_classification", num_labels=3, **DIMS)
    timm = timm_state_dict(official.state_dict())
    assert detect_source_layout(timm) == "timm" and not any(".B." in key or "text" in key for key in timm)
    torch.save(timm, tmp_path / "timm_beit3.pth")
    model = convert_checkpoint(tmp_path / "timm_beit3.pth", tmp_path / "out", num_attention_heads=4)
    assert isinstance(model, beit3_hf.BEiT3ForImageClassification) and model.config.image_only
    names = [name for name, _ in model.named_parameters()]
    assert not any(".text." in name or "token_embedding" in name or "text_position" in name for name in names)
    full = convert_checkpoint(_save(official, tmp_path / "full.pth"), num_attention_heads=4)
    expected = {k: v for k, v in full.state_dict().items() if ".text." not in k and "text_position" not in k
                and "token_embedding" not in k and "mask_token" not in k}  # fmt: skip
    assert_same_tensors({k: v for k, v in model.state_dict().items() if "mask_token" not in k}, expected)

    reloaded = beit3_hf.BEiT3ForImageClassification.from_pretrained(tmp_path / "out")
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, official(image=pixel_values), atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match=r"image-only .* cannot take `input_ids`"):
            reloaded.beit3(pixel_values=pixel_values, input_ids=torch.tensor([[0, 5, 2]] * 2))


@needs_official
def test_timm_backbone_and_bad_layouts(tmp_path):
    official = build_official("backbone", **DIMS)
    timm = timm_state_dict(official.state_dict())  # the final norm becomes timm's `layer_norm` ...
    timm = {("norm." + k.split(".", 1)[1] if k.startswith("layer_norm.") else k): v for k, v in timm.items()}
    torch.save(timm, tmp_path / "timm_pt.pth")  # ... which timm's ViT holds as `norm`
    model = convert_checkpoint(tmp_path / "timm_pt.pth", num_attention_heads=4)
    assert type(model) is beit3_hf.BEiT3Model and model.config.image_only and model.config.use_final_layer_norm
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = official.beit3(textual_tokens=None, visual_tokens=pixel_values)["encoder_out"]
        torch.testing.assert_close(model(pixel_values=pixel_values).last_hidden_state, expected, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match=r"unknown layout.*timm \(blocks\.0\.attn\.qkv\.weight\).*"
                                         r"its 2 keys are backbone\.conv1\.\* \(2\)"):  # fmt: skip
        detect_source_layout({"backbone.conv1.weight": torch.zeros(1), "backbone.conv1.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"Recognised the timm layout .* these 1 have no place in it: \['extra\.w'\]"):
        to_unilm_layout({**timm, "extra.w": torch.zeros(1)})
    with pytest.raises(ValueError, match="already in this package's layout"):
        detect_source_layout(model.state_dict())


def _save(module, path):
    torch.save({"model": module.state_dict()}, path)
    return path


def test_timm_model_parity_where_timm_imports():
    vision_transformer = pytest.importorskip(
        "timm.models.vision_transformer", reason="timm imports torchvision, not installed here (it would replace torch)"
    )
    timm_model = vision_transformer.beit3_base_patch16_224(
        pretrained=False, num_classes=3, depth=2, embed_dim=32, num_heads=4, img_size=32, patch_size=8
    ).eval()
    with torch.no_grad():
        for param in timm_model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    unilm, layout = to_unilm_layout(timm_model.state_dict())
    assert layout == "timm"
    config = beit3_hf.BEiT3Config(**{**_tiny(), "image_only": True})
    model = beit3_hf.BEiT3ForImageClassification(config).eval()
    model.load_state_dict(convert_state_dict(unilm, "image_classification"))
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, timm_model(pixel_values), atol=1e-5, rtol=0)
