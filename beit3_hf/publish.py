"""Publish every checkpoint of a release folder to a Hub namespace: convert, check, upload.

    beit3-publish RELEASE_DIR NAMESPACE [--work-dir DIR] [--dry-run] [--only NAME ...] [--private]
    python -m beit3_hf.publish RELEASE_DIR NAMESPACE --dry-run

`RELEASE_DIR` holds the released `.pth` files (BEiT-3 checkpoints and BEiT v2 visual tokenizers), and
`beit3.spm` (the tokenizer, converted into every checkpoint that takes text) and unilm's `answer2label.txt` (the
VQA label names) when available. Each file is converted into `WORK_DIR/NAME` (the converter writes the weights,
the preprocessing, the remote code and, for released names, the card; other names get a card read off the model),
then checked:

- the directory reloads through the package's Auto class and runs one forward pass on an image (and a text, with
  the saved processor) with finite outputs;
- the card (README.md) names the model class and shows both ways of loading it (the package, `trust_remote_code`);
- `config.json` has an `auto_map` and every module it names is in the directory.

Then each directory goes to `NAMESPACE/NAME` with two huggingface_hub calls, `create_repo` and `upload_folder`.
`--dry-run` writes the same directories and `WORK_DIR/upload_plan.json` (the calls, with their arguments) and
touches no network. A check that fails stops before anything is uploaded.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
from transformers.utils import logging

from .convert import VISUAL_TOKENIZER_TASK, convert_checkpoint, detect_task, load_original_state_dict
from .foreign_layouts import to_unilm_layout
from .model_cards import render_generic_card
from .modeling_beit3 import BEiT3ForImageClassification, BEiT3ForVisualReasoning
from .modeling_visual_tokenizer import BEiT3VisualTokenizer
from .tasks import TASKS

logger = logging.get_logger(__name__)

__all__ = ["check_directory", "main", "plan_uploads", "publish"]


def _task_of(path: Path) -> str:
    """The converter's task for `path` (`visual_tokenizer` for VQ-KD files), read off its keys before converting."""
    state_dict = load_original_state_dict(path)
    if "quantize.embedding.weight" in state_dict:
        return VISUAL_TOKENIZER_TASK
    unilm, layout = to_unilm_layout(state_dict)
    return "image_only" if layout == "timm" else detect_task(unilm)


def _takes_text(model) -> bool:
    return not (
        isinstance(model, (BEiT3ForImageClassification, BEiT3VisualTokenizer)) or getattr(model.config, "image_only", False)
    )


def check_directory(directory: str | Path, model_class: type) -> dict:
    """Reloads `directory`, runs one forward pass and checks the card and the remote code; returns what it saw,
    raises ValueError on the first failure."""
    directory = Path(directory)
    auto_classes = {task.model_class: task.auto_class for task in TASKS.values() if task.auto_class is not None}
    loader = auto_classes.get(model_class, model_class)
    model = loader.from_pretrained(directory).eval()
    if type(model) is not model_class:
        raise ValueError(f"{directory}: {loader.__name__} loaded {type(model).__name__}, not {model_class.__name__}.")
    size = model.config.image_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    pixel_values = AutoImageProcessor.from_pretrained(directory)(image, return_tensors="pt")["pixel_values"]
    inputs = {"pixel_values": pixel_values}
    if _takes_text(model):
        if (directory / "tokenizer.json").is_file():
            text = AutoTokenizer.from_pretrained(directory)(["a photo of a cat"], return_tensors="pt")
        else:  # no tokenizer saved (no beit3.spm): ids inside the vocabulary
            ids = torch.tensor([[model.config.bos_token_id, 5, 6, model.config.eos_token_id]])
            text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        inputs.update(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    if isinstance(model, BEiT3ForVisualReasoning):
        inputs["pixel_values"] = torch.stack([pixel_values, pixel_values], dim=1)
    with torch.no_grad():
        outputs = model(**inputs)
    finite = [key for key, value in outputs.items() if torch.is_tensor(value) and value.is_floating_point()]
    bad = [key for key in finite if not torch.isfinite(outputs[key]).all()]
    if bad or not finite:
        raise ValueError(f"{directory}: the forward pass gave non-finite {bad or 'no'} outputs.")

    card_path = directory / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    missing = [part for part in (model_class.__name__, "import beit3_hf", "trust_remote_code=True") if part not in card]
    if missing:
        raise ValueError(f"{card_path}: the card is missing {missing}.")

    auto_map = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    references = [ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value]) if ref]
    absent = sorted({ref.split(".")[0] for ref in references} - {path.stem for path in directory.glob("*.py")})
    if not auto_map or absent:
        raise ValueError(f"{directory}: remote code incomplete (auto_map {sorted(auto_map)}, missing modules {absent}).")
    return {"outputs": sorted(finite), "auto_map": sorted(auto_map)}


def plan_uploads(directories: dict[str, Path], namespace: str, private: bool = False) -> list[dict]:
    """The huggingface_hub calls that publish each directory to `namespace/NAME`."""
    calls = []
    for name, directory in directories.items():
        repo_id = f"{namespace}/{name}"
        calls.append({"call": "create_repo", "repo_id": repo_id, "exist_ok": True, "private": private})
        calls.append({"call": "upload_folder", "repo_id": repo_id, "folder_path": str(directory),
                      "commit_message": f"Upload {name} converted with beit3_hf"})  # fmt: skip
    return calls


def publish(
    release_dir: str | Path,
    namespace: str,
    work_dir: str | Path | None = None,
    dry_run: bool = False,
    only: list[str] | None = None,
    private: bool = False,
    num_attention_heads: int | None = None,
    api=None,
) -> list[dict]:
    """Converts and checks every `.pth` of `release_dir`, then uploads (unless `dry_run`); returns the calls."""
    release_dir = Path(release_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", namespace or ""):
        raise ValueError(f"`namespace` must be a Hub user or organisation name, got {namespace!r}.")
    checkpoints = sorted(release_dir.glob("*.pth"))
    if only:
        unknown = sorted(set(only) - {path.stem for path in checkpoints})
        if unknown:
            raise ValueError(f"--only names {unknown}, which are not .pth files in {release_dir}.")
        checkpoints = [path for path in checkpoints if path.stem in only]
    if not checkpoints:
        raise ValueError(f"{release_dir} holds no .pth checkpoints.")
    work_dir = Path(work_dir) if work_dir is not None else release_dir / "converted"
    spm = release_dir / "beit3.spm"
    answers = release_dir / "answer2label.txt"
    directories = {}
    for index, path in enumerate(checkpoints, 1):
        name, output_dir = path.stem, work_dir / path.stem
        logger.warning(f"[{index}/{len(checkpoints)}] converting {path.name} -> {output_dir}")
        task = _task_of(path)
        text = task not in ("image_only", "image_classification", VISUAL_TOKENIZER_TASK)
        model = convert_checkpoint(
            path,
            output_dir,
            task=VISUAL_TOKENIZER_TASK if task == VISUAL_TOKENIZER_TASK else None,
            num_attention_heads=num_attention_heads,
            spm_path=spm if text and spm.is_file() else None,
            answer2label_path=answers if task == "vqa" and answers.is_file() else None,
        )
        if not (output_dir / "README.md").is_file():
            card = render_generic_card(name, model, f"{namespace}/{name}", with_processor=text and spm.is_file())
            (output_dir / "README.md").write_text(card, encoding="utf-8")
        else:  # a released name: the converter's card, pointed at the namespace
            card = (output_dir / "README.md").read_text(encoding="utf-8")
            (output_dir / "README.md").write_text(card.replace(f"path/to/{name}", f"{namespace}/{name}"), encoding="utf-8")
        check_directory(output_dir, type(model))
        directories[name] = output_dir
    calls = plan_uploads(directories, namespace, private)
    (work_dir / "upload_plan.json").write_text(json.dumps(calls, indent=2) + "\n", encoding="utf-8")
    if dry_run:
        logger.warning(f"dry run: {len(calls)} calls written to {work_dir / 'upload_plan.json'}, nothing uploaded")
        return calls
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    for call in calls:
        arguments = {key: value for key, value in call.items() if key != "call"}
        logger.warning(f"{call['call']}({arguments['repo_id']})")
        getattr(api, call["call"])(**arguments)
    return calls


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release_dir", help="folder of released .pth files (+ beit3.spm, answer2label.txt)")
    parser.add_argument("namespace", help="Hub user or organisation to upload to (NAMESPACE/NAME per file)")
    parser.add_argument("--work-dir", help="where the converted directories go (default: RELEASE_DIR/converted)")
    parser.add_argument("--dry-run", action="store_true", help="convert and check, write upload_plan.json, no network")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="publish these files only (names without .pth)")
    parser.add_argument("--private", action="store_true", help="create private repositories")
    parser.add_argument("--num-attention-heads", type=int, help="default: hidden_size / 64 (true of every release)")
    args = parser.parse_args(argv)
    calls = publish(args.release_dir, args.namespace, args.work_dir, args.dry_run, args.only, args.private,
                    args.num_attention_heads)  # fmt: skip
    for call in calls:
        print(json.dumps(call))


if __name__ == "__main__":
    main()
