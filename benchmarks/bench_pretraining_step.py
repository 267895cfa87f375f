#!/usr/bin/env python
"""
One masked-data-modeling step against one fine-tuning step of the same size, same model, same machine.

    python benchmarks/bench_pretraining_step.py                      # the shipped shapes model, batch 96
    python benchmarks/bench_pretraining_step.py --size base --image-size 224 --batch-size 12 --text-length 64

The pretraining step is what `examples/run_pretraining.py` runs: a batch of `--batch-size` examples split into thirds
(image-only with 40% of the patches masked block-wise, text-only with 15% of the tokens masked, image-text pairs with
50% of the text and 40% of the patches masked), `BEiT3ForMaskedDataModeling` on each sub-batch, the pooled
cross-entropies backward, an AdamW step. Visual-token targets are either precomputed (read from the batch) or, with
`--on-the-fly`, computed at every step by a `BEiT3VisualTokenizer` (random weights, ViT encoder of the model's size
and grid) on the image-bearing two thirds. The fine-tuning step is a VQA step (`BEiT3ForVisualQuestionAnswering`,
BCE over 3,129 answers) on `--batch-size` image-text pairs of the same image size and text length, also backward and
AdamW. Both are timed in interleaved rounds after a warm-up; the medians and their ratio are printed.
"""

import argparse
import statistics
import time

import torch

from beit3_hf import BEIT3_PRESETS, BEiT3Config, BEiT3ForMaskedDataModeling, BEiT3ForVisualQuestionAnswering
from beit3_hf import BEiT3VisualTokenizer, BEiT3VisualTokenizerConfig, BlockMaskingGenerator, mask_text_tokens
from beit3_hf.pretraining_data import masked_data_modeling_sums

SHAPES = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256)
MASK_ID, SPECIAL = 3, [0, 1, 2, 3]


def text_batch(n: int, length: int, vocab: int, generator):
    input_ids = torch.randint(4, vocab, (n, length), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    return input_ids, torch.ones_like(input_ids)


def pretraining_batch(config, n: int, length: int, generator, on_the_fly: bool):
    third = max(1, n // 3)
    grid = config.image_size // config.patch_size
    masks = BlockMaskingGenerator(grid, mask_ratio=0.4)
    batch = {}
    for kind in ("image", "text", "image_text"):
        inputs = {}
        if kind != "text":
            inputs["pixel_values"] = torch.randn(third, 3, config.image_size, config.image_size, generator=generator)
            inputs["bool_masked_pos"] = torch.stack([masks(generator) for _ in range(third)])
            if not on_the_fly:
                inputs["image_labels"] = torch.randint(0, config.visual_vocab_size, (third, grid * grid),
                                                       generator=generator)
        if kind != "image":
            input_ids, attention_mask = text_batch(third, length, config.vocab_size, generator)
            probability = 0.15 if kind == "text" else 0.5
            input_ids, text_labels = mask_text_tokens(input_ids, attention_mask, SPECIAL, MASK_ID, probability,
                                                      generator=generator)
            inputs.update(input_ids=input_ids, attention_mask=attention_mask, text_labels=text_labels)
        batch[kind] = inputs
    return batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["shapes", *BEIT3_PRESETS], default="shapes")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--text-length", type=int, default=24)
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--on-the-fly", action="store_true", help="visual tokens computed at every step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SHAPES if args.size == "shapes" else BEIT3_PRESETS[args.size]
    common = dict(**sizes, image_size=args.image_size, patch_size=args.patch_size, vocab_size=args.vocab_size,
                  mask_token_id=MASK_ID, visual_vocab_size=args.codebook_size)
    generator = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    pretrain = BEiT3ForMaskedDataModeling(BEiT3Config(**common)).train()
    finetune = BEiT3ForVisualQuestionAnswering(BEiT3Config(**common, num_labels=3129)).train()
    tokenizer = None
    if args.on_the_fly:
        tokenizer = BEiT3VisualTokenizer(BEiT3VisualTokenizerConfig(
            image_size=args.image_size, patch_size=args.patch_size, hidden_size=sizes["hidden_size"],
            num_hidden_layers=sizes["num_hidden_layers"], num_attention_heads=sizes["num_attention_heads"],
            intermediate_size=sizes["intermediate_size"], codebook_size=args.codebook_size)).eval()
        tokenizer.quantizer.initialized.fill_(True)  # random codes stand in for trained ones: same cost
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4)
                  for name, model in (("pretraining", pretrain), ("fine-tuning", finetune))}

    batch = pretraining_batch(pretrain.config, args.batch_size, args.text_length, generator, args.on_the_fly)
    input_ids, attention_mask = text_batch(args.batch_size, args.text_length, args.vocab_size, generator)
    vqa_inputs = dict(pixel_values=torch.randn(args.batch_size, 3, args.image_size, args.image_size,
                                               generator=generator),
                      input_ids=input_ids, attention_mask=attention_mask,
                      labels=torch.rand(args.batch_size, 3129, generator=generator).lt(0.001).float())

    def pretraining_step():
        if tokenizer is not None:
            with torch.no_grad():
                for kind in ("image", "image_text"):
                    pixels = batch[kind]["pixel_values"]
                    batch[kind]["image_labels"] = tokenizer.get_codebook_indices((pixels.clamp(-2, 2) + 2) / 4)
        sums = masked_data_modeling_sums(pretrain, batch)
        loss = sums["text_loss_sum"] / sums["text_count"].clamp(min=1) + \
            sums["image_loss_sum"] / sums["image_count"].clamp(min=1)
        loss.backward()
        optimizers["pretraining"].step()
        optimizers["pretraining"].zero_grad(set_to_none=True)

    def finetuning_step():
        finetune(**vqa_inputs).loss.backward()
        optimizers["fine-tuning"].step()
        optimizers["fine-tuning"].zero_grad(set_to_none=True)

    steps = {"pretraining": pretraining_step, "fine-tuning": finetuning_step}
    times = {name: [] for name in steps}
    for round_index in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)

    image_tokens = args.image_size // args.patch_size
    tokens = {"pretraining": 2 * (args.batch_size // 3) * (image_tokens**2 + 1)
              + 2 * (args.batch_size // 3) * args.text_length,
              "fine-tuning": args.batch_size * (image_tokens**2 + 1 + args.text_length)}
    print(f"{args.size} model ({sum(p.numel() for p in pretrain.parameters()) / 1e6:.2f}M parameters), "
          f"{args.image_size} px / patch {args.patch_size}, text {args.text_length} tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, visual tokens {'on the fly' if tokenizer else 'precomputed'}; "
          f"median of {args.steps} interleaved steps")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"  {name:12s} {median * 1e3:9.1f} ms/step  {args.batch_size / median:8.1f} examples/s  "
              f"{tokens[name] / median:9.0f} tokens/s ({tokens[name]} tokens per step)")
    print(f"  pretraining / fine-tuning time per step: {medians['pretraining'] / medians['fine-tuning']:.2f}x")
    return medians


if __name__ == "__main__":
    main()
