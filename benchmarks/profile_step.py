"""Where the time of one image+text training step goes: the top operators by device time, ours and torchscale.

    python benchmarks/profile_step.py --device cuda --batch-size 64            # bf16 autocast, base, 224 px
    python benchmarks/profile_step.py --device cpu --size tiny --batch-size 2  # smoke run

Builds both models the way `benchmark_speed.py` does (same weights through the converter), runs a few training
steps under `torch.profiler`, and prints, per model, the operators that take the most device time (self time, so
nested operators are not counted twice) with their share of the step, and the number of kernels launched per step.
"""

import argparse
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

from benchmark_speed import SIZES, TrainStep, build_official, build_ours, forward_fns, make_inputs


def profile_step(name: str, step, device: torch.device, steps: int, top: int):
    for _ in range(3):  # warm-up: kernel selection, optimizer state
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_time(event):
        return event.self_device_time_total if on_device else event.self_cpu_time_total

    total = sum(self_time(event) for event in events)
    kernels = sum(event.count for event in events if on_device and event.device_type.name == "CUDA")
    print(f"\n=== {name}: {total / steps / 1e3:.2f} ms of {'device' if on_device else 'CPU'} time per step"
          + (f", {kernels / steps:.0f} kernels per step" if on_device else ""))
    print(f"{'operator':<72} {'calls/step':>10} {'ms/step':>9} {'share':>6}")
    for event in sorted(events, key=self_time, reverse=True)[:top]:
        print(f"{event.key[:72]:<72} {event.count / steps:>10.1f} {self_time(event) / steps / 1e3:>9.3f} "
              f"{self_time(event) / total:>6.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-length", type=int, default=64)
    parser.add_argument("--pad-fraction", type=float, default=0.5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager", "flex_attention"], default="sdpa")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--skip-official", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    official = build_official(args.size, args.image_size)
    ours = build_ours(official, args.size, args.image_size, args.attn_implementation)
    official.to(device).train()
    ours.to(device).train()
    inputs = make_inputs(args.batch_size, args.image_size, args.text_length, args.pad_fraction, device)
    forward = forward_fns(official, ours, inputs)["image_text"]

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()

    models = [("ours", forward[1], ours)]
    if not args.skip_official:
        models.append(("torchscale", forward[0], official))
    for name, fn, model in models:
        step = TrainStep(model, fn, autocast)
        profile_step(f"{name} ({args.attn_implementation if name == 'ours' else 'eager'})", step, device,
                     args.steps, args.top)
        step.release()


if __name__ == "__main__":
    main()
