"""LoRA on the Multiway experts (per modality), adapter save/reload/merge, and QLoRA with bitsandbytes on CPU."""

import re

import pytest
import torch
from torch import nn

from beit3_hf import (
    BEiT3ForCaptioning,
    BEiT3ForImageClassification,
    BEiT3ForImageTextRetrieval,
    BEiT3ForVisualQuestionAnswering,
    BEiT3ForVisualReasoning,
    BEiT3Model,
)
from beit3_hf.collators import mask_caption_tokens
from beit3_hf.peft_utils import (
    LORA_TARGETS,
    apply_lora,
    build_config,
    head_module_names,
    load_model,
    lora_target_modules,
    parse_config_overrides,
    quantization_config,
)
from conftest import TINY, make_inputs, tiny_config

pytestmark = pytest.mark.kernel_sensitive  # quantised vs fp32 tolerances: CI reruns these

peft = pytest.importorskip("peft", reason="LoRA needs the optional `peft` package")

PAPER_LAYOUT = dict(multiway_attention=False, num_image_text_layers=1)  # shared attention, a VL expert in the top block


def adapted_modules(model) -> set[str]:
    """Names (below `beit3.encoder.layers.`) of the modules that received LoRA adapters."""
    return {
        re.sub(r".*encoder\.layers\.", "", name[: -len(".lora_A")])
        for name, _ in model.named_modules()
        if name.endswith(".lora_A")
    }


def expected(layers, attention, ffn):
    names = {f"{i}.self_attn.{p}{attention}" for i in layers for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    return names | {f"{i}.mlp.{expert}.{fc}" for i in layers for expert in ffn for fc in ("fc1", "fc2")}


# ----------------------------------------------------------------------------------------------------------------
# Heads and targets


@pytest.mark.parametrize(
    "model_class, heads",
    [
        (BEiT3Model, []),
        (BEiT3ForImageClassification, ["fc_norm", "classifier"]),
        (BEiT3ForVisualQuestionAnswering, ["pooler", "classifier"]),
        (BEiT3ForVisualReasoning, ["classifier"]),
        (BEiT3ForImageTextRetrieval, ["image_projection", "text_projection"]),
        (BEiT3ForCaptioning, ["lm_head"]),
    ],
)
def test_head_module_names(model_class, heads):
    assert head_module_names(model_class) == heads
    assert head_module_names(model_class(tiny_config())) == heads


@pytest.mark.parametrize(
    "target, attention, ffn",
    [("all", [".image", ".text"], ["image", "text"]), ("image", [".image"], ["image"]), ("text", [".text"], ["text"])],
)
def test_lora_targets_release_layout(target, attention, ffn):
    model = apply_lora(BEiT3ForVisualQuestionAnswering(tiny_config()), target)
    assert adapted_modules(model) == set().union(*(expected([0, 1], a, ffn) for a in attention))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name}
    assert trainable and all(".modules_to_save." in name for name in trainable)
    assert {name.split(".")[2] for name in trainable} == {"pooler", "classifier"}


def test_lora_targets_paper_layout():
    """Shared attention is adapted by "all" only; the VL expert too; per-modality targets adapt FFN experts only."""
    config = tiny_config(**PAPER_LAYOUT)
    all_names = adapted_modules(apply_lora(BEiT3ForVisualQuestionAnswering(config), "all"))
    assert all_names == expected([0, 1], "", ["image", "text"]) | {"1.mlp.image_text.fc1", "1.mlp.image_text.fc2"}
    for modality in ("image", "text"):
        names = adapted_modules(apply_lora(BEiT3ForVisualQuestionAnswering(config), modality))
        assert names == {f"{i}.mlp.{modality}.{fc}" for i in (0, 1) for fc in ("fc1", "fc2")}


def test_lora_target_validation():
    model = BEiT3ForImageClassification(tiny_config())
    with pytest.raises(ValueError, match="Unknown LoRA target 'vision'"):
        apply_lora(model, "vision")
    assert set(LORA_TARGETS) == {"all", "image", "text"}
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in lora_target_modules(model, "all"))


def _train_step(model, batch, steps=1):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("target", ["image", "text", "all"])
def test_lora_modality_changes_only_its_outputs(target):
    """After training on image-text input, image-only/text-only backbone outputs change only for adapted modalities."""
    torch.manual_seed(0)
    model = BEiT3ForVisualQuestionAnswering(tiny_config())
    pixel_values, input_ids, attention_mask = make_inputs()
    backbone = model.beit3

    def modality_outputs():
        with torch.no_grad():
            return (backbone(pixel_values=pixel_values).last_hidden_state,
                    backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state)

    before = modality_outputs()
    peft_model = apply_lora(model, target)
    batch = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                 labels=torch.rand(2, 3))
    _train_step(peft_model, batch, steps=2)  # LoRA B starts at 0: the second step moves the output
    after = modality_outputs()
    for modality, old, new in zip(("image", "text"), before, after):
        changed = not torch.allclose(old, new, atol=1e-6)
        assert changed == (target in (modality, "all")), (modality, (old - new).abs().max())


def test_lora_save_reload_and_merge(tmp_path):
    torch.manual_seed(0)
    base = BEiT3ForVisualQuestionAnswering(tiny_config())
    base.save_pretrained(tmp_path / "base")
    model = apply_lora(base, "all")
    pixel_values, input_ids, attention_mask = make_inputs()
    inputs = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    _train_step(model, dict(inputs, labels=torch.rand(2, 3)), steps=2)
    with torch.no_grad():
        trained = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")

    reloaded = peft.PeftModel.from_pretrained(
        BEiT3ForVisualQuestionAnswering.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, trained, rtol=0, atol=1e-6)
        merged = reloaded.merge_and_unload()
        assert type(merged) is BEiT3ForVisualQuestionAnswering
        assert not any("lora_" in name for name, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**inputs).logits, trained, rtol=0, atol=1e-5)
        fresh = BEiT3ForVisualQuestionAnswering.from_pretrained(tmp_path / "base").eval()
        assert not torch.allclose(fresh(**inputs).logits, trained, atol=1e-4)  # the adapters did change the model


# ----------------------------------------------------------------------------------------------------------------
# Quantisation


def test_quantization_config():
    assert quantization_config() is None
    config = quantization_config(load_in_8bit=True, model_class=BEiT3ForVisualQuestionAnswering)
    assert config.load_in_8bit and config.llm_int8_skip_modules == ["pooler", "classifier"]
    config = quantization_config(load_in_4bit=True, model_class=BEiT3ForCaptioning)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.llm_int8_skip_modules == ["lm_head"]
    with pytest.raises(ValueError, match="not both"):
        quantization_config(True, True)


QUANT_SIZE = dict(hidden_size=64, intermediate_size=128)  # 4-bit CPU kernels want in_features >= the 64 blocksize


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("model_class", [BEiT3ForImageClassification, BEiT3ForVisualQuestionAnswering])
def test_qlora_gradients_reach_only_lora(bits, model_class):
    """QLoRA: quantised experts, fp heads; with checkpointing, only LoRA + heads get gradients, image-only too."""
    bnb = pytest.importorskip("bitsandbytes", reason="quantisation needs the optional `bitsandbytes` package")
    torch.manual_seed(0)
    model = load_model(
        model_class,
        config_overrides={**TINY, **QUANT_SIZE},
        num_labels=3,
        load_in_8bit=bits == 8,
        load_in_4bit=bits == 4,
        gradient_checkpointing=True,
    )
    quantized = bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit
    assert isinstance(model.beit3.encoder.layers[0].mlp.image.fc1, quantized)
    assert isinstance(model.beit3.encoder.layers[0].self_attn.q_proj.text, quantized)
    for head in head_module_names(model):
        assert not any(isinstance(m, quantized) for m in model.get_submodule(head).modules()), head
    assert model.is_activation_checkpointing

    pixel_values, input_ids, attention_mask = make_inputs()
    inputs = {"pixel_values": pixel_values}
    if model_class is not BEiT3ForImageClassification:  # image-only: text would be refused
        inputs.update(input_ids=input_ids, attention_mask=attention_mask)
    with torch.no_grad():  # an evaluation before training (bitsandbytes' CPU 4-bit repacking must not break it)
        model.eval()(**inputs)
    model = apply_lora(model, "all")
    model.train()
    if model_class is BEiT3ForImageClassification:  # image-only: the case reentrant checkpointing gets wrong
        loss = model(pixel_values=pixel_values, labels=torch.tensor([0, 2])).loss
        used = "image"
    else:
        loss = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                     labels=torch.rand(2, 3)).loss
        used = None
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert all("lora_" in name or ".modules_to_save." in name for name in grads), sorted(grads)
    lora = {name for name, _ in model.named_parameters() if "lora_" in name}
    expected_lora = {name for name in lora if used is None or f".{used}." in name}
    assert expected_lora and expected_lora <= set(grads)
    # B starts at zero, so A's first gradient is zero; B's is not (in the first block, all of which reaches the head)
    first_block_b = [name for name in expected_lora if ".lora_B." in name and ".layers.0." in name]
    assert first_block_b and all(grads[name].abs().sum() > 0 for name in first_block_b)
    assert any(".modules_to_save." in name for name in grads)


# ----------------------------------------------------------------------------------------------------------------
# Configs and captioning masks


def test_config_overrides_and_build_config(tmp_path):
    assert parse_config_overrides("hidden_size=32, multiway_attention=False,hidden_act=gelu") == dict(
        hidden_size=32, multiway_attention=False, hidden_act="gelu"
    )
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("hidden_size")
    assert build_config("large", "image_size=384").hidden_size == 1024
    tiny_config().save_pretrained(tmp_path)
    assert build_config(str(tmp_path / "config.json"), {"num_hidden_layers": 3}).num_hidden_layers == 3
    with pytest.raises(ValueError, match="hidden_size"):
        build_config(None, "hidden_size=30,num_attention_heads=4")  # validated, not set after the fact
    with pytest.raises(ValueError, match="neither a preset"):
        build_config("huge")


def test_load_model_rejects_checkpoint_plus_config(tmp_path):
    BEiT3ForImageClassification(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not both"):
        load_model(BEiT3ForImageClassification, str(tmp_path), config_overrides="hidden_size=64")


def test_mask_caption_tokens_follows_unilm():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([2, 3, 7, 12])
    input_ids = torch.full((4, 12), 1)
    attention_mask = torch.zeros(4, 12, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        input_ids[row, :n] = torch.arange(10, 10 + n)
        input_ids[row, 0], input_ids[row, n - 1] = 0, 2
        attention_mask[row, :n] = 1
    mask_id, vocab = 99, 100
    outcomes = torch.zeros(3)
    for _ in range(300):
        masked, labels = mask_caption_tokens(input_ids, attention_mask, mask_id, vocab, 0.6, generator)
        for row, n in enumerate(lengths.tolist()):
            positions = (labels[row] != -100).nonzero().flatten()
            assert len(positions) == max(1, min(int(n * 0.6 + 0.5), n - 1))
            assert positions.min() >= 1 and positions.max() <= n - 1  # never <s>, never padding; </s> allowed
            assert torch.equal(labels[row, positions], input_ids[row, positions])
            unmasked = labels[row] == -100
            assert torch.equal(masked[row, unmasked], input_ids[row, unmasked])
            new, original = masked[row, positions], input_ids[row, positions]
            replaced = (new != mask_id) & (new != original)
            outcomes += torch.stack([(new == mask_id).sum(), (new == original).sum(), replaced.sum()]).float()
            assert (new[replaced] >= 3).all() and (new[replaced] < vocab).all()
    fractions = outcomes / outcomes.sum()
    torch.testing.assert_close(fractions, torch.tensor([0.8, 0.1, 0.1]), rtol=0, atol=0.03)
    with pytest.raises(ValueError, match="mask_prob"):
        mask_caption_tokens(input_ids, attention_mask, mask_id, vocab, 0.0)
