"""One masked-data-modeling step of BEiT3ForMaskedDataModeling under torch FSDP2 (`fully_shard` per encoder layer,
then the root), on CPU with gloo; run by tests/test_fsdp.py with torchrun at 1 and 2 processes. Each process takes
its share of a fixed mixed batch (image, text and image-text sub-batches); the loss is the pretraining Trainer's:
summed masked-token and masked-patch cross-entropies over the counts of all processes, times the world size (FSDP
averages gradients over processes). Rank 0 saves the full gradients and the loss to argv[1]."""

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from beit3_hf import BEiT3Config, BEiT3ForMaskedDataModeling, BlockMaskingGenerator, mask_text_tokens
from beit3_hf.pretraining_data import masked_data_modeling_sums

BATCH = 6


def mixed_batch(config, generator):
    masks = BlockMaskingGenerator(config.image_size // config.patch_size, mask_ratio=0.5)
    batch = {}
    for kind in ("image", "text", "image_text"):
        inputs = {}
        if kind != "text":
            inputs["pixel_values"] = torch.randn(BATCH, 3, config.image_size, config.image_size, generator=generator)
            inputs["bool_masked_pos"] = torch.stack([masks(generator) for _ in range(BATCH)])
            inputs["image_labels"] = torch.randint(0, config.visual_vocab_size, (BATCH, config.num_patches),
                                                   generator=generator)
        if kind != "image":
            ids = torch.randint(4, config.vocab_size, (BATCH, 7), generator=generator)
            attention_mask = torch.ones_like(ids)
            attention_mask[::2, -2:] = 0  # some padding
            ids, labels = mask_text_tokens(ids, attention_mask, [0, 1, 2, 3], 3, 0.4, generator=generator)
            inputs.update(input_ids=ids, attention_mask=attention_mask, text_labels=labels)
        batch[kind] = inputs
    return batch


def main(output: str):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = BEiT3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=8, vocab_size=40, mask_token_id=3, visual_vocab_size=16)
    model = BEiT3ForMaskedDataModeling(config)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.beit3.encoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    batch = mixed_batch(config, torch.Generator().manual_seed(1))
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    mine = {kind: {key: value[share] for key, value in inputs.items()} for kind, inputs in batch.items()}
    sums = masked_data_modeling_sums(model, mine)
    counts = torch.stack([sums["text_count"], sums["image_count"]]).float()
    dist.all_reduce(counts)
    loss = world * (sums["text_loss_sum"] / counts[0] + sums["image_loss_sum"] / counts[1])
    loss.backward()
    total = loss.detach().clone() / world
    dist.all_reduce(total)
    gradients = {name: parameter.grad.full_tensor() for name, parameter in model.named_parameters()
                 if parameter.grad is not None}
    if rank == 0:
        torch.save({"loss": total, "gradients": gradients}, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
