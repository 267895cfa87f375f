import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import beit3_hf  # noqa: E402  (registers the Auto classes)

# Tiny models run fastest on one thread, and a busy 2-core machine makes two threads fight each other.
torch.set_num_threads(1)

# the backbone and every head, for tests that run them all
HEADS = (
    beit3_hf.BEiT3Model,
    beit3_hf.BEiT3ForImageClassification,
    beit3_hf.BEiT3ForVisualQuestionAnswering,
    beit3_hf.BEiT3ForVisualReasoning,
    beit3_hf.BEiT3ForImageTextRetrieval,
    beit3_hf.BEiT3ForCaptioning,
)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    vocab_size=100,
    max_text_positions=40,
)


def tiny_config(**overrides) -> beit3_hf.BEiT3Config:
    return beit3_hf.BEiT3Config(**{**TINY, "num_labels": 3, **overrides})


@pytest.fixture
def config():
    return tiny_config()


def make_inputs(batch_size=2, text_length=7, seed=0, image_size=32, pad_from=4):
    """Images, token ids wrapped in <s> ... </s>, and a mask whose last row is padded from `pad_from` on."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    input_ids = torch.randint(3, 100, (batch_size, text_length), generator=generator)
    input_ids[:, 0] = 0
    attention_mask = torch.ones(batch_size, text_length, dtype=torch.long)
    attention_mask[-1, pad_from:] = 0
    input_ids[-1, pad_from - 1] = 2
    input_ids[-1, pad_from:] = 1
    return pixel_values, input_ids, attention_mask
