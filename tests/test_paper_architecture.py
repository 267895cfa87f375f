"""The paper's Multiway Transformer (shared attention, V/L FFN experts, a VL FFN expert in the top blocks) as a
configuration of the same model, next to the released "decoupled" layout.

Parameter counts are checked against a formula written here from the layer shapes, never against the model's own
grouping; routing is observed with forward hooks on the experts themselves.
"""

import resource

import pytest
import torch
from peft import LoraConfig, get_peft_model

import beit3_hf
from beit3_hf.convert import main as convert_main
from beit3_hf.modeling_beit3 import BEiT3Multiway
from beit3_hf.parameter_groups import PARAMETER_GROUPS, count_parameters_by_group
from conftest import make_inputs, tiny_config
from official import build_official, needs_official

pytestmark = pytest.mark.kernel_sensitive  # numbers compared across kernels and orders: CI reruns these

NUM_LAYERS, NUM_IMAGE_TEXT_LAYERS = 4, 2
PAPER = dict(multiway_attention=False, num_image_text_layers=NUM_IMAGE_TEXT_LAYERS, num_hidden_layers=NUM_LAYERS)
EXPERTS = ("image", "text", "image_text")
HEAD_CLASSES = [
    beit3_hf.BEiT3ForImageClassification,
    beit3_hf.BEiT3ForVisualQuestionAnswering,
    beit3_hf.BEiT3ForVisualReasoning,
    beit3_hf.BEiT3ForImageTextRetrieval,
    beit3_hf.BEiT3ForCaptioning,
    beit3_hf.BEiT3ForMaskedDataModeling,
]
# heads whose backbone pass is joint image-text input (the others encode each modality on its own)
JOINT_HEADS = {"BEiT3ForVisualQuestionAnswering", "BEiT3ForVisualReasoning", "BEiT3ForCaptioning",
               "BEiT3ForMaskedDataModeling"}


def paper_config(**overrides):
    return tiny_config(**{**PAPER, **overrides})


def paper_model(model_class=beit3_hf.BEiT3Model, seed=0, **overrides):
    torch.manual_seed(seed)
    return model_class(paper_config(**overrides)).eval()


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(batch_size=2, text_length=7)


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts
# ----------------------------------------------------------------------------------------------------------------


def expected_groups(config, multiway_attention, num_image_text_layers):
    """The groups from the layer shapes alone: Linear = in*out + out, LayerNorm = 2*width."""
    hidden, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers

    def linear(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    def layer_norm(width):
        return 2 * width

    attention = layer_norm(hidden) + 4 * linear(hidden, hidden) + layer_norm(hidden)  # LN1, q/k/v/out, sub-LN
    # LN2, fc1, sub-LN, fc2
    ffn_expert = layer_norm(hidden) + linear(hidden, ffn) + layer_norm(ffn) + linear(ffn, hidden)
    num_patches = (config.image_size // config.patch_size) ** 2
    embeddings = (
        config.num_channels * config.patch_size**2 * hidden + hidden  # patch conv
        + 2 * hidden  # CLS and mask tokens
        + (num_patches + 1) * hidden  # image positions
        + config.vocab_size * hidden + config.max_text_positions * hidden  # tokens and text positions
    )
    final_layer_norm_experts = 3 if num_image_text_layers else 2
    return {
        "shared_attention": 0 if multiway_attention else layers * attention,
        "image_attention": layers * attention if multiway_attention else 0,
        "text_attention": layers * attention if multiway_attention else 0,
        "image_ffn": layers * ffn_expert,
        "text_ffn": layers * ffn_expert,
        "image_text_ffn": num_image_text_layers * ffn_expert,
        "embeddings": embeddings,
        "other": final_layer_norm_experts * layer_norm(hidden),
    }


@pytest.mark.parametrize(
    "multiway_attention, num_image_text_layers", [(True, 0), (False, NUM_IMAGE_TEXT_LAYERS), (False, 0), (True, 1)]
)
def test_parameter_groups_match_the_formula(multiway_attention, num_image_text_layers):
    config = paper_config(multiway_attention=multiway_attention, num_image_text_layers=num_image_text_layers)
    model = beit3_hf.BEiT3Model(config)
    counts = count_parameters_by_group(model)
    assert tuple(counts) == PARAMETER_GROUPS
    assert counts == expected_groups(config, multiway_attention, num_image_text_layers)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


def test_parameter_groups_put_heads_in_other():
    model = paper_model(beit3_hf.BEiT3ForVisualQuestionAnswering)
    counts = count_parameters_by_group(model)
    backbone = expected_groups(model.config, False, NUM_IMAGE_TEXT_LAYERS)
    head_parameters = sum(p.numel() for p in model.pooler.parameters()) + sum(
        p.numel() for p in model.classifier.parameters()
    )
    assert counts == {**backbone, "other": backbone["other"] + head_parameters}
    with pytest.raises(ValueError, match="one BEiT3Model"):
        count_parameters_by_group(torch.nn.Linear(2, 2))


def test_giant_preset_builds_on_meta_and_has_the_paper_sizes():
    config = beit3_hf.BEiT3Config.from_preset("giant")
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (40, 1408, 6144)
    assert (config.num_attention_heads, config.patch_size) == (16, 14)
    assert config.multiway_attention is False and config.num_image_text_layers == 3

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.device("meta"):
        model = beit3_hf.BEiT3Model(config)
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert peak_growth_mib < 512, f"building on meta grew the peak memory by {peak_growth_mib:.0f} MiB (fp32: ~7 GiB)"

    counts = count_parameters_by_group(model)
    assert counts == expected_groups(config, False, 3)
    paper = {"shared_attention": 317e6, "image_ffn": 692e6, "text_ffn": 692e6, "image_text_ffn": 52e6}
    for group, figure in paper.items():
        assert counts[group] == pytest.approx(figure, rel=0.01), group
    assert counts["image_attention"] == counts["text_attention"] == 0
    total = sum(counts.values())
    assert total == sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(1.85e9, rel=0.01)  # the paper's "1.9B"
    assert [layer_idx for layer_idx, layer in enumerate(model.encoder.layers) if hasattr(layer.mlp, "image_text")] == [
        37, 38, 39
    ]


# ----------------------------------------------------------------------------------------------------------------
# Layout and routing
# ----------------------------------------------------------------------------------------------------------------


def test_released_setting_is_the_default_and_has_no_shared_or_vl_modules():
    config = beit3_hf.BEiT3Config()
    assert config.multiway_attention is True and config.num_image_text_layers == 0
    keys = beit3_hf.BEiT3Model(tiny_config()).state_dict().keys()
    assert "encoder.layers.0.self_attn.q_proj.image.weight" in keys
    assert "encoder.layers.0.layer_norm1.text.weight" in keys
    assert not [key for key in keys if "image_text" in key]


def test_paper_layout_keys_and_plain_modules():
    model = paper_model()
    keys = model.state_dict().keys()
    for layer_idx in range(NUM_LAYERS):
        layer = model.encoder.layers[layer_idx]
        prefix = f"encoder.layers.{layer_idx}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert type(getattr(layer.self_attn, name)) is torch.nn.Linear
            assert prefix + f"self_attn.{name}.weight" in keys
        assert type(layer.layer_norm1) is torch.nn.LayerNorm
        assert type(layer.self_attn.sub_layer_norm) is torch.nn.LayerNorm
        is_top = layer_idx >= NUM_LAYERS - NUM_IMAGE_TEXT_LAYERS
        assert (prefix + "mlp.image_text.fc1.weight" in keys) == is_top
        assert (prefix + "layer_norm2.image_text.weight" in keys) == is_top
        for expert in EXPERTS[: 3 if is_top else 2]:
            assert type(getattr(layer.mlp, expert).fc1) is torch.nn.Linear
    assert "final_layer_norm.image_text.weight" in keys


def spy_on_experts(model):
    """Forward hooks on each expert of every FFN and of the final LayerNorm, recording (where, expert, tokens)."""
    calls = []
    multiways = {f"layer{i}": layer.mlp for i, layer in enumerate(model.encoder.layers)}
    multiways["final_layer_norm"] = model.final_layer_norm
    for where, multiway in multiways.items():
        assert isinstance(multiway, BEiT3Multiway)
        for expert in EXPERTS:
            if hasattr(multiway, expert):
                hook = lambda module, args, output, where=where, expert=expert: calls.append(  # noqa: E731
                    (where, expert, args[0].shape[1])
                )
                getattr(multiway, expert).register_forward_hook(hook)
    return calls


def expected_calls(kind, num_image_tokens, text_length):
    """The paper's rule: image-only -> image experts, text-only -> text experts, image-text -> modality experts
    below the top `NUM_IMAGE_TEXT_LAYERS` blocks and the VL expert for every token in them (and in the final LayerNorm)."""
    calls = []
    for layer_idx in range(NUM_LAYERS):
        is_top = layer_idx >= NUM_LAYERS - NUM_IMAGE_TEXT_LAYERS
        if kind == "image":
            calls.append((f"layer{layer_idx}", "image", num_image_tokens))
        elif kind == "text":
            calls.append((f"layer{layer_idx}", "text", text_length))
        elif is_top:  # joint input, top layer: the VL expert sees every token
            calls.append((f"layer{layer_idx}", "image_text", num_image_tokens + text_length))
        else:  # joint input, lower layer: each modality its own expert
            calls += [(f"layer{layer_idx}", "image", num_image_tokens), (f"layer{layer_idx}", "text", text_length)]
    final = {"image": ("image", num_image_tokens), "text": ("text", text_length),
             "joint": ("image_text", num_image_tokens + text_length)}[kind]
    return calls + [("final_layer_norm", *final)]


def test_vl_expert_is_used_only_in_top_layers_and_only_for_joint_input(inputs):
    pixel_values, input_ids, attention_mask = inputs
    model = paper_model()
    num_image_tokens, text_length = model.config.num_patches + 1, input_ids.shape[1]
    calls = spy_on_experts(model)
    runs = {
        "image": dict(pixel_values=pixel_values),
        "text": dict(input_ids=input_ids, attention_mask=attention_mask),
        "joint": dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask),
    }
    with torch.no_grad():
        for kind, kwargs in runs.items():
            calls.clear()
            model(**kwargs)
            assert calls == expected_calls(kind, num_image_tokens, text_length), kind


def test_vl_expert_weights_change_only_joint_outputs(inputs):
    """The top block's VL expert has no effect on image-only or text-only outputs, bit for bit."""
    pixel_values, input_ids, attention_mask = inputs
    model = paper_model()
    runs = {
        "image": dict(pixel_values=pixel_values),
        "text": dict(input_ids=input_ids, attention_mask=attention_mask),
        "joint": dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask),
    }
    with torch.no_grad():
        before = {kind: model(**kwargs).last_hidden_state for kind, kwargs in runs.items()}
        model.encoder.layers[-1].mlp.image_text.fc2.bias.add_(1.0)
        after = {kind: model(**kwargs).last_hidden_state for kind, kwargs in runs.items()}
    assert torch.equal(before["image"], after["image"])
    assert torch.equal(before["text"], after["text"])
    assert not torch.allclose(before["joint"], after["joint"])


def test_cached_text_decoding_keeps_using_the_vl_expert(inputs):
    """Text decoded against a cached image is still image-text input: same result as one full pass."""
    from transformers import DynamicCache

    pixel_values, input_ids, _ = inputs
    model = paper_model()
    with torch.no_grad():
        full = model(pixel_values=pixel_values, input_ids=input_ids, causal_text=True).last_hidden_state
        cache = DynamicCache(config=model.config)
        first = model(pixel_values=pixel_values, input_ids=input_ids[:, :3], causal_text=True, cache=cache)
        num_image_tokens = first.image_last_hidden_state.shape[1]
        rest = model(input_ids=input_ids[:, 3:], causal_text=True, cache=cache,
                     num_cached_image_tokens=num_image_tokens)
    torch.testing.assert_close(torch.cat([first.last_hidden_state, rest.last_hidden_state], dim=1), full)


def test_cached_caption_generation_equals_uncached():
    """`generate` encodes the image once and then feeds text only: the VL expert must still serve those steps."""
    model = paper_model(beit3_hf.BEiT3ForCaptioning)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights large enough that the argmax is decisive
        for name, param in model.named_parameters():
            if not name.endswith("bias") and "norm" not in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
        pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
        runs = [
            model.generate(pixel_values=pixel_values, max_new_tokens=6, eos_token_id=None, use_cache=use_cache,
                           return_dict_in_generate=True, output_logits=True)
            for use_cache in (True, False)
        ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for cached, uncached in zip(runs[0].logits, runs[1].logits):
        torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=0)


def attention_parameter_names(model):
    return {name for name, _ in model.named_parameters() if ".layer_norm1." in name or ".self_attn." in name}


def grads_from(model, **kwargs):
    """Names of the parameters a backward pass from this input reaches (non-zero gradient)."""
    model.zero_grad(set_to_none=True)
    model(**kwargs).last_hidden_state.pow(2).mean().backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_shared_attention_is_one_set_of_weights(inputs):
    pixel_values, input_ids, attention_mask = inputs
    for multiway_attention in (False, True):
        model = paper_model(multiway_attention=multiway_attention).train()
        attention = attention_parameter_names(model)
        from_image = grads_from(model, pixel_values=pixel_values) & attention
        from_text = grads_from(model, input_ids=input_ids, attention_mask=attention_mask) & attention
        if multiway_attention:  # the release: each modality reaches its own experts only
            assert from_image and from_text and not from_image & from_text
        else:  # the paper: both reach every attention parameter, and they are the same tensors
            assert from_image == from_text == attention
            assert len(attention) == NUM_LAYERS * 12  # LN1, q/k/v/out, sub-LN: weight and bias each


# ----------------------------------------------------------------------------------------------------------------
# Heads, save/load, training
# ----------------------------------------------------------------------------------------------------------------


def head_batch(model_class, inputs):
    pixel_values, input_ids, attention_mask = inputs
    batch_size = pixel_values.shape[0]
    generator = torch.Generator().manual_seed(1)
    name = model_class.__name__
    if name == "BEiT3ForImageClassification":
        return dict(pixel_values=pixel_values, labels=torch.tensor([0, 2]))
    if name == "BEiT3ForVisualQuestionAnswering":
        return dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                    labels=torch.rand(batch_size, 3, generator=generator))
    if name == "BEiT3ForVisualReasoning":
        pairs = torch.stack([pixel_values, pixel_values.flip(0)], dim=1)
        return dict(pixel_values=pairs, input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([1, 0]))
    if name == "BEiT3ForImageTextRetrieval":
        return dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, return_loss=True)
    if name == "BEiT3ForMaskedDataModeling":  # an image-text pair: masked patches and masked words
        bool_masked_pos = torch.zeros(batch_size, 16, dtype=torch.bool)
        bool_masked_pos[:, 3:9] = True
        masked = input_ids.clone()
        masked[:, 2::2] = 99
        text_labels = input_ids.masked_fill((attention_mask == 0) | (masked != 99), -100)
        return dict(pixel_values=pixel_values, input_ids=masked, attention_mask=attention_mask,
                    bool_masked_pos=bool_masked_pos, image_labels=torch.randint(0, 8192, (batch_size, 16)),
                    text_labels=text_labels)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    masked = input_ids.clone()
    masked[:, 2::2] = 99  # mask_token_id of the tiny vocabulary
    return dict(pixel_values=pixel_values, input_ids=masked, attention_mask=attention_mask, labels=labels)


@pytest.mark.parametrize("model_class", HEAD_CLASSES, ids=lambda cls: cls.__name__)
def test_every_head_runs_forward_and_backward(model_class, inputs):
    model = paper_model(model_class).train()
    loss = model(**head_batch(model_class, inputs)).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "beit3.encoder.layers.0.self_attn.q_proj.weight" in grads
    uses_vl_expert = any(".image_text." in name for name in grads)
    assert uses_vl_expert == (model_class.__name__ in JOINT_HEADS)


def test_save_load_round_trip(tmp_path, inputs):
    pixel_values, input_ids, attention_mask = inputs
    model = paper_model(beit3_hf.BEiT3ForVisualQuestionAnswering)
    model.save_pretrained(tmp_path)
    loaded, info = beit3_hf.BEiT3ForVisualQuestionAnswering.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    assert loaded.config.multiway_attention is False and loaded.config.num_image_text_layers == NUM_IMAGE_TEXT_LAYERS
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
        actual = loaded.eval()(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(actual, expected)
    # the Auto classes pick the same architecture back up from config.json alone
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(tmp_path)
    assert count_parameters_by_group(backbone)["image_text_ffn"] == count_parameters_by_group(model)["image_text_ffn"]


def test_training_a_few_steps_reduces_the_loss(inputs):
    model = paper_model(beit3_hf.BEiT3ForVisualQuestionAnswering).train()
    batch = head_batch(beit3_hf.BEiT3ForVisualQuestionAnswering, inputs)
    batch["labels"] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])  # answers the model can fit exactly
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    vl_weight = model.beit3.encoder.layers[-1].mlp.image_text.fc1.weight
    vl_before = vl_weight.detach().clone()
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    assert not torch.equal(vl_weight, vl_before)  # the VL expert was trained too


# ----------------------------------------------------------------------------------------------------------------
# PEFT, quantisation, converter
# ----------------------------------------------------------------------------------------------------------------


def lora_grads(peft_model, **kwargs):
    """Names of the LoRA B matrices a backward pass from this input reaches (B starts at zero, A gets no gradient)."""
    peft_model.zero_grad(set_to_none=True)
    peft_model(**kwargs)[0].pow(2).mean().backward()
    return {name for name, p in peft_model.named_parameters() if "lora_B" in name and p.grad is not None
            and p.grad.abs().sum() > 0}


def test_lora_on_shared_attention_projections(inputs):
    pixel_values, input_ids, attention_mask = inputs
    peft_model = get_peft_model(paper_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapted = {name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert len(adapted) == 2 * NUM_LAYERS
    assert all(name.endswith(("self_attn.q_proj", "self_attn.v_proj")) for name in adapted)
    # one adapter per shared projection, trained by image-only and by text-only input alike
    from_image = lora_grads(peft_model, pixel_values=pixel_values)
    from_text = lora_grads(peft_model, input_ids=input_ids, attention_mask=attention_mask)
    assert len(from_image) == 2 * NUM_LAYERS and from_image == from_text


def test_lora_on_the_vl_expert(inputs):
    pixel_values, input_ids, attention_mask = inputs
    model = paper_model(beit3_hf.BEiT3ForVisualQuestionAnswering)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["mlp.image_text.fc1"]))
    adapted = sorted(name for name, module in peft_model.named_modules() if hasattr(module, "lora_A"))
    assert len(adapted) == NUM_IMAGE_TEXT_LAYERS
    assert all(".mlp.image_text.fc1" in name for name in adapted)
    grads = lora_grads(peft_model, pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    assert len(grads) == NUM_IMAGE_TEXT_LAYERS


def test_8bit_loading_of_the_paper_layout(tmp_path, inputs):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install bitsandbytes==0.50.2)")
    from bitsandbytes.nn import Linear8bitLt
    from transformers import BitsAndBytesConfig

    pixel_values, input_ids, attention_mask = inputs
    model = paper_model(beit3_hf.BEiT3ForVisualQuestionAnswering)
    model.save_pretrained(tmp_path)
    quantization_config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["pooler", "classifier"])
    quantized = beit3_hf.BEiT3ForVisualQuestionAnswering.from_pretrained(
        tmp_path, quantization_config=quantization_config
    ).eval()
    layers = quantized.beit3.encoder.layers
    assert isinstance(layers[0].self_attn.q_proj, Linear8bitLt)  # the shared projection
    assert layers[0].self_attn.q_proj.weight.dtype == torch.int8
    assert isinstance(layers[-1].mlp.image_text.fc1, Linear8bitLt)  # the VL expert
    assert type(quantized.classifier.dense2) is torch.nn.Linear
    assert count_parameters_by_group(quantized) == count_parameters_by_group(model)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
        actual = quantized(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
        quantized.beit3(pixel_values=pixel_values)  # image-only and text-only routes run too
        quantized.beit3(input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(actual.float(), expected, atol=1e-2, rtol=0)  # logits span ~0.15; 8-bit error ~3e-3


@needs_official
def test_converted_release_checkpoints_keep_the_decoupled_layout(tmp_path):
    checkpoint = tmp_path / "original.pth"
    torch.save({"model": build_official("vqa").state_dict()}, checkpoint)
    convert_main([str(checkpoint), str(tmp_path / "converted"), "--num-attention-heads", "4"])
    converted = beit3_hf.BEiT3ForVisualQuestionAnswering.from_pretrained(tmp_path / "converted")
    assert converted.config.multiway_attention is True and converted.config.num_image_text_layers == 0
    counts = count_parameters_by_group(converted)
    assert counts["shared_attention"] == counts["image_text_ffn"] == 0
    assert counts["image_attention"] == counts["text_attention"] > 0


def test_config_fields_round_trip_and_validate():
    config = beit3_hf.BEiT3Config.from_preset("giant", num_image_text_layers=5)
    restored = beit3_hf.BEiT3Config.from_dict(config.to_dict())
    assert restored.multiway_attention is False and restored.num_image_text_layers == 5
    with pytest.raises(ValueError, match="num_image_text_layers"):
        tiny_config(num_image_text_layers=3)  # more than the 2 tiny layers
    with pytest.raises(ValueError, match="num_image_text_layers"):
        tiny_config(num_image_text_layers=-1)
