"""Captioning generation: the cached decoding reproduces a full forward per step and unilm's incremental decoding."""

import pytest
import torch
from transformers import GenerationConfig

import beit3_hf
from beit3_hf.convert import convert_checkpoint, convert_state_dict, infer_config, load_converted
from beit3_hf.generation import captioning_generation_config
from conftest import tiny_config

from official import build_official, needs_official

pytestmark = pytest.mark.kernel_sensitive  # numbers compared across kernels and orders: CI reruns these

ATOL = 1e-4
BOS, PAD, EOS = 0, 1, 2


def random_captioner(seed=0, attn_implementation="eager", **overrides):
    """A tiny captioner with weights large enough that the argmax is decisive (unlike the default init)."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    model = beit3_hf.BEiT3ForCaptioning(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith("bias") and "norm" not in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def images(batch_size, seed=1, size=32):
    return torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(seed))


def greedy_full_recompute(model, pixel_values, prompt, steps, **forward_kwargs):
    """Reference greedy decoding: a full forward of image + [text so far, <mask>] for every new token."""
    sequences, step_logits = prompt, []
    mask_slot = torch.full((prompt.shape[0], 1), model.config.mask_token_id)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(pixel_values=pixel_values, input_ids=torch.cat([sequences, mask_slot], 1),
                           **forward_kwargs).logits[:, -1]
            step_logits.append(logits)
            sequences = torch.cat([sequences, logits.argmax(-1, keepdim=True)], dim=1)
    return sequences, step_logits


def eos_ending_first_caption(model, pixel_values, steps=8):
    """A token that the first image's greedy caption emits at step 3 or later, and not before: as eos, it ends
    that caption early and (usually) not the others."""
    with torch.no_grad():
        free_run = model.generate(pixel_values=pixel_values, max_new_tokens=steps, eos_token_id=None)
    for step in range(3, steps):
        token = int(free_run[0, step])
        if token not in free_run[0, 1:step].tolist() and token not in (BOS, PAD, model.config.mask_token_id):
            return token
    raise AssertionError(f"no fresh token in the free-running caption {free_run[0].tolist()}")


def strip_padding(sequence):
    sequence = sequence.tolist()
    while sequence and sequence[-1] == PAD:
        sequence.pop()
    return sequence


# ---------------------------------------------------------------------------------------------------------------
# Cached decoding == full recompute
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "prompt, image_size",
    [([BOS], 32), ([BOS, 17, 42, 9], 32), ([BOS], 48)],
    ids=["bos", "prompt", "interpolated-48px"],
)
def test_cached_greedy_equals_full_recompute(attn_implementation, prompt, image_size):
    model = random_captioner(attn_implementation=attn_implementation)
    pixel_values = images(2, size=image_size)
    input_ids = torch.tensor([prompt, prompt])
    extra = {"interpolate_pos_encoding": True} if image_size != 32 else {}
    steps = 12
    expected, expected_logits = greedy_full_recompute(model, pixel_values, input_ids, steps, **extra)
    with torch.no_grad():
        for use_cache in (True, False):
            out = model.generate(pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=steps,
                                 eos_token_id=None, use_cache=use_cache, return_dict_in_generate=True,
                                 output_logits=True, **extra)
            assert torch.equal(out.sequences, expected), use_cache
            for step, (ours, reference) in enumerate(zip(out.logits, expected_logits)):
                torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0, msg=f"step {step}")
    # a decisive reference: the greedy caption is not one token repeated
    assert len(set(expected[0, len(prompt):].tolist())) > 2


def test_cache_holds_image_and_caption_but_not_the_mask_slot():
    model = random_captioner()
    with torch.no_grad():
        out = model.generate(pixel_values=images(1), max_new_tokens=5, eos_token_id=None, return_dict_in_generate=True)
    num_image_tokens = model.config.num_patches + 1
    # every token but the last generated one has been fed back; no `<mask>` slot is left behind
    assert out.cache.get_seq_length() == num_image_tokens + out.sequences.shape[1] - 1


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batch_equals_single_runs(num_beams):
    model = random_captioner()
    pixel_values = images(3)
    eos = eos_ending_first_caption(model, pixel_values)
    kwargs = dict(max_new_tokens=10, num_beams=num_beams, eos_token_id=eos, length_penalty=0.6)
    with torch.no_grad():
        batch = model.generate(pixel_values=pixel_values, **kwargs)
        singles = [model.generate(pixel_values=pixel_values[i : i + 1], **kwargs)[0] for i in range(3)]
    lengths = set()
    for row, single in zip(batch, singles):
        assert strip_padding(row) == strip_padding(single)
        lengths.add(len(strip_padding(single)))
    assert len(lengths) > 1, "every caption has the same length: the batch does not exercise early eos"


# ---------------------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------------------


def test_beam_search_cached_equals_uncached():
    model = random_captioner()
    pixel_values = images(2)
    kwargs = dict(max_new_tokens=8, num_beams=3, num_return_sequences=3, length_penalty=0.6, eos_token_id=None,
                  return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        cached = model.generate(pixel_values=pixel_values, **kwargs)
        uncached = model.generate(pixel_values=pixel_values, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=ATOL, rtol=0)


def test_beam_search_scores_are_length_normalised_log_probabilities():
    """Each returned caption's score is its log-likelihood under a full forward / (generated tokens) ** penalty."""
    model = random_captioner()
    pixel_values = images(2)
    eos = eos_ending_first_caption(model, pixel_values)
    length_penalty = 0.6
    with torch.no_grad():
        out = model.generate(pixel_values=pixel_values, max_new_tokens=10, num_beams=3, num_return_sequences=3,
                             length_penalty=length_penalty, eos_token_id=eos, return_dict_in_generate=True,
                             output_scores=True)
        beams_per_image = out.sequences.shape[0] // pixel_values.shape[0]
        for index, sequence in enumerate(out.sequences):
            tokens = strip_padding(sequence)
            image = pixel_values[index // beams_per_image : index // beams_per_image + 1]
            log_likelihood = 0.0
            for step in range(1, len(tokens)):  # token `step` is read off the <mask> slot after the tokens before it
                prefix = torch.tensor([tokens[:step] + [model.config.mask_token_id]])
                logits = model(pixel_values=image, input_ids=prefix).logits[0, -1]
                log_likelihood += logits.log_softmax(-1)[tokens[step]].item()
            expected = log_likelihood / (len(tokens) - 1) ** length_penalty
            assert out.sequences_scores[index].item() == pytest.approx(expected, abs=ATOL), (index, tokens)


def test_beam_search_respects_eos():
    model = random_captioner()
    pixel_values = images(3)
    eos = eos_ending_first_caption(model, pixel_values)
    max_new_tokens = 10
    with torch.no_grad():
        out = model.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, num_beams=3,
                             num_return_sequences=3, length_penalty=0.6, eos_token_id=eos)
    ended_with_eos = 0
    for sequence in out:
        tokens = strip_padding(sequence)
        assert tokens[0] == BOS
        assert eos not in tokens[:-1], f"a caption continues after eos: {tokens}"
        assert len(tokens) <= 1 + max_new_tokens
        if tokens[-1] == eos:
            ended_with_eos += 1
        else:
            assert len(tokens) == 1 + max_new_tokens, f"a caption stopped without eos or max length: {tokens}"
    assert ended_with_eos > 0


def test_processor_encoded_prompts_are_continued_after_their_last_word():
    """`<s> words </s>` + padding (the processor's encoding) generates as the bare `<s> words` prompt."""
    model = random_captioner()
    pixel_values = images(2)
    encoded = torch.tensor([[BOS, 17, 42, EOS, PAD, PAD], [PAD, BOS, 23, 8, EOS, PAD]])
    attention_mask = (encoded != PAD).long()
    with torch.no_grad():
        expected = model.generate(pixel_values=pixel_values, input_ids=torch.tensor([[BOS, 17, 42], [BOS, 23, 8]]),
                                  max_new_tokens=6, eos_token_id=None)
        ours = model.generate(pixel_values=pixel_values, input_ids=encoded, attention_mask=attention_mask,
                              max_new_tokens=6, eos_token_id=None)
        empty_text = model.generate(pixel_values=pixel_values, input_ids=torch.tensor([[BOS, EOS, PAD]] * 2),
                                    attention_mask=torch.tensor([[1, 1, 0]] * 2), max_new_tokens=6, eos_token_id=None)
        no_prompt = model.generate(pixel_values=pixel_values, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(ours, expected)
    assert torch.equal(empty_text, no_prompt)


# ---------------------------------------------------------------------------------------------------------------
# Against unilm's incremental decoding (CaptioningHandler.eval_batch, greedy)
# ---------------------------------------------------------------------------------------------------------------


def official_greedy(official, pixel_values, mask_id, max_new_tokens, eos_id):
    """unilm's eval_batch step loop with one beam and argmax: [last word, <mask>], the image only in step one,
    `incremental_state` kept across steps with the `<mask>` key/value dropped after each step."""
    batch_size = pixel_values.shape[0]
    cur_input_ids = torch.tensor([[BOS, mask_id]] * batch_size)
    cur_len, incremental_state = 2, {}
    tokens, step_logits = [], []
    done = torch.zeros(batch_size, dtype=torch.bool)
    for _ in range(max_new_tokens):
        outputs, incremental_state = official(
            image=pixel_values if cur_len == 2 else None, text_ids=cur_input_ids, language_masked_pos=None,
            padding_mask=torch.zeros_like(cur_input_ids), text_len=cur_len, incremental_state=incremental_state,
        )
        logits = outputs[:, 1]  # the <mask> slot
        step_logits.append(logits)
        next_words = torch.where(done, PAD, logits.argmax(-1))
        tokens.append(next_words)
        done |= next_words == eos_id
        for layer in incremental_state.values():
            for key in layer:
                layer[key] = layer[key][:, :, :-1, :]
        cur_input_ids = torch.stack([next_words, torch.full_like(next_words, mask_id)], dim=1)
        cur_len += 1
        if done.all():
            break
    return torch.cat([torch.full((batch_size, 1), BOS), torch.stack(tokens, 1)], dim=1), step_logits


@needs_official
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_greedy_matches_official_incremental_decoding(attn_implementation):
    official = build_official("captioning", seed=3)
    state_dict = official.state_dict()
    config, task = infer_config(state_dict, num_attention_heads=4)
    config._attn_implementation = attn_implementation
    model = beit3_hf.BEiT3ForCaptioning(config)
    load_converted(model, convert_state_dict(state_dict, task))
    model.eval()
    pixel_values = images(3, seed=5)
    mask_id = config.mask_token_id

    with torch.no_grad():
        free_run, _ = official_greedy(official, pixel_values, mask_id, 12, eos_id=-1)
        eos = eos_ending_first_caption(model, pixel_values, steps=12)
        expected, expected_logits = official_greedy(official, pixel_values, mask_id, 12, eos_id=eos)
        out = model.generate(pixel_values=pixel_values, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD,
                             return_dict_in_generate=True, output_logits=True)
        without_eos = model.generate(pixel_values=pixel_values, max_new_tokens=12, eos_token_id=None)
    assert torch.equal(without_eos, free_run)
    assert torch.equal(out.sequences, expected)
    assert len(out.logits) == len(expected_logits)
    for step, (ours, reference) in enumerate(zip(out.logits, expected_logits)):
        torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0, msg=f"step {step}")
    assert (expected == eos).any() and not (expected == eos).any(dim=1).all(), "eos should end some captions only"


# ---------------------------------------------------------------------------------------------------------------
# Generation config of the released setting, input validation
# ---------------------------------------------------------------------------------------------------------------


def test_captioning_generation_config_is_unilms_setting():
    config = captioning_generation_config()
    assert (config.num_beams, config.length_penalty, config.early_stopping) == (3, 0.6, "never")
    assert (config.bos_token_id, config.pad_token_id, config.eos_token_id) == (BOS, PAD, EOS)
    assert config.max_new_tokens == 61  # unilm's budget of 64 holds <s>, <mask> and </s>: at most 61 tokens
    assert captioning_generation_config(num_max_bpe_tokens=32).max_new_tokens == 29
    with pytest.raises(ValueError, match="num_max_bpe_tokens"):
        captioning_generation_config(num_max_bpe_tokens=2)

    model = random_captioner()
    model.generation_config = captioning_generation_config(num_max_bpe_tokens=8)
    with torch.no_grad():
        captions = model.generate(pixel_values=images(2))
    assert captions.shape[1] <= 1 + 5 and (captions[:, 0] == BOS).all()


@needs_official
def test_converted_captioning_checkpoint_has_the_released_generation_config(tmp_path):
    official = build_official("captioning")
    checkpoint = tmp_path / "captioner.pth"
    torch.save({"model": official.state_dict()}, checkpoint)
    convert_checkpoint(checkpoint, tmp_path / "converted", num_attention_heads=4)
    saved = GenerationConfig.from_pretrained(tmp_path / "converted")
    expected = captioning_generation_config()
    for name in ("num_beams", "length_penalty", "early_stopping", "max_new_tokens", "bos_token_id", "pad_token_id",
                 "eos_token_id"):
        assert getattr(saved, name) == getattr(expected, name), name


def test_generation_input_errors():
    model = random_captioner()
    pixel_values = images(2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="different lengths"):
            model.generate(pixel_values=pixel_values, input_ids=torch.tensor([[BOS, 5, 6], [PAD, BOS, 7]]),
                           attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]), max_new_tokens=2)
        with pytest.raises(ValueError, match="static caches are not supported"):
            model.generate(pixel_values=pixel_values, max_new_tokens=2, cache_implementation="static")
        with pytest.raises(ValueError, match="not both"):
            model.generate(torch.tensor([[BOS]] * 2), input_ids=torch.tensor([[BOS]] * 2), pixel_values=pixel_values)
        out = model(pixel_values=pixel_values, input_ids=torch.tensor([[BOS, 9]] * 2), use_cache=True)
        with pytest.raises(ValueError, match="image must come first"):
            model(pixel_values=pixel_values, input_ids=torch.tensor([[5]] * 2), cache=out.cache)
        with pytest.raises(ValueError, match="needs `pixel_values`"):
            model(input_ids=torch.tensor([[BOS, 9]] * 2))
        with pytest.raises(ValueError, match="larger than the cache"):
            model(input_ids=torch.tensor([[5]] * 2), cache=out.cache, num_cached_image_tokens=100)
