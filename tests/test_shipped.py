"""The models shipped in beit3_hf/assets/models: loadable, small, and still scoring what their cards say."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transformers
from beit3_hf import shipped
from beit3_hf.shipped import SHIPPED_MODELS, evaluate_shipped, load_shipped_model, shipped_model_path

ROOT = Path(__file__).resolve().parent.parent
SCORES = shipped.shipped_scores()


def test_every_shipped_model_is_there_with_its_card_and_scores():
    assert set(SCORES) == set(SHIPPED_MODELS)
    total = sum(f.stat().st_size for f in shipped.models_dir().rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"the shipped models take {total / 2**20:.1f} MB (limit 30)"
    for name, spec in SHIPPED_MODELS.items():
        path = shipped_model_path(name)
        card = (path / "README.md").read_text()
        for metric, value in SCORES[name]["scores"].items():
            assert f"| {metric} | {value:.4f} |" in card, (name, metric)
        assert "build_shipped_models.py" in card and "not** a substitute" in card
        assert not list(path.glob("*.py")), "no remote-code copies: `import beit3_hf` serves the classes"


@pytest.mark.parametrize("name", list(SHIPPED_MODELS))
def test_shipped_model_loads_by_class_and_short_name_in_fp32_from_fp16_files(name):
    spec = SHIPPED_MODELS[name]
    from safetensors import safe_open

    with safe_open(str(shipped_model_path(name) / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(key).dtype for key in weights.keys()}
    assert dtypes - {torch.int64} == {torch.float16}  # int64: BatchNorm step counters
    model_class = shipped._model_class(spec.auto_class)
    model = model_class.from_pretrained(shipped_model_path(name))  # default dtype: the config's float32
    assert model.dtype == torch.float32
    loaded, processor = load_shipped_model(name)
    assert not loaded.training and type(loaded) is type(model)
    assert isinstance(processor, transformers.ProcessorMixin | transformers.ImageProcessingMixin)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", list(SHIPPED_MODELS))
def test_shipped_scores_reproduce_on_a_held_out_sample(name):
    """CI rescoring: the first `ci_num_examples` held-out examples give the figures recorded at build time (up to
    an example or two, for other CPUs' kernels), and those are within sampling noise of the cards' full figures."""
    recorded = SCORES[name]
    n = recorded["ci_num_examples"]
    result = evaluate_shipped(name, num_examples=n)
    for metric, value in result.scores.items():
        assert abs(value - recorded["ci_scores"][metric]) <= 2.0 / n, (metric, value, recorded["ci_scores"][metric])
        card = recorded["scores"][metric]
        noise = 3 * math.sqrt(max(card * (1 - card), 0.01) / n)
        assert abs(value - card) <= noise, (metric, value, card)
    headline = recorded["scores"][SHIPPED_MODELS[name].metric]
    assert headline >= 0.8, f"{name}: {headline}"  # "most held-out examples right"


def test_held_out_scenes_are_not_the_training_or_test_scenes():
    from beit3_hf.data import shapes

    held_out = {repr(scene) for scene in shipped.held_out_scenes(200)}
    for split in ("train", "test"):
        assert not held_out & {repr(scene) for scene in shapes.split_scenes(split, 2000)}


def test_unknown_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="'shapes-vqaa'"):
        shipped_model_path("shapes-vqaa")
    with pytest.raises(ValueError, match="num_examples"):
        evaluate_shipped("shapes-vqa", num_examples=0)


def test_build_command_regenerates_every_shipped_model_in_smoke_mode(tmp_path):
    """The regeneration command end to end, every stage for 3 steps on tiny data, then the packaging."""
    from beit3_hf.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR

    if not Path(DEFAULT_FASHION_MNIST_DIR).is_dir():
        pytest.skip("needs the Debian dataset-fashion-mnist package (.ci/run installs it)")
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "build_shipped_models.py"), "--work_dir", str(tmp_path), "--smoke",
         "--num_examples", "8"], capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    output = tmp_path / "shipped"
    scores = json.loads((output / "scores.json").read_text())
    assert set(scores) == set(SHIPPED_MODELS)
    build = json.loads((output / "build.json").read_text())
    assert set(build["stage_seconds"]) >= {"pretrained", "vqa", "visual_reasoning", "package"}
    for name in SHIPPED_MODELS:
        assert (output / name / "README.md").is_file() and (output / name / "model.safetensors").is_file()
    # a second run resumes: every stage is skipped
    again = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "build_shipped_models.py"), "--work_dir", str(tmp_path), "--smoke",
         "--num_examples", "8"], capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert again.returncode == 0 and again.stdout.count("skipped") == len(build["stage_seconds"]) - 1
