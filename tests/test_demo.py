"""The README's main job: the shipped models answer held-out examples; `--model-dir` runs converted checkpoints."""

from importlib import resources

import pytest
import torch
from PIL import Image

from beit3_hf import BEiT3Config, BEiT3ImageProcessor, BEiT3Processor, demo
from beit3_hf.shipped import SHIPPED_MODELS
from beit3_hf.tasks import TASKS
from beit3_hf.tokenization_beit3 import load_beit3_tokenizer


def test_demo_answers_with_every_shipped_model_and_writes_the_contact_sheet(tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    results = demo.main(["--num-examples", "12", "--show", "2", "--contact-sheet", str(sheet)])
    out = capsys.readouterr().out
    assert [result.name for result in results] == list(SHIPPED_MODELS)
    for result in results:
        assert f"{result.name} (" in out
        assert len(result.rows) == 12 and all({"answer", "truth", "correct", "images"} <= set(r) for r in result.rows)
    assert out.count("  score: ") == len(SHIPPED_MODELS)
    assert out.count("✓") + out.count("✗") == 2 * len(SHIPPED_MODELS)
    assert f"contact sheet: {sheet.resolve()}" in out
    image = Image.open(sheet)
    assert image.width > 1000 and image.height > 100 * len(SHIPPED_MODELS)
    # trained models: most held-out answers are right for every head
    for result in results:
        assert sum(r["correct"] for r in result.rows) >= 6, result.summary()


def _random_checkpoints(root):
    """One tiny random checkpoint per task, laid out as `--model-dir` expects (`<root>/<task>/`)."""
    tokenizer = load_beit3_tokenizer(str(resources.files("beit3_hf") / "assets" / "shapes_tokenizer"))
    labels = {"image_classification": ["cat", "cup"], "vqa": ["red", "blue", "2"], "visual_reasoning": ["no", "yes"]}
    for task, spec in TASKS.items():
        torch.manual_seed(0)
        names = labels.get(task)
        config = BEiT3Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=16, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
            use_final_layer_norm=spec.final_layer_norm, id2label=dict(enumerate(names)) if names else None,
        )
        spec.model_class(config).save_pretrained(root / task)
        image_processor = BEiT3ImageProcessor.from_preset(spec.processor_preset, size=32)
        BEiT3Processor(image_processor, tokenizer).save_pretrained(root / task)


def test_demo_runs_converted_checkpoints_on_photos(tmp_path, capsys):
    pytest.importorskip("skimage")
    _random_checkpoints(tmp_path)
    demo.main(["--model-dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    for spec in TASKS.values():
        if spec.name in demo.RUNNERS:
            assert any(line.startswith(spec.model_class.__name__) and "s  " in line for line in lines), spec.name
    assert any("image (1, 5, 32)" in line for line in lines)  # CLS + 2x2 patches
    assert any("(1, 2, 3, 32, 32)" in line for line in lines)  # the NLVR2 image pair
