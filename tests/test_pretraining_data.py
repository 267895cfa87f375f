"""Masked data modeling data and training: the mixed stream (`beit3_hf.pretraining_data`), its collator, and
`examples/run_pretraining.py` (gradient accumulation, resume, 2 processes, the output fine-tuned, the paper
architecture)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets", reason="the pretraining data needs the optional `datasets` package")

from beit3_hf import (  # noqa: E402
    BEiT3ForMaskedDataModeling,
    BEiT3ForVisualQuestionAnswering,
    BEiT3ImageProcessor,
    BEiT3Processor,
    BEiT3VisualTokenizer,
    BEiT3VisualTokenizerConfig,
    load_beit3_tokenizer,
)
from beit3_hf.data import generate_shapes_dataset  # noqa: E402
from beit3_hf.pretraining_data import (  # noqa: E402
    KINDS,
    SUM_KEYS,
    MaskedDataModelingCollator,
    count_targets,
    masked_data_modeling_sums,
    mixed_pretraining_dataset,
    placeholder_inputs,
    precompute_visual_tokens,
)
from conftest import TINY, tiny_config  # noqa: E402
from test_examples import (  # noqa: E402
    GRADIENT_RTOL,
    SGD,
    FirstStepRecorder,
    assert_close_tensors,
    common_args,
    load_script,
    logged,
    weights,
)

ROOT = Path(__file__).resolve().parents[1]
CODES = 16  # the tiny visual tokenizer's codebook
OVERRIDES = ",".join(f"{k}={v}" for k, v in TINY.items() if k != "vocab_size")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(path, num_train=16, num_test=8, image_size=32)
    return path


@pytest.fixture(scope="module")
def processor(shapes_dir):
    return BEiT3Processor(image_processor=BEiT3ImageProcessor.from_preset("vl", size=32),
                          tokenizer=load_beit3_tokenizer(shapes_dir / "tokenizer"))


@pytest.fixture(scope="module")
def vqkd_dir(tmp_path_factory):
    """A random tiny visual tokenizer (32 px, patch 8: the 4x4 grid of the tiny BEiT-3) with a random codebook."""
    torch.manual_seed(0)
    config = BEiT3VisualTokenizerConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=4, intermediate_size=64, decoder_hidden_size=32,
                                        decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
                                        decoder_intermediate_size=64, codebook_size=CODES, codebook_dim=8,
                                        teacher_hidden_size=32)
    tokenizer = BEiT3VisualTokenizer(config).eval()
    with torch.no_grad():
        tokenizer.quantizer.codebook.copy_(torch.nn.functional.normalize(torch.randn(CODES, 8), dim=-1))
        tokenizer.quantizer.initialized.fill_(True)
    path = tmp_path_factory.mktemp("vqkd")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vqkd(vqkd_dir):
    return BEiT3VisualTokenizer.from_pretrained(vqkd_dir).eval()


@pytest.fixture(scope="module")
def captions(shapes_dir):
    metadata = str(shapes_dir / "captioning" / "train" / "metadata.jsonl")
    return datasets.load_dataset("imagefolder", data_files={"train": metadata}, split="train")


def examples_of(kind, captions, count):
    rows = [captions[i % len(captions)] for i in range(count)]
    return [{"kind": kind, "image": None if kind == "text" else row["image"],
             "text": None if kind == "image" else row["text"], "image_codes": None} for row in rows]


# ---------------------------------------------------------------- the collator


def test_collator_masks_at_the_paper_ratios_and_never_special_tokens(processor, vqkd, captions):
    collator = MaskedDataModelingCollator(processor, patch_size=8, visual_tokenizer=vqkd)
    torch.manual_seed(0)
    batch = collator(examples_of("text", captions, 200) + examples_of("image_text", captions, 100)
                     + examples_of("image", captions, 20))
    tokenizer = processor.tokenizer
    special = torch.tensor(tokenizer.all_special_ids)
    for kind, ratio in (("text", 0.15), ("image_text", 0.5)):
        part = batch[kind]
        labels, ids, attention = part["text_labels"], part["input_ids"], part["attention_mask"]
        masked = labels.ne(-100)
        original = torch.where(masked, labels, ids)
        eligible = attention.bool() & ~torch.isin(original, special)
        assert not (masked & ~eligible).any()  # never <s>, </s>, <pad> or padding
        assert ids[masked].eq(tokenizer.mask_token_id).all() and ids[~masked].ne(tokenizer.mask_token_id).all()
        n = int(eligible.sum())
        share = masked.sum().item() / n
        assert abs(share - ratio) < 4 * (ratio * (1 - ratio) / n) ** 0.5, (kind, share, n)
    for kind in ("image", "image_text"):
        assert batch[kind]["bool_masked_pos"].sum(dim=1).eq(6).all()  # round(0.4 x 16) of every image
        assert batch[kind]["image_labels"].shape == (len(batch[kind]["pixel_values"]), 16)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_sub_batch_of_the_model_inputs(kind, processor, vqkd, captions):
    collator = MaskedDataModelingCollator(processor, patch_size=8, visual_tokenizer=vqkd)
    batch = collator(examples_of(kind, captions, 3))
    keys = {"image": {"pixel_values", "bool_masked_pos", "image_labels"},
            "text": {"input_ids", "attention_mask", "text_labels"}}
    expected = keys.get(kind, keys["image"] | keys["text"])
    assert list(batch) == [kind] and set(batch[kind]) == expected
    model = BEiT3ForMaskedDataModeling(tiny_config(vocab_size=len(processor.tokenizer), visual_vocab_size=CODES))
    outputs = model(**batch[kind])
    sums = masked_data_modeling_sums(model, batch)
    text_count, image_count = count_targets(batch).tolist()
    assert (sums["text_count"].item(), sums["image_count"].item()) == (text_count, image_count)
    assert (text_count > 0) == (kind != "image") and (image_count > 0) == (kind != "text")
    for modality, count in (("text", text_count), ("image", image_count)):
        if count:  # the pooled sum is the model's mean loss times the count
            mean = getattr(outputs, f"{modality}_loss")
            torch.testing.assert_close(sums[f"{modality}_loss_sum"] / count, mean)


@pytest.mark.parametrize("kind", KINDS)
def test_placeholders_run_their_modules_and_add_nothing(kind, processor, vqkd, captions):
    """A batch of `kind` with placeholder sub-batches of the other kinds (what a process runs under FSDP or ZeRO-3
    for a kind another process holds): the placeholders run their modality's embedding, every sum is that of the
    batch alone, and the keys are `SUM_KEYS`'."""
    batch = MaskedDataModelingCollator(processor, patch_size=8, visual_tokenizer=vqkd)(examples_of(kind, captions, 3))
    config = tiny_config(vocab_size=len(processor.tokenizer), visual_vocab_size=CODES)
    model = BEiT3ForMaskedDataModeling(config)
    alone = masked_data_modeling_sums(model, batch)
    calls = {"image": 0, "text": 0}
    embeddings = model.beit3.embeddings
    embeddings.patch_embedding.register_forward_hook(lambda *_: calls.__setitem__("image", calls["image"] + 1))
    embeddings.token_embedding.register_forward_hook(lambda *_: calls.__setitem__("text", calls["text"] + 1))
    padded = {other: batch[kind] if other == kind else placeholder_inputs(other, config) for other in KINDS}
    sums = masked_data_modeling_sums(model, padded)
    assert calls == {"image": 2, "text": 2}  # image and image_text, text and image_text: placeholders included
    assert set(alone) <= set(sums) <= set(SUM_KEYS)
    for key, value in sums.items():
        torch.testing.assert_close(value, alone[key] if key in alone else torch.zeros_like(value), msg=key)
    with pytest.raises(ValueError, match="kind"):
        placeholder_inputs("video", config)


def test_masks_do_not_depend_on_how_examples_are_batched(processor, vqkd, captions):
    collator = MaskedDataModelingCollator(processor, patch_size=8, visual_tokenizer=vqkd)
    examples = [e for trio in zip(*(examples_of(kind, captions, 4) for kind in KINDS)) for e in trio]
    torch.manual_seed(1)
    whole = collator(examples)
    torch.manual_seed(1)
    halves = [collator(examples[:6]), collator(examples[6:])]
    for kind in KINDS:
        for key in ("bool_masked_pos", "text_labels"):
            if key in whole[kind]:
                parts = [half[kind][key] for half in halves]
                width = max(part.shape[-1] for part in parts) if key == "text_labels" else None
                if width:
                    parts = [torch.nn.functional.pad(part, (0, width - part.shape[-1]), value=-100) for part in parts]
                    want = torch.nn.functional.pad(whole[kind][key], (0, max(0, width - whole[kind][key].shape[-1])),
                                                   value=-100)[:, :width]
                else:
                    want = whole[kind][key]
                assert torch.equal(torch.cat(parts), want), (kind, key)


def test_precomputed_codes_are_the_on_the_fly_codes(processor, vqkd, vqkd_dir, captions, shapes_dir, tmp_path):
    with_codes = precompute_visual_tokens(captions.select(range(4)), vqkd, batch_size=3)
    on_the_fly = MaskedDataModelingCollator(processor, patch_size=8, visual_tokenizer=vqkd)
    reader = MaskedDataModelingCollator(processor, patch_size=8)  # no tokenizer: the column is all it has
    plain = examples_of("image", captions, 4)
    precomputed = [dict(e, image_codes=row["image_codes"]) for e, row in zip(plain, with_codes)]
    assert torch.equal(reader(precomputed)["image"]["image_labels"], on_the_fly(plain)["image"]["image_labels"])
    with pytest.raises(ValueError, match="need a `visual_tokenizer`"):
        reader(plain)
    # the documented command: a DatasetDict with the column, saved to disk
    from beit3_hf.pretraining_data import _main

    _main(["--dataset_dir", str(shapes_dir / "captioning"), "--visual_tokenizer", str(vqkd_dir),
           "--output_dir", str(tmp_path / "coded")])
    saved = datasets.load_from_disk(tmp_path / "coded")
    assert sorted(saved) == ["test", "train"] and len(saved["train"][0]["image_codes"]) == 16


def test_collator_refuses_mismatched_grids_and_bad_ratios(processor, vqkd):
    wrong = BEiT3Processor(image_processor=BEiT3ImageProcessor.from_preset("vl", size=64),
                           tokenizer=processor.tokenizer)
    with pytest.raises(ValueError, match="grid"):
        MaskedDataModelingCollator(wrong, patch_size=8, visual_tokenizer=vqkd)
    with pytest.raises(ValueError, match="text_mask_ratio"):
        MaskedDataModelingCollator(processor, patch_size=8, text_mask_ratio=1.5)
    with pytest.raises(ValueError, match="kind"):
        MaskedDataModelingCollator(processor, patch_size=8, visual_tokenizer=vqkd)([{"kind": "video"}])


# ---------------------------------------------------------------- the mixed stream


def test_mixed_stream_interleaves_sources_and_kinds(captions):
    questions = datasets.Dataset.from_dict({"question": [f"question {i}?" for i in range(40)]})
    texts = [captions.remove_columns("image"), questions.rename_column("question", "text").to_iterable_dataset()]
    stream = mixed_pretraining_dataset(images=[captions], texts=texts, image_texts=[captions], proportions=None)
    first = list(stream.take(30))
    assert [e["kind"] for e in first] == list(KINDS) * 10  # round robin: every batch of 3k holds k of each
    text_examples = [e["text"] for e in first if e["kind"] == "text"]
    assert any(t.startswith("question") for t in text_examples) and not all(t.startswith("question")
                                                                           for t in text_examples)
    for e in first:
        assert (e["image"] is None) == (e["kind"] == "text") and (e["text"] is None) == (e["kind"] == "image")

    no_text = list(mixed_pretraining_dataset([captions], texts, [captions], proportions=(1, 0, 1)).take(40))
    assert {e["kind"] for e in no_text} == {"image", "image_text"}
    many = datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(400)]})  # not exhausted in 400 draws
    skewed = [e["kind"] for e in mixed_pretraining_dataset([captions], [many], proportions=(3, 1, 0), seed=0).take(400)]
    assert len(skewed) == 400 and 0.68 < skewed.count("image") / 400 < 0.82 and "image_text" not in skewed
    with pytest.raises(ValueError, match="proportions"):
        mixed_pretraining_dataset([captions], proportions=(1, 1))
    with pytest.raises(ValueError, match="needs the column"):
        mixed_pretraining_dataset(texts=[questions])


# ---------------------------------------------------------------- the script


def pretraining_args(shapes_dir, vqkd_dir, output_dir, *extra, steps=2, batch_size=6, overrides=OVERRIDES):
    data = shapes_dir / "captioning"
    return ["--tokenizer_dir", str(shapes_dir / "tokenizer"), "--visual_tokenizer", str(vqkd_dir),
            "--image_dirs", str(data), "--text_dirs", str(data), f"{shapes_dir / 'vqa'}::question",
            "--image_text_dirs", str(data), "--config_overrides", overrides, "--max_eval_samples", "12",
            "--shuffle_buffer_size", "8", "--image_text_mask_ratio", "0.9",
            *common_args(output_dir, "--do_eval", "False", *extra, steps=steps, batch_size=batch_size)]


def test_script_pretrains_and_its_output_fine_tunes_vqa(shapes_dir, vqkd_dir, tmp_path):
    script = load_script("run_pretraining")
    output_dir = tmp_path / "mdm"
    metrics = script.main(pretraining_args(shapes_dir, vqkd_dir, output_dir, "--do_eval", "True", steps=3))
    for key in ("eval_loss", "eval_text_loss", "eval_image_loss", "eval_text_accuracy", "eval_image_accuracy",
                "eval_image_image_accuracy", "eval_text_text_accuracy", "eval_image_text_text_accuracy",
                "eval_image_text_image_accuracy"):
        assert np.isfinite(metrics[key]), key
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert len(steps) == 3
    for entry in steps:
        for modality in ("text", "image"):
            assert np.isfinite(entry[f"{modality}_loss"]) and 0 <= entry[f"{modality}_accuracy"] <= 1
        # equal weights: the step's loss is the sum of the two pooled means
        assert entry["loss"] == pytest.approx(entry["text_loss"] + entry["image_loss"], abs=2e-3)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == ["BEiT3ForMaskedDataModeling"] and config["visual_vocab_size"] == CODES

    pretrained = weights(output_dir)
    vqa_dir = tmp_path / "vqa"
    records = []  # transformers' loggers do not propagate: listen on its root logger itself
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        load_script("run_vqa").main(["--dataset_dir", str(shapes_dir / "vqa"), "--model_name_or_path",
                                     str(output_dir)] + common_args(vqa_dir, "--learning_rate", "0", steps=1))
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    report = "\n".join(record.getMessage() for record in records)
    tuned = weights(vqa_dir)
    backbone = [name for name in pretrained if name.startswith("beit3.")]
    assert_close_tensors({n: tuned[n] for n in backbone}, {n: pretrained[n] for n in backbone})  # lr 0: equal
    assert not any(name.startswith(("text_head", "image_head")) for name in tuned)
    for head in ("text_head.weight", "image_head.weight"):  # transformers' load report names the dropped heads
        assert any(head in line and "UNEXPECTED" in line for line in report.splitlines()), report[-2000:]
    model = BEiT3ForVisualQuestionAnswering.from_pretrained(output_dir, num_labels=3)
    assert model.classifier is not None


@pytest.mark.kernel_sensitive
def test_gradient_accumulation_equals_the_large_batch(shapes_dir, vqkd_dir, tmp_path):
    """GA=2 x 3 examples logs the losses of GA=1 x 6 and hands the optimiser the same gradient: the step's masked
    tokens are counted over its micro-batches, whatever their kinds."""
    script = load_script("run_pretraining")
    recorders = {}
    for ga, batch_size in ((1, 6), (2, 3)):
        recorders[ga] = FirstStepRecorder()
        script.main(pretraining_args(shapes_dir, vqkd_dir, tmp_path / f"ga{ga}", "--gradient_accumulation_steps",
                                     str(ga), batch_size=batch_size), callbacks=[recorders[ga]])
    for key in ("loss", "grad_norm", "text_accuracy", "image_loss"):
        np.testing.assert_allclose(logged(tmp_path / "ga2", key), logged(tmp_path / "ga1", key), rtol=1e-5)
    assert_close_tensors(recorders[2].gradients, recorders[1].gradients, scale_rtol=GRADIENT_RTOL)


def test_resume_from_checkpoint(shapes_dir, vqkd_dir, tmp_path):
    script = load_script("run_pretraining")
    checkpoints = ["--save_strategy", "steps", "--save_steps", "2"]
    script.main(pretraining_args(shapes_dir, vqkd_dir, tmp_path / "full", *checkpoints, steps=4))
    script.main(pretraining_args(shapes_dir, vqkd_dir, tmp_path / "resumed", *checkpoints, "--resume_from_checkpoint",
                                 str(tmp_path / "full" / "checkpoint-2"), steps=4))
    assert_close_tensors(weights(tmp_path / "resumed"), weights(tmp_path / "full"))
    # the same masks after the checkpoint: the resumed steps log the uninterrupted run's losses
    np.testing.assert_allclose(logged(tmp_path / "resumed"), logged(tmp_path / "full"), rtol=1e-6)


def test_paper_architecture_pretrains_through_the_same_path(shapes_dir, vqkd_dir, tmp_path):
    """Shared attention and a vision-language FFN in the top block: its weights get gradients from the mixed
    batch, and the output reloads with that architecture."""
    recorder = FirstStepRecorder()
    overrides = OVERRIDES + ",multiway_attention=False,num_image_text_layers=1"
    load_script("run_pretraining").main(pretraining_args(shapes_dir, vqkd_dir, tmp_path, overrides=overrides),
                                        callbacks=[recorder])
    vl_ffn = [name for name in recorder.gradients if ".image_text." in name]
    assert vl_ffn and all(recorder.gradients[name].abs().sum() > 0 for name in vl_ffn)
    model = BEiT3ForMaskedDataModeling.from_pretrained(tmp_path)
    assert model.config.multiway_attention is False and model.config.num_image_text_layers == 1


# Every eligible token and patch is masked (ratios 1), so runs over any number of processes mask the same positions;
# the processes hold different numbers of masked tokens, which the step's counting over the processes has to get right.
FULL_MASKS = ("--text_mask_ratio", "1", "--image_text_mask_ratio", "1", "--image_mask_ratio", "1",
              "--image_text_image_mask_ratio", "1", *SGD)


@pytest.fixture(scope="module")
def one_process_run(shapes_dir, vqkd_dir, tmp_path_factory):
    """1 process, 2 steps, every position masked, by batch size: the references of the multi-process runs."""
    runs = {}

    def run(batch_size):
        if batch_size not in runs:
            runs[batch_size] = tmp_path_factory.mktemp(f"one_process_{batch_size}")
            load_script("run_pretraining").main(pretraining_args(shapes_dir, vqkd_dir, runs[batch_size], *FULL_MASKS,
                                                                 steps=2, batch_size=batch_size))
        return runs[batch_size]

    return run


def launch_two_processes(shapes_dir, vqkd_dir, output_dir, *extra, batch_size):
    """`torchrun --nproc_per_node 2 examples/run_pretraining.py`, `batch_size` examples per process, on gloo."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "examples" / "run_pretraining.py"),
               *pretraining_args(shapes_dir, vqkd_dir, output_dir, *FULL_MASKS, *extra, steps=2, batch_size=batch_size)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("batch_size", [3, 1])
def test_two_processes_match_one(batch_size, one_process_run, shapes_dir, vqkd_dir, tmp_path):
    """2 processes (gloo) x `batch_size` examples = 1 process x twice as many: same logged losses and gradient
    norms. With one example each, the two processes hold different kinds at every step."""
    launch_two_processes(shapes_dir, vqkd_dir, tmp_path, batch_size=batch_size)
    for key in ("loss", "grad_norm", "text_loss", "image_accuracy"):
        np.testing.assert_allclose(logged(tmp_path, key), logged(one_process_run(2 * batch_size), key), rtol=1e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_match_one(stage, one_process_run, shapes_dir, vqkd_dir, tmp_path):
    """
    `--deepspeed examples/ds_zero{2,3}.json` over 2 processes (DeepSpeed's CPU accelerator on gloo) x 1 example =
    1 process x 2 without DeepSpeed: same logged losses and gradient norms, and the same weights saved whole
    (ZeRO-3 partitions them; its config gathers them on save). One example per process means that the two hold
    different kinds at every step, and the evaluation's 17 examples give one process a second batch the other lacks.
    Without placeholders (`placeholder_inputs`) and the repeated evaluation batch, ZeRO-3 would hang (its forwards
    gather weights from both processes) and ZeRO-2 would reduce the processes' gradients in differently filled
    buckets.
    """
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (`pip install deepspeed`; .ci/run installs it)")
    launch_two_processes(shapes_dir, vqkd_dir, tmp_path, "--deepspeed", str(ROOT / "examples" / f"ds_zero{stage}.json"),
                         "--do_eval", "True", "--max_eval_samples", "17", batch_size=1)
    reference = one_process_run(2)
    for key in ("loss", "grad_norm", "text_loss", "image_accuracy"):
        np.testing.assert_allclose(logged(tmp_path, key), logged(reference, key), rtol=1e-4)
    assert_close_tensors(weights(tmp_path), weights(reference), scale_rtol=GRADIENT_RTOL)
    metrics = json.loads((tmp_path / "eval_results.json").read_text())
    assert all(np.isfinite(metrics[f"eval_{modality}_loss"]) for modality in ("text", "image"))
    assert BEiT3ForMaskedDataModeling.from_pretrained(tmp_path).config.visual_vocab_size == CODES
