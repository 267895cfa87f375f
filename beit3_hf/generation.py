"""Decoding settings of the released BEiT-3 captioning checkpoints.

unilm evaluates its captioners (`CaptioningHandler.eval_batch`) with beam search over 3 beams, length penalty 0.6,
one returned caption, and a text budget of `num_max_bpe_tokens` (64 unless the command line sets it; the released
evaluation commands do not). The converted checkpoints carry these settings as their `generation_config`, so
`model.generate(pixel_values=...)` decodes as the paper's numbers were obtained.
"""

from transformers import GenerationConfig

# unilm's `--num_max_bpe_tokens` default, used by the released captioning evaluation commands
UNILM_NUM_MAX_BPE_TOKENS = 64


def captioning_generation_config(
    num_max_bpe_tokens: int = UNILM_NUM_MAX_BPE_TOKENS,
    bos_token_id: int = 0,
    pad_token_id: int = 1,
    eos_token_id: int = 2,
) -> GenerationConfig:
    """
    The decoding setting of unilm's captioning evaluation as a `GenerationConfig`.

    Args:
        num_max_bpe_tokens (`int`, defaults to 64): unilm's text budget. unilm ends a caption after at most
            `num_max_bpe_tokens - 3` tokens (its sequence also holds `<s>`, the `<mask>` slot and `</s>`), so that
            is `max_new_tokens`: the same longest caption. (`max_new_tokens` rather than `max_length`, so that
            passing `max_new_tokens` to `generate` replaces it without a warning.)
        bos_token_id / pad_token_id / eos_token_id: the XLM-R ids of `<s>` (every caption starts from it),
            `<pad>` and `</s>`.

    `early_stopping="never"` is unilm's stopping rule: a sentence is done once no running beam could beat the
    finished ones even at the longest length.
    """
    if num_max_bpe_tokens < 4:
        raise ValueError(f"`num_max_bpe_tokens` must leave room for a caption (at least 4), got {num_max_bpe_tokens}.")
    return GenerationConfig(
        num_beams=3,
        length_penalty=0.6,
        early_stopping="never",
        num_return_sequences=1,
        do_sample=False,
        max_new_tokens=num_max_bpe_tokens - 3,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


__all__ = ["captioning_generation_config", "UNILM_NUM_MAX_BPE_TOKENS"]
