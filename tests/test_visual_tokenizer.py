"""The BEiT v2 visual tokenizer (VQ-KD): the converter against a from-scratch re-implementation of the release's
computation, the quantizer against independent computations, the pixel convention, save/load, Auto classes,
training, usage figures and bad input."""

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from beit3_hf import BEiT3ImageProcessor, BEiT3VectorQuantizer, BEiT3VisualTokenizer, BEiT3VisualTokenizerConfig
from beit3_hf.convert import (
    convert_checkpoint,
    convert_visual_tokenizer_state_dict,
    infer_visual_tokenizer_config,
    load_converted,
    main,
)
from beit3_hf.modeling_visual_tokenizer import codebook_usage

# The teachers' input normalisation, as unilm's ScalingLayerForClip / ScalingLayerForIM hold it.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

TINY = dict(width=64, depth=2, decoder_width=32, decoder_depth=1, image_size=32, patch_size=8, codes=32,
            code_dim=8, teacher_dim=24)  # fmt: skip
HEADS = 4


# ----------------------------------------------------------------------------------------------------------------
# The release, re-implemented from its semantics (unilm beit2 modeling_vqkd.py / norm_ema_quantizer.py)
# ----------------------------------------------------------------------------------------------------------------


def release_state_dict(width, depth, decoder_width, decoder_depth, image_size, patch_size, codes, code_dim,
                       teacher_dim, teacher="clip", seed=0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random weights in the key layout of a released VQ-KD file, teacher, scaling layer and dead buffers included."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.2):
        return torch.randn(*shape, generator=generator) * std

    grid = image_size // patch_size
    state_dict = {}

    def vit(prefix, in_channels, patch, dim, layers):
        state_dict[f"{prefix}.patch_embed.proj.weight"] = rand(dim, in_channels, patch, patch)
        state_dict[f"{prefix}.patch_embed.proj.bias"] = rand(dim)
        state_dict[f"{prefix}.cls_token"] = rand(1, 1, dim)
        state_dict[f"{prefix}.pos_embed"] = rand(1, grid * grid + 1, dim)
        for i in range(layers):
            block = f"{prefix}.blocks.{i}"
            for norm in ("norm1", "norm2"):
                state_dict[f"{block}.{norm}.weight"] = 1 + rand(dim, std=0.1)
                state_dict[f"{block}.{norm}.bias"] = rand(dim, std=0.1)
            state_dict[f"{block}.attn.qkv.weight"] = rand(3 * dim, dim)
            state_dict[f"{block}.attn.q_bias"] = rand(dim)
            state_dict[f"{block}.attn.v_bias"] = rand(dim)
            state_dict[f"{block}.attn.proj.weight"] = rand(dim, dim)
            state_dict[f"{block}.attn.proj.bias"] = rand(dim)
            state_dict[f"{block}.mlp.fc1.weight"] = rand(4 * dim, dim)
            state_dict[f"{block}.mlp.fc1.bias"] = rand(4 * dim)
            state_dict[f"{block}.mlp.fc2.weight"] = rand(dim, 4 * dim)
            state_dict[f"{block}.mlp.fc2.bias"] = rand(dim)
        state_dict[f"{prefix}.fc_norm.weight"] = 1 + rand(dim, std=0.1)
        state_dict[f"{prefix}.fc_norm.bias"] = rand(dim, std=0.1)

    vit("encoder", 3, patch_size, width, depth)
    vit("decoder", code_dim, 1, decoder_width, decoder_depth)
    for name, dim, out in (("encode_task_layer", width, code_dim), ("decode_task_layer", decoder_width, teacher_dim)):
        state_dict[f"{name}.0.weight"], state_dict[f"{name}.0.bias"] = rand(dim, dim), rand(dim)
        state_dict[f"{name}.2.weight"], state_dict[f"{name}.2.bias"] = rand(out, dim), rand(out)
    state_dict["quantize.embedding.weight"] = F.normalize(rand(codes, code_dim), dim=-1)
    state_dict["quantize.embedding.cluster_size"] = rand(codes).abs()
    state_dict["quantize.embedding.embed_avg"] = rand(codes, code_dim)
    state_dict["quantize.embedding.initted"] = torch.tensor([1.0])
    state_dict["quantize.cluster_size"] = rand(codes).abs()
    mean, std = (CLIP_MEAN, CLIP_STD) if teacher == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    state_dict["scaling_layer.shift"] = torch.tensor(mean)[None, :, None, None]
    state_dict["scaling_layer.scale"] = torch.tensor(std)[None, :, None, None]
    state_dict["teacher_model.visual.proj"] = rand(16, teacher_dim)
    state_dict["teacher_model.visual.conv1.weight"] = rand(16, 3, 16, 16)
    state_dict["loss.weight"] = rand(1)
    return state_dict


def release_vit(state_dict, prefix, inputs, num_heads, eps=1e-6):
    """BEiT v2 `VisionTransformer.forward_features(x, return_patch_tokens=True)` with mean pooling (`fc_norm`)."""
    weight = state_dict[f"{prefix}.patch_embed.proj.weight"]
    x = F.conv2d(inputs, weight, state_dict[f"{prefix}.patch_embed.proj.bias"], stride=weight.shape[-1])
    batch_size, dim, height, width = x.shape
    x = torch.cat([state_dict[f"{prefix}.cls_token"].expand(batch_size, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    pos = state_dict[f"{prefix}.pos_embed"]
    if x.shape[1] != pos.shape[1]:  # `interpolate_pos_encoding`
        grid = int(math.sqrt(pos.shape[1] - 1))
        patch_pos = pos[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, scale_factor=((height + 0.1) / grid, (width + 0.1) / grid), mode="bicubic")
        pos = torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
    x = x + pos
    blocks = sorted({int(key.split(".")[2]) for key in state_dict if key.startswith(f"{prefix}.blocks.")})
    for i in blocks:
        p = lambda name: state_dict[f"{prefix}.blocks.{i}.{name}"]  # noqa: E731
        y = F.layer_norm(x, (dim,), p("norm1.weight"), p("norm1.bias"), eps)
        qkv_bias = torch.cat([p("attn.q_bias"), torch.zeros_like(p("attn.v_bias")), p("attn.v_bias")])
        qkv = F.linear(y, p("attn.qkv.weight"), qkv_bias).reshape(batch_size, x.shape[1], 3, num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q * (dim // num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(batch_size, x.shape[1], dim)
        x = x + F.linear(y, p("attn.proj.weight"), p("attn.proj.bias"))
        y = F.layer_norm(x, (dim,), p("norm2.weight"), p("norm2.bias"), eps)
        y = F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias")))
        x = x + F.linear(y, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
    fc_norm = state_dict[f"{prefix}.fc_norm.weight"], state_dict[f"{prefix}.fc_norm.bias"]
    return F.layer_norm(x[:, 1:], (dim,), *fc_norm, eps)


def release_task_layer(state_dict, name, x):
    x = torch.tanh(F.linear(x, state_dict[f"{name}.0.weight"], state_dict[f"{name}.0.bias"]))
    return F.linear(x, state_dict[f"{name}.2.weight"], state_dict[f"{name}.2.bias"])


def release_pre_process(x):
    if x.max() <= 1.0:
        x = x * 255.0
    return x / 127.5 - 1.0


@torch.no_grad()
def release_tokenize(state_dict, pixel_values, num_heads=HEADS):
    """`VQKD.get_codebook_indices` and `VQKD.decode(quantize)` of eval mode: (indices, reconstruction)."""
    x = release_pre_process(pixel_values)
    z = release_task_layer(state_dict, "encode_task_layer", release_vit(state_dict, "encoder", x, num_heads))
    batch_size, num_patches, code_dim = z.shape
    side = int(math.sqrt(num_patches))
    z = F.normalize(z, p=2, dim=-1).reshape(-1, code_dim)
    codebook = state_dict["quantize.embedding.weight"]
    distances = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * torch.einsum("bd,nd->bn", z, codebook)
    indices = distances.argmin(dim=1)
    z_q = codebook[indices].view(batch_size, side, side, code_dim).permute(0, 3, 1, 2)
    decoded = release_vit(state_dict, "decoder", z_q, num_heads)
    reconstruction = release_task_layer(state_dict, "decode_task_layer", decoded)
    return indices.view(batch_size, -1), reconstruction


def release_teacher_input(pixel_values, mean=CLIP_MEAN, std=CLIP_STD):
    """`ScalingLayerForClip(pre_process(x))`: what the release's teacher sees."""
    x = ((release_pre_process(pixel_values) + 1.0) * 127.5).clamp(0, 255.0) / 255.0
    return (x - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]


def release_eval_transform(image: Image.Image, size: int) -> np.ndarray:
    """unilm `build_vqkd_dataset(is_train=False)`: Resize(int(S / 0.875), bicubic) of the shorter side,
    CenterCrop(S), ToTensor -- with PIL and NumPy."""
    short = int(size / 0.875)
    width, height = image.size
    new_size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    image = image.resize(new_size, Image.BICUBIC)
    left, top = int(round((new_size[0] - size) / 2.0)), int(round((new_size[1] - size) / 2.0))
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return array.transpose(2, 0, 1)


def random_images(count=3, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(50, 40), (37, 64), (32, 32)]
    return [Image.fromarray(rng.integers(0, 256, (*shapes[i % 3], 3), dtype=np.uint8)) for i in range(count)]


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original():
    return release_state_dict(**TINY)


@pytest.fixture(scope="module")
def converted_dir(original, tmp_path_factory):
    """`beit3-convert ORIGINAL.pth OUT --task visual_tokenizer`, in-process, weights under "state_dict"."""
    tmp = tmp_path_factory.mktemp("vqkd")
    checkpoint = tmp / "vqkd_tiny.pth"
    torch.save({"state_dict": original, "epoch": torch.tensor(3)}, checkpoint)
    main([str(checkpoint), str(tmp / "out"), "--task", "visual_tokenizer", "--num-attention-heads", str(HEADS)])
    return tmp / "out"


def tiny_config(**overrides) -> BEiT3VisualTokenizerConfig:
    dims = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                decoder_num_attention_heads=4, decoder_intermediate_size=64, codebook_size=16, codebook_dim=8,
                teacher_hidden_size=12)  # fmt: skip
    return BEiT3VisualTokenizerConfig(**{**dims, **overrides})


def fixed_teacher(pixel_values, width=12, patch_size=8):
    """A frozen 'teacher': a fixed random projection of each patch's pixels, `(batch, num_patches, width)`."""
    patches = F.unfold(pixel_values, kernel_size=patch_size, stride=patch_size).transpose(1, 2)
    projection = torch.randn(patches.shape[-1], width, generator=torch.Generator().manual_seed(123))
    return torch.tanh((patches - 0.5) @ projection)


def trained_step_model(seed=0):
    torch.manual_seed(seed)
    model = BEiT3VisualTokenizer(tiny_config()).train()
    pixel_values = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    model(pixel_values, teacher_features=fixed_teacher(pixel_values))
    return model.eval(), pixel_values


# ----------------------------------------------------------------------------------------------------------------
# Converter and parity with the release
# ----------------------------------------------------------------------------------------------------------------


def test_converted_tokenizer_computes_what_the_release_computes(original, converted_dir):
    """AutoModel + AutoImageProcessor of the converted directory give the release's codes (exactly) and
    reconstructions (1e-5) on the release's own eval transform of the same images."""
    model = AutoModel.from_pretrained(converted_dir)
    processor = AutoImageProcessor.from_pretrained(converted_dir)
    assert type(model) is BEiT3VisualTokenizer and type(processor) is BEiT3ImageProcessor
    assert not model.training

    images = random_images()
    pixel_values = processor(images, return_tensors="pt").pixel_values
    expected_pixels = np.stack([release_eval_transform(image, 32) for image in images])
    np.testing.assert_array_equal(pixel_values.numpy(), expected_pixels)  # [0, 1] pixels, the release's transform

    expected_indices, expected_reconstruction = release_tokenize(original, pixel_values)
    indices = model.get_codebook_indices(pixel_values)
    assert indices.dtype == torch.long and indices.shape == (3, 16)
    assert torch.equal(indices, expected_indices)
    assert len(indices.unique()) > 4  # the comparison is not between constant maps
    with torch.no_grad():
        output = model(pixel_values)
    assert torch.equal(output.codebook_indices, expected_indices)
    torch.testing.assert_close(output.reconstruction, expected_reconstruction, atol=1e-5, rtol=1e-5)


def test_other_resolutions_interpolate_positions_as_the_release(original, converted_dir):
    model = AutoModel.from_pretrained(converted_dir)
    pixel_values = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    expected_indices, expected_reconstruction = release_tokenize(original, pixel_values)
    with torch.no_grad():
        output = model(pixel_values)
    assert output.codebook_indices.shape == (2, 36)
    assert torch.equal(output.codebook_indices, expected_indices)
    torch.testing.assert_close(output.reconstruction, expected_reconstruction, atol=1e-5, rtol=1e-5)
    non_square = model.get_codebook_indices(torch.rand(2, 3, 32, 48))  # beyond the release: a 4 x 6 grid
    assert non_square.shape == (2, 24)


def test_pixel_convention_matches_the_release_preprocessing(converted_dir):
    """The model's `2x - 1` equals the release's `x * 255 / 127.5 - 1` bit for bit on every 8-bit level, and the
    teacher input equals the release's scaling layer output."""
    model = AutoModel.from_pretrained(converted_dir)
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # the processor's rescale
    pixel_values = torch.from_numpy(np.resize(levels, (1, 3, 32, 32)).copy())
    assert torch.equal(pixel_values * 2 - 1, release_pre_process(pixel_values))
    torch.testing.assert_close(model.teacher_pixel_values(pixel_values), release_teacher_input(pixel_values),
                               atol=1e-6, rtol=0)  # fmt: skip
    processor = AutoImageProcessor.from_pretrained(converted_dir)
    assert processor.do_normalize is False and processor.crop_size == {"height": 32, "width": 32}


def test_every_key_is_accounted_for(original):
    converted = convert_visual_tokenizer_state_dict(original)
    config = infer_visual_tokenizer_config(original, num_attention_heads=HEADS)
    model = BEiT3VisualTokenizer(config)
    assert converted.keys() == model.state_dict().keys()
    dropped = [key for key in original if key.split(".")[0] in ("teacher_model", "scaling_layer", "loss")]
    dead = ["quantize.embedding.cluster_size", "quantize.embedding.embed_avg"]
    num_qkv = sum(key.endswith("attn.qkv.weight") for key in original)
    assert len(converted) == len(original) - len(dropped) - len(dead) + 2 * num_qkv  # q, k, v from one key
    q, k, v = original["encoder.blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(converted["encoder.layers.1.attention.q_proj.weight"], q)
    assert torch.equal(converted["encoder.layers.1.attention.k_proj.weight"], k)
    assert torch.equal(converted["encoder.layers.1.attention.v_proj.weight"], v)
    assert converted["quantizer.initialized"].dtype == torch.bool and bool(converted["quantizer.initialized"])
    load_converted(model, converted)
    assert torch.equal(model.quantizer.codebook, original["quantize.embedding.weight"])


def test_unplaced_and_missing_keys_each_give_one_error(original):
    extra = {**original, "encoder.blocks.0.attn.relative_position_bias_table": torch.zeros(3, 4),
             "encoder.head.weight": torch.zeros(2, 64)}  # fmt: skip
    with pytest.raises(ValueError, match=r"2 checkpoint key\(s\) have no place in a BEiT-3 visual tokenizer: "
                       r"\['encoder.blocks.0.attn.relative_position_bias_table', 'encoder.head.weight'\]"):
        convert_visual_tokenizer_state_dict(extra)

    missing = {key: value for key, value in original.items() if key != "decoder.fc_norm.weight"}
    model = BEiT3VisualTokenizer(infer_visual_tokenizer_config(missing, num_attention_heads=HEADS))
    with pytest.raises(ValueError, match=r"parameters left unfilled: \['decoder.layer_norm.weight'\]"):
        load_converted(model, convert_visual_tokenizer_state_dict(missing))


def test_config_is_read_off_the_tensors():
    original = release_state_dict(**{**TINY, "decoder_depth": 3, "teacher_dim": 40}, teacher="dino")
    config = infer_visual_tokenizer_config(original)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 256)
    assert (config.num_attention_heads, config.decoder_num_attention_heads) == (1, 1)  # width / 64, at least 1
    assert (config.image_size, config.patch_size, config.num_channels) == (32, 8, 3)
    decoder = (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_intermediate_size)
    assert decoder == (32, 3, 128)
    assert (config.codebook_size, config.codebook_dim, config.teacher_hidden_size) == (32, 8, 40)
    assert config.teacher == "dino"  # from the saved scaling layer (ImageNet mean)
    without_scaling = {key: value for key, value in original.items() if not key.startswith("scaling_layer")}
    assert infer_visual_tokenizer_config(without_scaling).teacher == "clip"  # 40 wide: not DINO's 768


def test_converter_checks_released_names_and_auto_detects(tmp_path, original):
    checkpoint = tmp_path / "vqkd_encoder_base_decoder_1x768x12_clip-d93179da.pth"
    torch.save({"model": original}, checkpoint)
    with pytest.raises(ValueError, match=r"is released with .* but its tensors say \{.*'teacher_hidden_size': 24"):
        convert_checkpoint(checkpoint, task="visual_tokenizer", num_attention_heads=HEADS)

    checkpoint = tmp_path / "tokenizer.pth"
    torch.save({"model": original}, checkpoint)
    assert type(convert_checkpoint(checkpoint, num_attention_heads=HEADS)) is BEiT3VisualTokenizer  # no --task
    with pytest.raises(ValueError, match="takes images only"):
        convert_checkpoint(checkpoint, task="visual_tokenizer", spm_path="beit3.spm")


def test_cli_and_auto_classes_in_a_fresh_offline_process(tmp_path, original):
    checkpoint = tmp_path / "vqkd.pth"
    torch.save({"model": original}, checkpoint)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "beit3_hf.convert", str(checkpoint), str(out), "--task", "visual_tokenizer",
               "--num-attention-heads", str(HEADS)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "BEiT3VisualTokenizer" in result.stdout
    script = (
        "import beit3_hf, torch\n"
        "from transformers import AutoConfig, AutoImageProcessor, AutoModel\n"
        f"config = AutoConfig.from_pretrained({str(out)!r})\n"
        f"model = AutoModel.from_pretrained({str(out)!r})\n"
        f"processor = AutoImageProcessor.from_pretrained({str(out)!r})\n"
        "pixels = processor(torch.zeros(3, 40, 40, dtype=torch.uint8), return_tensors='pt').pixel_values\n"
        "print(type(config).__name__, type(model).__name__, type(processor).__name__,\n"
        "      tuple(model.get_codebook_indices(pixels).shape))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BEiT3VisualTokenizerConfig", "BEiT3VisualTokenizer", "BEiT3ImageProcessor",
                                     "(1,", "16)"]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# The quantizer against independent computations
# ----------------------------------------------------------------------------------------------------------------


def unit_codebook_quantizer(codes=16, dim=8, decay=0.9, seed=0):
    quantizer = BEiT3VectorQuantizer(codes, dim, decay=decay)
    with torch.no_grad():
        codebook = torch.randn(codes, dim, generator=torch.Generator().manual_seed(seed))
        quantizer.codebook.copy_(F.normalize(codebook, dim=-1))
        quantizer.initialized.fill_(True)
    return quantizer


def test_nearest_code_is_the_most_cosine_similar():
    quantizer = unit_codebook_quantizer()
    vectors = torch.randn(5, 7, 8, generator=torch.Generator().manual_seed(1)) * 3
    similarity = F.normalize(vectors, dim=-1) @ quantizer.codebook.t()
    assert torch.equal(quantizer.nearest_codes(F.normalize(vectors, dim=-1)), similarity.argmax(dim=-1))
    embeds, codes, indices, loss = quantizer.eval()(vectors)
    assert torch.equal(indices, similarity.argmax(dim=-1))
    torch.testing.assert_close(embeds, F.normalize(vectors, dim=-1))
    torch.testing.assert_close(codes, quantizer.codebook[indices])  # straight-through: equal up to rounding
    torch.testing.assert_close(loss, ((quantizer.codebook[indices] - embeds) ** 2).mean())


def test_ema_update_matches_a_per_code_loop():
    quantizer = unit_codebook_quantizer(decay=0.9).train()
    quantizer.cluster_size.fill_(2.0)
    old_codebook = quantizer.codebook.clone()
    vectors = torch.randn(40, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    embeds, codes, indices, loss = quantizer(vectors)

    unit = F.normalize(vectors.detach(), dim=-1)
    expected_indices = (unit @ old_codebook.t()).argmax(dim=1)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(codes.detach(), old_codebook[indices])  # the codes from before the update
    for k in range(16):
        members = unit[expected_indices == k]
        if len(members):
            target = F.normalize(members.mean(0), dim=0)
            expected = F.normalize(0.9 * old_codebook[k] + 0.1 * target, dim=0)
        else:
            expected = old_codebook[k]
        torch.testing.assert_close(quantizer.codebook[k], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(quantizer.cluster_size[k], torch.tensor(0.9 * 2.0 + 0.1 * len(members)))
    assert 0 < len(indices.unique()) < 16  # both branches ran

    (codes.sum() + loss).backward()  # straight-through: the codes pass the gradient to the vectors
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0 and quantizer.codebook.grad is None


def reference_kmeans(vectors, num_clusters, iterations):
    """Cosine k-means with a per-cluster loop, from the same random start as the release (randperm or randint)."""
    if len(vectors) >= num_clusters:
        means = vectors[torch.randperm(len(vectors))[:num_clusters]]
    else:
        means = vectors[torch.randint(0, len(vectors), (num_clusters,))]
    for _ in range(iterations):
        assignment = (vectors @ means.t()).argmax(dim=1)
        means = torch.stack([
            F.normalize(vectors[assignment == k].mean(0), dim=0) if (assignment == k).any() else means[k]
            for k in range(num_clusters)
        ])  # fmt: skip
    return means


@pytest.mark.parametrize("num_vectors", [50, 10])  # more vectors than codes, and fewer
def test_kmeans_initialisation_matches_a_reference(num_vectors):
    vectors = F.normalize(torch.randn(num_vectors, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    torch.manual_seed(7)
    expected = reference_kmeans(vectors, 16, 10)
    quantizer = BEiT3VectorQuantizer(16, 8).train()
    assert not quantizer.initialized
    torch.manual_seed(7)
    quantizer.initialize_codebook(vectors)
    assert quantizer.initialized
    torch.testing.assert_close(quantizer.codebook, expected, atol=1e-6, rtol=0)


def test_first_training_batch_initialises_the_codebook_and_inference_changes_nothing():
    quantizer = BEiT3VectorQuantizer(16, 8)
    vectors = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="never initialised"):
        quantizer.eval()(vectors)
    quantizer.train()(vectors)
    assert quantizer.initialized and torch.allclose(quantizer.codebook.norm(dim=-1), torch.ones(16))
    assert quantizer.cluster_size.sum() > 0
    state = {key: value.clone() for key, value in quantizer.state_dict().items()}
    quantizer.eval()(vectors)
    assert all(torch.equal(state[key], value) for key, value in quantizer.state_dict().items())


def test_training_under_torch_distributed(tmp_path):
    """The all-reduce and broadcast paths run (one gloo process): same result as without a process group."""
    vectors = torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(6))
    results = []
    for distributed in (False, True):
        if distributed:
            torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
        try:
            torch.manual_seed(0)
            quantizer = BEiT3VectorQuantizer(16, 8).train()
            quantizer(vectors)
            quantizer(vectors)
            quantizer.restart_dead_codes(vectors, threshold=0.05)
            results.append(quantizer.state_dict())
        finally:
            if distributed:
                torch.distributed.destroy_process_group()
    assert all(torch.equal(results[0][key], results[1][key]) for key in results[0])


def test_restart_dead_codes_replaces_exactly_the_dead_ones():
    quantizer = unit_codebook_quantizer()
    quantizer.cluster_size.copy_(torch.linspace(0, 1.5, 16))
    old_codebook = quantizer.codebook.clone()
    vectors = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(5))
    dead = quantizer.cluster_size < 0.5
    assert quantizer.restart_dead_codes(vectors, threshold=0.5) == int(dead.sum()) > 0
    assert torch.equal(quantizer.codebook[~dead], old_codebook[~dead])
    candidates = F.normalize(vectors.reshape(-1, 8), dim=-1)
    for code in quantizer.codebook[dead]:
        assert torch.isclose(candidates @ code, torch.tensor(1.0), atol=1e-6).any()  # one of the vectors
    assert torch.all(quantizer.cluster_size[dead] == 0.5)
    assert quantizer.restart_dead_codes(vectors, threshold=0.5) == 0


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


def test_usage_figures_on_a_constructed_batch():
    perplexity, usage = codebook_usage(torch.tensor([[0, 0, 1, 2]]), 8)
    torch.testing.assert_close(perplexity, torch.tensor(2**1.5))  # p = (1/2, 1/4, 1/4): entropy 1.5 bits
    torch.testing.assert_close(usage, torch.tensor(3 / 8))
    perplexity, usage = codebook_usage(torch.arange(8), 8)
    torch.testing.assert_close(perplexity, torch.tensor(8.0))
    assert usage == 1.0

    model, pixel_values = trained_step_model()
    with torch.no_grad():
        output = model(pixel_values)
    counts = Counter(output.codebook_indices.flatten().tolist())
    total = sum(counts.values())
    entropy = -sum(n / total * math.log(n / total) for n in counts.values())
    torch.testing.assert_close(output.perplexity, torch.tensor(math.exp(entropy)))
    torch.testing.assert_close(output.codebook_usage, torch.tensor(len(counts) / 16))


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = BEiT3VisualTokenizer(tiny_config()).train()
    pixel_values = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    teacher_features = fixed_teacher(pixel_values)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(15):
        output = model(pixel_values, teacher_features=teacher_features)
        torch.testing.assert_close(output.loss, output.quantization_loss + output.reconstruction_loss)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert model.quantizer.initialized and not model.quantizer.codebook.requires_grad
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_save_load_is_bit_exact(tmp_path):
    model, pixel_values = trained_step_model()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    expected, actual = model.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert reloaded.quantizer.initialized and reloaded.quantizer.cluster_size.sum() > 0
    with torch.no_grad():
        before, after = model(pixel_values), reloaded(pixel_values)
    assert torch.equal(before.codebook_indices, after.codebook_indices)
    assert torch.equal(before.reconstruction, after.reconstruction)
    assert torch.equal(model.get_codebook_indices(pixel_values), before.codebook_indices)
    assert type(AutoConfig.from_pretrained(tmp_path)) is BEiT3VisualTokenizerConfig


def test_fresh_model_is_initialised_as_the_release():
    model = BEiT3VisualTokenizer(tiny_config(hidden_size=256, num_attention_heads=4))
    assert not model.quantizer.initialized and torch.all(model.quantizer.codebook == 0)
    first, second = (model.encoder.layers[i].mlp.fc2.weight.std().item() for i in range(2))
    assert first == pytest.approx(0.02 / math.sqrt(2), rel=0.1) and second == pytest.approx(0.02 / 2, rel=0.1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: torch.rand(2, 1, 32, 32), r"has 1 channels, but the tokenizer takes `num_channels` = 3"),
        (lambda: torch.rand(2, 3, 36, 32), r"Input image size \(36x32\) must be a multiple of the patch size \(8\)"),
        (lambda: torch.rand(2, 3, 32, 32) * 2 - 1, r"must lie in \[0, 1\].*got values in \[-"),
        (lambda: torch.randint(0, 255, (2, 3, 32, 32)), r"floating point pixels in \[0, 1\], got dtype torch.int64"),
    ],
)
def test_bad_pixels_raise(make, message):
    model, _ = trained_step_model()
    with pytest.raises(ValueError, match=message):
        model.get_codebook_indices(make())


def test_uninitialised_codebook_and_wrong_teacher_raise():
    model = BEiT3VisualTokenizer(tiny_config()).eval()
    pixel_values = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="never initialised"):
        model.get_codebook_indices(pixel_values)
    model, pixel_values = trained_step_model()
    with pytest.raises(ValueError, match=r"are 20 wide, but the decoder predicts `teacher_hidden_size` = 12"):
        model(pixel_values, teacher_features=torch.randn(4, 16, 20))
    with pytest.raises(ValueError, match=r"must have shape .* = \(4, 16, 12\) .* got \(4, 17, 12\)"):
        model(pixel_values, teacher_features=torch.randn(4, 17, 12))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="`teacher` must be one of"):
        tiny_config(teacher="siglip")
    with pytest.raises(ValueError, match=r"`decoder_hidden_size` \(30\) must be divisible"):
        tiny_config(decoder_hidden_size=30)
    with pytest.raises(ValueError, match=r"`ema_decay` must be in \[0, 1\), got 1.0"):
        tiny_config(ema_decay=1.0)
