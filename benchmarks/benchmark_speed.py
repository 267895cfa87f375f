"""Speed and memory of our BEiT-3 against the official torchscale BEiT3, on the same weights and inputs.

    python benchmarks/benchmark_speed.py --device cpu --size base --batch-size 4 --text-length 64 --pad-fraction 0.5
    python benchmarks/benchmark_speed.py --device cuda --dtype bf16 --batch-size 64 --compile

The official model is built with its own (random) initialisation; its state dict goes through
`beit3_hf.convert.convert_state_dict` (task "backbone") into a strictly loaded `BEiT3Model`, and the outputs of
both are compared before anything is timed. Workloads:

    image       image-only forward (no grad)
    text        text-only forward, padded text (no grad)
    image_text  image+text forward, padded text (no grad)
    train       image+text training step: forward, loss, backward, AdamW step

Both models are timed in interleaved rounds (one step of each per round, after a warm-up), so that load from
other processes hits both alike; the table reports the median. `speedup` is torchscale time / our time, so above 1
means ours is faster. MFU is the analytic FLOP count (see `forward_flops`) over time over the peak FLOP/s of the
device (a spec-sheet value for known GPUs, else a measured matmul; `--peak-tflops` overrides). On CUDA `memory`
is the peak of `torch.cuda.max_memory_allocated` above what was allocated before the workload (activations, and
for `train` also gradients and AdamW state); on CPU it is the same growth of the bytes the C heap has handed out
(glibc `mallinfo2`, sampled every millisecond, so approximate; the resident set size where that is missing).

Vision-only bars for the image-only forward: timm's ViT of the same size (when timm is installed) and a plain
Hugging Face `ViTModel` of the same size with SDPA (always). BEiT-3 does a little more work than a plain ViT (two
sub-LayerNorms per block), which the FLOP count ignores.

torchscale needs timm (four helpers) and fairscale (`checkpoint_wrapper`, `wrap`) at import time, for features not
used here; when they are missing, stand-ins are registered for this benchmark only.
"""

import argparse
import copy
import ctypes
import json
import math
import os
import statistics
import sys
import threading
import time
import types
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from beit3_hf import BEiT3Config, BEiT3Model  # noqa: E402
from beit3_hf.configuration_beit3 import BEIT3_PRESETS  # noqa: E402
from beit3_hf.convert import convert_state_dict, load_converted  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768),
    "base": BEIT3_PRESETS["base"],
    "large": BEIT3_PRESETS["large"],
}
TIMM_MODELS = {"base": "vit_base_patch16_224", "large": "vit_large_patch16_224"}
WORKLOADS = ("image", "text", "image_text", "train")
VOCAB_SIZE = 64010
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 1, 0, 2

# Dense (no sparsity) peak tensor-core FLOP/s from the vendors' spec sheets, keyed by a substring of the device name.
GPU_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "A10G": {"bf16": 70.0, "fp32": 31.2},
}


# ----------------------------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------------------------


def forward_flops(
    batch_size: int,
    seq_length: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_patches: int = 0,
    patch_dim: int = 0,
) -> float:
    """
    Analytic FLOPs (multiply-add = 2) of one forward pass of a pre-LN Transformer encoder.

    Per layer and per token, the q/k/v/out projections cost `2 * 4 * D**2` and the feed-forward network
    `2 * 2 * D * F`; per layer and per sequence, attention costs `2 * S**2 * D` for `Q @ K^T` and as much again
    for `P @ V`:

        layer = 2 * B * S * (4 * D**2 + 2 * D * F) + 4 * B * S**2 * D

    The patch embedding adds `2 * B * num_patches * patch_dim * D` (`patch_dim = channels * patch**2`). LayerNorms,
    GELU, softmax and the residual additions are left out (a few percent at these sizes), as is the Multiway
    routing, which only chooses which weights multiply a token. Padding tokens are counted: they are computed.
    A training step (forward + backward) costs 3 times the forward (`training_flops`).
    """
    tokens = batch_size * seq_length
    per_layer = 2 * tokens * (4 * hidden_size**2 + 2 * hidden_size * intermediate_size)
    per_layer += 4 * batch_size * seq_length**2 * hidden_size
    return num_layers * per_layer + 2 * batch_size * num_patches * patch_dim * hidden_size


def training_flops(*args, **kwargs) -> float:
    """Forward + backward: the backward pass costs twice the forward (gradients of inputs and of weights)."""
    return 3 * forward_flops(*args, **kwargs)


def workload_flops(workload: str, config: BEiT3Config, batch_size: int, text_length: int) -> float:
    num_patches = config.num_patches
    image_tokens = num_patches + 1
    seq_length = {"image": image_tokens, "text": text_length}.get(workload, image_tokens + text_length)
    with_image = workload != "text"
    flops = forward_flops(
        batch_size,
        seq_length,
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        num_patches=num_patches if with_image else 0,
        patch_dim=config.num_channels * config.patch_size**2,
    )
    return 3 * flops if workload == "train" else flops


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def import_torchscale():
    """torchscale's `BEiT3` and `EncoderConfig`, with stand-ins for the timm / fairscale helpers when missing."""
    from official import _install_timm_stand_in

    _install_timm_stand_in()
    try:
        import fairscale.nn  # noqa: F401
    except ImportError:  # only activation checkpointing and FSDP wrapping use it; both are off here
        fairscale = types.ModuleType("fairscale")
        fairscale.nn = types.ModuleType("fairscale.nn")
        fairscale.nn.checkpoint_wrapper = lambda module, *args, **kwargs: module
        fairscale.nn.wrap = lambda module, *args, **kwargs: module
        sys.modules.update({"fairscale": fairscale, "fairscale.nn": fairscale.nn})
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    return BEiT3, EncoderConfig


def build_official(size: str, image_size: int) -> torch.nn.Module:
    """torchscale's BEiT3 with unilm's backbone settings (`beit3/modeling_utils.py::_get_base_config`)."""
    BEiT3, EncoderConfig = import_torchscale()
    dims = SIZES[size]
    args = EncoderConfig(
        img_size=image_size,
        patch_size=16,
        vocab_size=VOCAB_SIZE,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        drop_path_rate=0.0,
        encoder_embed_dim=dims["hidden_size"],
        encoder_attention_heads=dims["num_attention_heads"],
        encoder_ffn_embed_dim=dims["intermediate_size"],
        encoder_layers=dims["num_hidden_layers"],
        checkpoint_activations=None,
    )
    return BEiT3(args)


def build_ours(official: torch.nn.Module, size: str, image_size: int, attn_implementation: str) -> BEiT3Model:
    """Our `BEiT3Model` with the official weights, converted by the converter and loaded strictly."""
    config = BEiT3Config(**SIZES[size], image_size=image_size, vocab_size=VOCAB_SIZE)
    with torch.device("meta"):  # no random init: every tensor is loaded below
        model = BEiT3Model._from_config(config, attn_implementation=attn_implementation)
    model.to_empty(device="cpu")
    original = {f"beit3.{key}": value for key, value in official.state_dict().items()}
    load_converted(model, convert_state_dict(original, "backbone"))
    return model


def without_routing(model: BEiT3Model) -> BEiT3Model:
    """
    A copy of `model` in which every Multiway module is replaced by its image expert: the same network for
    image-only input, with no routing at all. Timing both isolates what the routing itself costs.
    """
    from beit3_hf.modeling_beit3 import BEiT3Multiway

    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, BEiT3Multiway):
            parent_name, _, child_name = name.rpartition(".")
            setattr(plain.get_submodule(parent_name), child_name, module.image)
    return plain


def build_timm_vit(size: str, image_size: int):
    """timm's ViT of the same size, or None when timm is not installed."""
    try:  # `import timm` alone may find the stand-in that torchscale's import registered
        from timm import create_model
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    dims = SIZES[size]
    if size in TIMM_MODELS and image_size == 224:
        return create_model(TIMM_MODELS[size], pretrained=False, num_classes=0)

    return VisionTransformer(
        img_size=image_size,
        patch_size=16,
        embed_dim=dims["hidden_size"],
        depth=dims["num_hidden_layers"],
        num_heads=dims["num_attention_heads"],
        mlp_ratio=dims["intermediate_size"] / dims["hidden_size"],
        num_classes=0,
    )


def build_plain_vit(size: str, image_size: int):
    """A randomly initialised Hugging Face `ViTModel` with the same dimensions (SDPA, no pooler)."""
    from transformers import ViTConfig, ViTModel

    dims = SIZES[size]
    config = ViTConfig(**dims, image_size=image_size, patch_size=16, layer_norm_eps=1e-5)
    return ViTModel._from_config(config, attn_implementation="sdpa", add_pooling_layer=False)


# ----------------------------------------------------------------------------------------------------------------
# Inputs and workloads
# ----------------------------------------------------------------------------------------------------------------


def make_inputs(batch_size: int, image_size: int, text_length: int, pad_fraction: float, device, seed: int = 0):
    """Images, `<s> ... </s>` token ids and a mask in which the last `pad_fraction` of every row is padding."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    input_ids = torch.randint(3, VOCAB_SIZE, (batch_size, text_length), generator=generator)
    real_length = max(2, text_length - int(round(pad_fraction * text_length)))
    attention_mask = torch.zeros(batch_size, text_length, dtype=torch.long)
    attention_mask[:, :real_length] = 1
    input_ids[:, 0] = BOS_TOKEN_ID
    input_ids[:, real_length - 1] = EOS_TOKEN_ID
    input_ids[:, real_length:] = PAD_TOKEN_ID
    return pixel_values.to(device), input_ids.to(device), attention_mask.to(device)


def forward_fns(official, ours, inputs):
    """{workload: (torchscale_fn, ours_fn)} for the forward workloads; each returns the output hidden states."""
    pixel_values, input_ids, attention_mask = inputs
    padding = attention_mask == 0
    return {
        "image": (
            lambda: official(textual_tokens=None, visual_tokens=pixel_values)["encoder_out"],
            lambda: ours(pixel_values=pixel_values).last_hidden_state,
        ),
        "text": (
            lambda: official(textual_tokens=input_ids, visual_tokens=None, text_padding_position=padding)[
                "encoder_out"
            ],
            lambda: ours(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
        ),
        "image_text": (
            lambda: official(textual_tokens=input_ids, visual_tokens=pixel_values, text_padding_position=padding)[
                "encoder_out"
            ],
            lambda: ours(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state,
        ),
    }


def real_positions(workload: str, attention_mask: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
    """Boolean (batch, seq) mask of the positions whose outputs are compared (padding outputs are unspecified)."""
    text = attention_mask.bool()
    if workload == "text":
        return text
    image = torch.ones(text.shape[0], num_image_tokens, dtype=torch.bool, device=text.device)
    return image if workload == "image" else torch.cat([image, text], dim=1)


def check_agreement(forward: dict, attention_mask: torch.Tensor, num_image_tokens: int, autocast=None,
                    tolerance: float = 1e-3):
    """Prints the largest output difference of every forward workload; exits when the fp32 one exceeds
    `tolerance`. With `autocast`, the differences under it are printed too (mixed precision differs more)."""
    with torch.no_grad():
        for workload, (official_fn, ours_fn) in forward.items():
            real = real_positions(workload, attention_mask, num_image_tokens)
            diff = (official_fn().float() - ours_fn().float()).abs()[real].max().item()
            message = f"max |ours - torchscale| on real tokens, {workload}: fp32 {diff:.2e}"
            if autocast is not None:
                with autocast():
                    low = (official_fn().float() - ours_fn().float()).abs()[real].max().item()
                message += f", autocast {low:.2e}"
            print(message, flush=True)
            if diff > tolerance:
                raise SystemExit(f"fp32 outputs differ by {diff:.2e} > {tolerance} on {workload}; not timing")


class TrainStep:
    """One image+text training step: forward, mean-square loss of the outputs, backward, fused AdamW."""

    def __init__(self, model: torch.nn.Module, forward, autocast):
        self.model, self.forward, self.autocast = model, forward, autocast
        self.optimizer = None

    def __call__(self):
        if self.optimizer is None:  # created lazily, so that its state counts in the step's memory
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=True)
        with self.autocast():
            loss = self.forward().float().pow(2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def release(self):
        self.optimizer = None
        self.model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory growth during a `with` block: CUDA allocator statistics, or the sampled C heap on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.start = self.peak = _cpu_bytes_in_use()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _cpu_bytes_in_use())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.peak_bytes = max(self.peak, _cpu_bytes_in_use()) - self.start


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]


def _cpu_bytes_in_use() -> int:
    """Bytes of the C heap in use (glibc: chunks handed out + mmapped blocks), else the resident set size."""
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        return info.uordblks + info.hblkhd
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


try:  # freed memory stays in the resident set, so the heap's own count is the better measure
    _MALLINFO2 = ctypes.CDLL(None).mallinfo2
    _MALLINFO2.restype = _MallInfo2
except (AttributeError, OSError):
    _MALLINFO2 = None


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict, device: torch.device, warmup: int, steps: int, clock=time.perf_counter
) -> tuple[dict, dict, dict]:
    """
    Median seconds per call of every function, measured in rounds that call each once (so that background load
    affects all alike), plus each function's peak memory (over its warm-up and timed calls) and first-call time.
    """
    times = {name: [] for name in fns}
    memory, first_call = {}, {}
    for name, fn in fns.items():  # warm-up one at a time, measuring memory and the first (compiling) call
        with PeakMemory(device) as peak:
            for index in range(max(warmup, 2)):  # the second call sees a steady state (optimizer state exists)
                start = time.perf_counter()
                fn()
                synchronize(device)
                if index == 0:
                    first_call[name] = time.perf_counter() - start
        memory[name] = peak.peak_bytes
    for _ in range(steps):
        for name, fn in fns.items():
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}, memory, first_call


def measured_peak_flops(device: torch.device, dtype: torch.dtype, clock=time.perf_counter) -> float:
    """FLOP/s of a large square matmul in `dtype`, the best of a few runs (a practical peak)."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(5):
        synchronize(device)
        start = clock()
        for _ in range(10 if device.type == "cuda" else 2):
            a @ b
        synchronize(device)
        best = min(best, (clock() - start) / (10 if device.type == "cuda" else 2))
    return 2 * n**3 / best


def peak_flops(args, device: torch.device, clock=time.perf_counter) -> tuple[float, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "given with --peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peaks[args.dtype] * 1e12, f"{name} spec sheet, dense {args.dtype}"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    return measured_peak_flops(device, dtype, clock), f"measured {args.dtype} matmul on {device.type}"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    torchscale_ms: float | None = None
    ours_ms: float | None = None
    flops: float = 0.0
    extra_ms: dict = field(default_factory=dict)
    memory_mb: dict = field(default_factory=dict)
    first_call_s: dict = field(default_factory=dict)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-length", type=int, default=64)
    parser.add_argument("--pad-fraction", type=float, default=0.5, help="share of every text row that is padding")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, fp32 weights")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager", "flex_attention"], default="sdpa",
                        help="attention of our model")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(ours)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds per workload")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per model and workload (2 at least)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--skip-official", action="store_true", help="time ours (and the ViT bars) only")
    parser.add_argument("--skip-timm", action="store_true")
    parser.add_argument("--skip-plain-vit", action="store_true")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU time of this process (CPU only; with --threads 1 it ignores other load)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: spec sheet or measured)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in fp32 on CUDA")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not 0.0 <= args.pad_fraction < 1.0:
        parser.error(f"--pad-fraction must be in [0, 1), got {args.pad_fraction}")
    if args.clock == "process" and args.device != "cpu":
        parser.error("--clock process measures CPU time; use it with --device cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    compute_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    clock = time.process_time if args.clock == "process" else time.perf_counter

    def autocast():
        if args.dtype == "fp32":
            return nullcontext()
        return torch.autocast(device.type, dtype=compute_dtype)

    print(
        f"torch {torch.__version__} | device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
        f" | threads {torch.get_num_threads()} | size {args.size} | batch {args.batch_size} | image "
        f"{args.image_size} | text {args.text_length} (pad {args.pad_fraction:.0%}) | {args.dtype} | ours: "
        f"{args.attn_implementation}{' + compile' if args.compile else ''} | {args.clock} clock",
        flush=True,
    )

    official = build_official(args.size, args.image_size)
    ours = build_ours(official, args.size, args.image_size, args.attn_implementation)
    official.to(device).eval()
    ours.to(device).eval()
    config = ours.config
    num_image_tokens = config.num_patches + 1
    inputs = make_inputs(args.batch_size, args.image_size, args.text_length, args.pad_fraction, device)
    print(f"parameters: {sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M", flush=True)

    # same weights, same inputs: the fp32 outputs must agree before any timing means something
    forward = forward_fns(official, ours, inputs)
    check_agreement(forward, inputs[2], num_image_tokens, autocast if args.dtype != "fp32" else None)

    compiled = torch.compile(ours) if args.compile else None
    compiled_forward = forward_fns(official, compiled, inputs) if compiled is not None else {}
    vision_bars = {}
    if "image" in args.workloads:
        if not args.skip_timm:
            timm_vit = build_timm_vit(args.size, args.image_size)
            if timm_vit is None:
                print("timm not installed, skipped", flush=True)
            else:
                timm_vit.to(device).eval()
                vision_bars["timm ViT"] = lambda: timm_vit.forward_features(inputs[0])
        if not args.skip_plain_vit:
            plain_vit = build_plain_vit(args.size, args.image_size).to(device).eval()
            vision_bars["HF ViTModel"] = lambda: plain_vit(pixel_values=inputs[0]).last_hidden_state
        unrouted = without_routing(ours)
        with torch.no_grad():
            difference = (unrouted(pixel_values=inputs[0]).last_hidden_state - forward["image"][1]()).abs().max()
            if difference > 1e-5:
                raise SystemExit(f"the model without routing differs from ours by {difference:.2e} on images")
        vision_bars["ours without routing"] = lambda: unrouted(pixel_values=inputs[0]).last_hidden_state

    def no_grad(fn):
        def call():
            with torch.no_grad(), autocast():
                return fn()

        return call

    rows = []
    for workload in args.workloads:
        print(f"timing {workload} ...", flush=True)
        # the eager models interleaved; the compiled one in a phase of its own, so that its compilation and its
        # kernels' worker threads stay out of the eager rounds
        phases = [{}, {}]
        if workload == "train":
            official.train()
            ours.train()
            if not args.skip_official:
                phases[0]["torchscale"] = TrainStep(official, forward["image_text"][0], autocast)
            phases[0]["ours"] = TrainStep(ours, forward["image_text"][1], autocast)
            if compiled is not None:
                phases[1]["ours+compile"] = TrainStep(compiled, compiled_forward["image_text"][1], autocast)
        else:
            official_fn, ours_fn = forward[workload]
            if not args.skip_official:
                phases[0]["torchscale"] = no_grad(official_fn)
            phases[0]["ours"] = no_grad(ours_fn)
            if workload == "image":
                phases[0].update({name: no_grad(fn) for name, fn in vision_bars.items()})
            if compiled is not None:
                phases[1]["ours+compile"] = no_grad(compiled_forward[workload][1])
        seconds, memory, first_call = {}, {}, {}
        for fns in phases:
            if fns:
                results = time_interleaved(fns, device, args.warmup, args.steps, clock)
                for total, result in zip((seconds, memory, first_call), results):
                    total.update(result)
                for step in fns.values():
                    if isinstance(step, TrainStep):
                        step.release()
        official.eval()
        ours.eval()
        row = Row(workload, flops=workload_flops(workload, config, args.batch_size, args.text_length))
        row.torchscale_ms = seconds.pop("torchscale", None)
        row.ours_ms = seconds.pop("ours")
        row.extra_ms = seconds
        row.memory_mb = {name: value / 2**20 for name, value in memory.items()}
        row.first_call_s = first_call
        for attribute in ("torchscale_ms", "ours_ms"):
            if getattr(row, attribute) is not None:
                setattr(row, attribute, getattr(row, attribute) * 1e3)
        row.extra_ms = {name: value * 1e3 for name, value in row.extra_ms.items()}
        rows.append(row)
        # a line (and the JSON so far) per finished workload: a run stopped by a time limit keeps what it measured
        times = {"torchscale": row.torchscale_ms, "ours": row.ours_ms, **row.extra_ms}
        print(f"{workload}: " + ", ".join(f"{name} {value:.2f} ms" for name, value in times.items() if value)
              + "; first call " + ", ".join(f"{name} {value:.1f} s" for name, value in first_call.items()), flush=True)
        save_results(args, device, rows)

    peak, peak_source = peak_flops(args, device, clock)
    print_table(rows, peak, peak_source, device)
    save_results(args, device, rows, peak_flops=peak, peak_source=peak_source)
    if args.output:
        print(f"results written to {args.output}")


def save_results(args, device: torch.device, rows: list[Row], **extra):
    if args.output:
        result = {"args": vars(args), **extra, "torch": torch.__version__,
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "rows": [asdict(row) for row in rows]}
        Path(args.output).write_text(json.dumps(result, indent=2))


def print_table(rows: list[Row], peak: float, peak_source: str, device: torch.device):
    def mfu(flops, ms):
        return f"{flops / (ms / 1e3) / peak:.3f}" if ms else "-"

    def ms(value):
        return f"{value:.1f}" if value is not None else "-"

    memory_name = "peak alloc MB" if device.type == "cuda" else "peak heap MB"
    print(f"\nMFU against {peak / 1e12:.2f} TFLOP/s ({peak_source}); speedup = torchscale time / our time")
    header = ["workload", "GFLOP", "torchscale ms", "ours ms", "speedup", "MFU ts", "MFU ours",
              f"{memory_name} ts / ours", "mem ours/ts"]
    lines = [header]
    for row in rows:
        speedup = f"{row.torchscale_ms / row.ours_ms:.2f}x" if row.torchscale_ms else "-"
        mem_ts, mem_ours = row.memory_mb.get("torchscale"), row.memory_mb.get("ours")
        mem = f"{mem_ts:.0f} / {mem_ours:.0f}" if mem_ts is not None else f"- / {mem_ours:.0f}"
        mem_ratio = f"{mem_ours / mem_ts:.2f}" if mem_ts else "-"
        lines.append([row.workload, f"{row.flops / 1e9:.0f}", ms(row.torchscale_ms), ms(row.ours_ms), speedup,
                      mfu(row.flops, row.torchscale_ms), mfu(row.flops, row.ours_ms), mem, mem_ratio])
    for row in rows:  # compiled ours and the vision-only bars
        for name, value in row.extra_ms.items():
            speedup = f"{row.torchscale_ms / value:.2f}x" if row.torchscale_ms else "-"
            mem = row.memory_mb.get(name)
            lines.append([f"{row.workload}: {name}", f"{row.flops / 1e9:.0f}", ms(row.torchscale_ms), ms(value),
                          speedup, mfu(row.flops, row.torchscale_ms), mfu(row.flops, value),
                          f"- / {mem:.0f}" if mem is not None else "-", "-"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("-|-".join("-" * width for width in widths))
    for row in rows:
        image_bar = {name: value for name, value in row.extra_ms.items() if name != "ours+compile"}
        for name, value in image_bar.items():
            print(f"image-only forward, ours / {name} time: {row.ours_ms / value:.2f} (below 1 = ours faster)")
    compile_times = {f"{row.workload}": row.first_call_s.get("ours+compile") for row in rows}
    if any(compile_times.values()):
        print("first call of torch.compile(ours), s: "
              + ", ".join(f"{name} {value:.1f}" for name, value in compile_times.items() if value))


if __name__ == "__main__":
    main()
