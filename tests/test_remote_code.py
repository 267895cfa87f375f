"""Remote code: saved directories load with `trust_remote_code=True` where `beit3_hf` cannot be imported.

Every head, the pretraining model and the visual tokenizer are saved here with their processors; one subprocess that
cannot import the package (its finders are removed and a blocker refuses `beit3_hf`, which would also catch a
copied module importing the package) loads each through transformers' Auto classes and compares its outputs with
the package's, computed here.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import resources

import numpy as np
import torch
from PIL import Image

import beit3_hf
from beit3_hf.tokenization_beit3 import load_beit3_tokenizer

from conftest import tiny_config

# directory -> (Auto class, model class): every class `import beit3_hf` registers, plus the NLVR2 head's remote one
MODELS = {
    "backbone": ("AutoModel", beit3_hf.BEiT3Model),
    "image_classification": ("AutoModelForImageClassification", beit3_hf.BEiT3ForImageClassification),
    "vqa": ("AutoModelForVisualQuestionAnswering", beit3_hf.BEiT3ForVisualQuestionAnswering),
    "visual_reasoning": ("AutoModelForSequenceClassification", beit3_hf.BEiT3ForVisualReasoning),
    "retrieval": ("AutoModelForZeroShotImageClassification", beit3_hf.BEiT3ForImageTextRetrieval),
    "captioning": ("AutoModelForImageTextToText", beit3_hf.BEiT3ForCaptioning),
    "pretraining": ("AutoModelForPreTraining", beit3_hf.BEiT3ForMaskedDataModeling),
}
TEXTS = ["a red circle", "two blue squares left"]

CHILD = textwrap.dedent(
    r'''
    import importlib.abc, importlib.util, json, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "beit3_hf" or name.startswith("beit3_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    # an editable install's finder, then the blocker for any other install
    sys.meta_path[:] = [Blocker()] + [f for f in sys.meta_path if "beit3_hf" not in type(f).__module__]
    try:
        import beit3_hf  # noqa: F401
        raise SystemExit("beit3_hf is importable in the remote-code process")
    except ModuleNotFoundError:
        pass

    import numpy as np
    import torch
    import transformers
    from PIL import Image

    root = sys.argv[1]
    spec = json.load(open(f"{root}/spec.json"))
    expected = torch.load(f"{root}/expected.pt")
    inputs = torch.load(f"{root}/inputs.pt")
    images = [Image.open(f"{root}/image{i}.png") for i in range(2)]
    report = {}

    def same(a, b):
        return bool(a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-6))

    with torch.no_grad():
        for name, auto_class in spec["models"].items():
            path = f"{root}/{name}"
            config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
            model = getattr(transformers, auto_class).from_pretrained(path, trust_remote_code=True).eval()
            processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=True)
            image_processor = transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            pair = name == "visual_reasoning"
            text = None if name == "image_classification" else spec["texts"]
            batch = processor(images=[images] * 2 if pair else images, text=text, max_length=12, return_tensors="pt")
            row = {
                "classes": [type(o).__name__ for o in (config, model, processor, image_processor, tokenizer)],
                "modules": sorted({type(o).__module__.split(".")[0] for o in (config, model, processor)}),
                "processor": all(same(batch[k], inputs[name][k]) for k in inputs[name]),
                "image_processor": same(image_processor(images, return_tensors="pt")["pixel_values"],
                                        inputs["images"]),
                "tokenizer": tokenizer(spec["texts"])["input_ids"] == spec["token_ids"],
            }
            model_inputs = dict(inputs[name])
            if name == "pretraining":
                model_inputs["bool_masked_pos"] = inputs["bool_masked_pos"]
            out = model(**model_inputs)
            key = spec["output_keys"][name]
            row["output"] = same(out[key], expected[name])
            if name == "captioning":
                generated = model.generate(pixel_values=model_inputs["pixel_values"], max_new_tokens=3)
                row["generate"] = torch.equal(generated, expected["captioning_generate"])
            report[name] = row

        path = f"{root}/visual_tokenizer"
        model = transformers.AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        image_processor = transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
        report["visual_tokenizer"] = {
            "classes": [type(model).__name__, type(image_processor).__name__],
            "modules": sorted({type(o).__module__.split(".")[0] for o in (model, image_processor)}),
            "image_processor": same(pixel_values, inputs["visual_tokenizer"]),
            "output": torch.equal(model.get_codebook_indices(pixel_values), expected["visual_tokenizer"]),
        }
    print("REPORT" + json.dumps(report))
    '''
)


def _images(root):
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 256, (20 + 6 * i, 30, 3), dtype=np.uint8)) for i in range(2)]
    for i, image in enumerate(images):
        image.save(root / f"image{i}.png")
    return [Image.open(root / f"image{i}.png") for i in range(2)]


def test_every_saved_directory_loads_with_trust_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    images = _images(tmp_path)
    tokenizer = load_beit3_tokenizer(str(resources.files("beit3_hf") / "assets" / "shapes_tokenizer"))
    processor = beit3_hf.BEiT3Processor(beit3_hf.BEiT3ImageProcessor.from_preset("vl", size=32), tokenizer)
    config = tiny_config(vocab_size=len(tokenizer), mask_token_id=len(tokenizer) - 1)
    inputs = {"images": processor.image_processor(images, return_tensors="pt")["pixel_values"]}
    inputs["bool_masked_pos"] = torch.zeros(2, 16, dtype=torch.bool)
    inputs["bool_masked_pos"][:, 3:7] = True
    expected, output_keys = {}, {}
    with torch.no_grad():
        for name, (_, model_class) in MODELS.items():
            model = model_class(config).eval()
            model.save_pretrained(tmp_path / name)
            processor.save_pretrained(tmp_path / name)
            pair = name == "visual_reasoning"
            text = None if name == "image_classification" else TEXTS
            batch = processor(images=[images] * 2 if pair else images, text=text, max_length=12, return_tensors="pt")
            inputs[name] = dict(batch)
            extra = {"bool_masked_pos": inputs["bool_masked_pos"]} if name == "pretraining" else {}
            out = model(**batch, **extra)
            output_keys[name] = next(key for key in ("logits", "logits_per_image", "text_logits", "last_hidden_state")
                                     if out.get(key) is not None)  # fmt: skip
            expected[name] = out[output_keys[name]]
            if name == "captioning":
                expected["captioning_generate"] = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=3)

        from test_visual_tokenizer import tiny_config as tokenizer_config

        visual_tokenizer = beit3_hf.BEiT3VisualTokenizer(tokenizer_config()).eval()
        visual_tokenizer.quantizer.initialized.fill_(True)  # a random codebook, usable
        visual_tokenizer.save_pretrained(tmp_path / "visual_tokenizer")
        tokenizer_processor = beit3_hf.BEiT3ImageProcessor(do_normalize=False, size={"height": 32, "width": 32})
        tokenizer_processor.save_pretrained(tmp_path / "visual_tokenizer")
        inputs["visual_tokenizer"] = tokenizer_processor(images, return_tensors="pt")["pixel_values"]
        expected["visual_tokenizer"] = visual_tokenizer.get_codebook_indices(inputs["visual_tokenizer"])

    for directory in [*MODELS, "visual_tokenizer"]:  # every module an auto_map names is in its directory
        for config_file in (tmp_path / directory).glob("*.json"):
            text = config_file.read_text()
            for module in set(re.findall(r'"(\w+)\.BEiT3\w+"', text)):
                assert (tmp_path / directory / f"{module}.py").is_file(), (directory, config_file.name, module)
    saved = json.loads((tmp_path / "vqa" / "config.json").read_text())["auto_map"]
    assert saved["AutoBackbone"] == "modeling_beit3_backbone.BEiT3Backbone"
    assert saved["AutoConfig"] == "configuration_beit3.BEiT3Config"
    assert {auto for auto, _ in MODELS.values()} <= set(saved)
    torch.save(expected, tmp_path / "expected.pt")
    torch.save(inputs, tmp_path / "inputs.pt")
    spec = {
        "models": {name: auto for name, (auto, _) in MODELS.items()},
        "texts": TEXTS,
        "token_ids": tokenizer(TEXTS)["input_ids"],
        "output_keys": output_keys,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "child.py").write_text(CHILD)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(beit3_hf.__file__)))
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "OMP_NUM_THREADS": "1",
    }
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "child.py"), str(tmp_path)],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert not str(work).startswith(repo)
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    for name, (auto_class, model_class) in MODELS.items():
        row = report[name]
        assert row["classes"] == ["BEiT3Config", model_class.__name__, "BEiT3Processor", "BEiT3ImageProcessor",
                                  "BEiT3Tokenizer"], (name, row)  # fmt: skip
        assert row["modules"] == ["transformers_modules"], (name, row)  # the copied code, not the package
        assert row["processor"] and row["image_processor"] and row["tokenizer"], (name, row)
        assert row["output"], (name, row)
    assert report["captioning"]["generate"]
    assert report["visual_tokenizer"] == {
        "classes": ["BEiT3VisualTokenizer", "BEiT3ImageProcessor"],
        "modules": ["transformers_modules"],
        "image_processor": True,
        "output": True,
    }
