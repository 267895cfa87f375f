"""Captioning throughput: cached generation (image encoded once, two tokens per step) vs full recompute.

    python benchmarks/bench_generation.py                          # base, 224px, 30 new tokens, greedy, CPU
    python benchmarks/bench_generation.py --image-size 480 --num-beams 3 --rounds 3

Both runs decode the same random-weight `BEiT3ForCaptioning` with `generate()`, greedy unless `--num-beams` says
otherwise, with eos disabled so that every run produces exactly `--new-tokens` tokens. "Full recompute" is
`use_cache=False`: every step runs the whole image + caption + `<mask>` sequence again. The two are timed in
interleaved rounds after a short warm-up and the median round is reported; the captions of both runs are checked
to be identical before anything is printed. Not a test: the numbers depend on the machine and on its load.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beit3_hf import BEiT3Config, BEiT3ForCaptioning  # noqa: E402
from beit3_hf.configuration_beit3 import BEIT3_PRESETS  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768),
    "base": BEIT3_PRESETS["base"],
    "large": BEIT3_PRESETS["large"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds of both runs (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--attn-implementation", choices=["eager", "sdpa"], default="sdpa")
    return parser.parse_args(argv)


def generate(model, pixel_values, args, use_cache):
    start = time.perf_counter()
    with torch.no_grad():
        sequences = model.generate(
            pixel_values=pixel_values,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            num_beams=args.num_beams,
            eos_token_id=None,
            use_cache=use_cache,
        )
    return sequences, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BEiT3Config(**SIZES[args.size], image_size=args.image_size)
    config._attn_implementation = args.attn_implementation
    model = BEiT3ForCaptioning(config).eval()
    pixel_values = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    num_image_tokens = config.num_patches + 1
    print(
        f"BEiT3ForCaptioning {args.size} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters), "
        f"{args.image_size}px ({num_image_tokens} image tokens), batch {args.batch_size}, {args.num_beams} beam(s), "
        f"{args.new_tokens} new tokens, {args.attn_implementation}, {torch.get_num_threads()} CPU thread(s)",
        flush=True,
    )

    warm_up = argparse.Namespace(**{**vars(args), "new_tokens": 2})
    generate(model, pixel_values, warm_up, use_cache=True)
    generate(model, pixel_values, warm_up, use_cache=False)

    times = {True: [], False: []}
    for round_index in range(args.rounds):
        for use_cache in (True, False):
            sequences, seconds = generate(model, pixel_values, args, use_cache)
            times[use_cache].append(seconds)
            print(f"  round {round_index + 1}/{args.rounds} {'cached' if use_cache else 'full recompute'}: "
                  f"{seconds:.2f} s", flush=True)
            if use_cache:
                cached_sequences = sequences
            elif not torch.equal(sequences, cached_sequences):
                raise SystemExit("cached and full-recompute generation disagree; not reporting timings")

    new_tokens = args.batch_size * args.new_tokens
    cached_speed = new_tokens / statistics.median(times[True])
    full_speed = new_tokens / statistics.median(times[False])
    print(f"cached generation:  {cached_speed:8.2f} tokens/s")
    print(f"full recompute:     {full_speed:8.2f} tokens/s")
    print(f"speed-up (cached / full recompute): {cached_speed / full_speed:.1f}x")


if __name__ == "__main__":
    main()
