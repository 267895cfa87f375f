"""The same model on a GPU: attention backends, bf16, torch.compile, cached generation and bitsandbytes on CUDA.

Skipped without CUDA (CI has none); benchmarks/run_gpu.sh runs this file on the GPU machine. To check the test
logic itself on a CPU: `BEIT3_TEST_DEVICE=cpu python -m pytest tests/test_cuda.py`.
"""

import os

import pytest
import torch

import beit3_hf
from beit3_hf.peft_utils import apply_lora, load_model
from conftest import TINY, make_inputs, tiny_config

DEVICE = os.environ.get("BEIT3_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device (set BEIT3_TEST_DEVICE=cpu to dry-run)"
)
# wider than the CPU tests' tiny model so that GPU kernels (and 4-bit blocks, 64 wide) see realistic shapes
SIZE = dict(hidden_size=128, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 convolutions/matmuls would move fp32 results by ~1e-3; the fp32 comparisons below want full precision."""
    if DEVICE != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_device(*tensors):
    return [tensor.to(DEVICE) for tensor in tensors]


def real_tokens(attention_mask, num_image_tokens):
    image = torch.ones(attention_mask.shape[0], num_image_tokens, dtype=torch.bool, device=attention_mask.device)
    return torch.cat([image, attention_mask.bool()], dim=1)


def build(model_class, attn_implementation, seed=0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(**{**SIZE, **overrides})
    return model_class._from_config(config, attn_implementation=attn_implementation).to(DEVICE).eval()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "flex_attention"])
def test_attention_backends_agree_with_eager(attn_implementation):
    """fp32: the fast backends equal eager (padding included); bf16 autocast stays within bf16 noise of fp32."""
    eager = build(beit3_hf.BEiT3Model, "eager")
    fast = build(beit3_hf.BEiT3Model, attn_implementation)
    pixel_values, input_ids, attention_mask = on_device(*make_inputs(batch_size=3, text_length=9))
    real = real_tokens(attention_mask, eager.config.num_patches + 1)
    with torch.no_grad():
        reference = eager(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        output = fast(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        torch.testing.assert_close(output.last_hidden_state[real], reference.last_hidden_state[real],
                                   atol=1e-4, rtol=1e-4)
        with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16):
            low = fast(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    difference = (low.last_hidden_state.float() - reference.last_hidden_state)[real].abs()
    assert difference.max() < 0.1 and difference.mean() < 0.02, (difference.max(), difference.mean())


def test_training_step_matches_between_backends():
    """One fp32 training step on the device: sdpa and eager give the same loss and gradients."""
    models = [build(beit3_hf.BEiT3ForVisualQuestionAnswering, name, num_labels=5) for name in ("eager", "sdpa")]
    pixel_values, input_ids, attention_mask = on_device(*make_inputs(batch_size=3, text_length=9))
    labels = torch.rand(3, 5, device=DEVICE)
    grads = []
    for model in models:
        model.train()
        loss = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("model_class", [beit3_hf.BEiT3ForImageClassification, beit3_hf.BEiT3ForImageTextRetrieval])
def test_torch_compile_matches_eager_mode(model_class):
    """torch.compile gives the same outputs and gradients as the uncompiled model (fullgraph: no graph breaks)."""
    model = build(model_class, "sdpa")
    compiled = torch.compile(model, fullgraph=True)
    pixel_values, input_ids, attention_mask = on_device(*make_inputs(batch_size=3, text_length=9))
    if model_class is beit3_hf.BEiT3ForImageClassification:
        kwargs = dict(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2], device=DEVICE))
    else:
        kwargs = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, return_loss=True)
    model.train()
    reference = model(**kwargs)
    reference.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    output = compiled(**kwargs)
    output.loss.backward()
    torch.testing.assert_close(output.loss, reference.loss, atol=1e-4, rtol=1e-4)
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], atol=1e-4, rtol=1e-3, msg=name)


def test_cached_generation_on_device():
    """Greedy captioning on the device: the cached decoding equals a full forward per step, batched."""
    model = build(beit3_hf.BEiT3ForCaptioning, "sdpa", seed=3)
    with torch.no_grad():  # weights large enough for decisive argmaxes (the default init is nearly uniform)
        for name, param in model.named_parameters():
            if not name.endswith("bias") and "norm" not in name:
                param.copy_(0.2 * torch.randn_like(param))
    pixel_values = torch.randn(2, 3, 32, 32, device=DEVICE)
    prompt = torch.zeros(2, 1, dtype=torch.long, device=DEVICE)  # <s>
    steps = 6
    generated = model.generate(pixel_values=pixel_values, input_ids=prompt, max_new_tokens=steps, do_sample=False,
                               num_beams=1, min_new_tokens=steps)
    assert generated.device.type == torch.device(DEVICE).type
    sequences = prompt
    mask = torch.full((2, 1), model.config.mask_token_id, device=DEVICE)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(pixel_values=pixel_values, input_ids=torch.cat([sequences, mask], dim=1)).logits
            logits[:, -1, model.config.eos_token_id] = float("-inf")  # min_new_tokens
            sequences = torch.cat([sequences, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated[:, : sequences.shape[1]], sequences)


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_inference_and_qlora(bits):
    """bitsandbytes on the device: the quantised model stays close to full precision, and QLoRA training learns."""
    bnb = pytest.importorskip("bitsandbytes", reason="quantisation needs the optional `bitsandbytes` package")
    overrides = {**TINY, **SIZE}
    torch.manual_seed(0)
    full = load_model(beit3_hf.BEiT3ForImageClassification, config_overrides=overrides, num_labels=3)
    full.to(DEVICE).eval()
    torch.manual_seed(0)
    quantized = load_model(beit3_hf.BEiT3ForImageClassification, config_overrides=overrides, num_labels=3,
                           load_in_8bit=bits == 8, load_in_4bit=bits == 4, gradient_checkpointing=True)
    layer = quantized.beit3.encoder.layers[0].mlp.image.fc1
    assert isinstance(layer, bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit)
    assert layer.weight.device.type == torch.device(DEVICE).type
    pixel_values = torch.randn(8, 3, 32, 32, device=DEVICE)
    quantized.eval()
    with torch.no_grad():
        expected = full(pixel_values=pixel_values).logits
        logits = quantized(pixel_values=pixel_values).logits.float()
    relative = (logits - expected).norm() / expected.norm()
    assert relative < (0.05 if bits == 8 else 0.25), relative

    model = apply_lora(quantized, "image")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1], device=DEVICE)
    losses = []
    for _ in range(30):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        trained = {name for name, p in model.named_parameters() if p.grad is not None}
        assert trained and all("lora_" in name or ".modules_to_save." in name for name in trained)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
