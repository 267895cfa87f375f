"""ONNX export of the BEiT-3 heads that serve as fixed graphs.

    beit3-export-onnx CONVERTED_DIR OUTPUT_DIR [--opset 18]
    python -m beit3_hf.onnx_export CONVERTED_DIR OUTPUT_DIR

What is exported, each graph with a dynamic batch (and, where text goes in, a dynamic text length with its padding
mask, `attention_mask` 1 = real token):

- `BEiT3ForImageTextRetrieval`: two graphs, as retrieval is served (gallery embeddings computed once, queries
  later): `image_encoder.onnx` (`pixel_values` -> `image_embeds`) and `text_encoder.onnx` (`input_ids`,
  `attention_mask` -> `text_embeds`), both L2-normalised, so a similarity is their dot product (times
  `exp(logit_scale)`, written to `retrieval.json`, for the model's logits).
- `BEiT3ForImageClassification`: `model.onnx` (`pixel_values` -> `logits`).
- `BEiT3ForVisualQuestionAnswering`: `model.onnx` (`pixel_values`, `input_ids`, `attention_mask` -> `logits`).

Images have the checkpoint's resolution (`config.image_size`; the processor saved next to the weights produces it).
Not exported: captioning generation, a loop of forward passes whose key/value cache grows by one position per step
and whose beam search reorders it (transformers' `generate`); a graph would freeze one step's shapes, so a serving
stack would have to re-implement the loop and the cache around it. Run `generate` in PyTorch. Visual reasoning
(NLVR2), the backbone, the pretraining model and the visual tokenizer are not exported either; asking for them
raises a ValueError naming what is supported.

Needs `onnx` and `onnxscript` (torch's exporter) and, to check the graphs, `onnxruntime`: `pip install
beit3-hf[onnx]`. `export_onnx(..., verify=True)` (the CLI's default) runs every graph in onnxruntime on the
example inputs and raises if an output differs from PyTorch by more than `atol`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from .modeling_beit3 import (
    BEiT3ForImageClassification,
    BEiT3ForImageTextRetrieval,
    BEiT3ForVisualQuestionAnswering,
    BEiT3PreTrainedModel,
)

logger = logging.get_logger(__name__)

__all__ = ["SUPPORTED", "export_onnx", "main"]

#: Exported model class -> the graphs written for it.
SUPPORTED = {
    BEiT3ForImageTextRetrieval: ("image_encoder.onnx", "text_encoder.onnx"),
    BEiT3ForImageClassification: ("model.onnx",),
    BEiT3ForVisualQuestionAnswering: ("model.onnx",),
}
NOT_EXPORTED = {
    "BEiT3ForCaptioning": "captioning is autoregressive generation (a growing key/value cache, beam search): run "
    "`generate` in PyTorch",
}


class _ImageTower(nn.Module):
    def __init__(self, model: BEiT3ForImageTextRetrieval):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output


class _TextTower(nn.Module):
    def __init__(self, model: BEiT3ForImageTextRetrieval):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class _ImageLogits(_ImageTower):
    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


class _ImageTextLogits(_TextTower):
    def forward(self, pixel_values, input_ids, attention_mask):
        return self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits


def _example_inputs(config, batch_size: int = 2, text_length: int = 7):
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size,
                               generator=generator)  # fmt: skip
    input_ids = torch.randint(3, min(config.vocab_size, 1000), (batch_size, text_length), generator=generator)
    input_ids[:, 0] = config.bos_token_id
    attention_mask = torch.ones(batch_size, text_length, dtype=torch.long)
    attention_mask[-1, text_length - 2 :] = 0  # a padded row
    input_ids[-1, text_length - 2 :] = config.pad_token_id
    return pixel_values, input_ids, attention_mask


def _graphs(model: BEiT3PreTrainedModel):
    """(file name, module, example inputs, input names, output name) of each graph for `model`."""
    pixel_values, input_ids, attention_mask = _example_inputs(model.config)
    if isinstance(model, BEiT3ForImageTextRetrieval):
        return [
            ("image_encoder.onnx", _ImageTower(model), (pixel_values,), ["pixel_values"], "image_embeds"),
            ("text_encoder.onnx", _TextTower(model), (input_ids, attention_mask), ["input_ids", "attention_mask"],
             "text_embeds"),
        ]  # fmt: skip
    if isinstance(model, BEiT3ForImageClassification):
        return [("model.onnx", _ImageLogits(model), (pixel_values,), ["pixel_values"], "logits")]
    if isinstance(model, BEiT3ForVisualQuestionAnswering):
        inputs = (pixel_values, input_ids, attention_mask)
        return [("model.onnx", _ImageTextLogits(model), inputs, ["pixel_values", "input_ids", "attention_mask"], "logits")]
    name = type(model).__name__
    reason = NOT_EXPORTED.get(name, "no graph is defined for it")
    supported = ", ".join(cls.__name__ for cls in SUPPORTED)
    raise ValueError(f"ONNX export supports {supported}; got {name} ({reason}).")


def _dynamic_shapes(input_names: list[str]):
    batch = torch.export.Dim("batch", min=1, max=4096)
    text_length = torch.export.Dim("text_length", min=1, max=4096)
    shapes = {"pixel_values": {0: batch}, "input_ids": {0: batch, 1: text_length},
              "attention_mask": {0: batch, 1: text_length}}  # fmt: skip
    return tuple(shapes[name] for name in input_names)


def export_onnx(
    model: BEiT3PreTrainedModel | str | Path,
    output_dir: str | Path,
    opset: int = 18,
    verify: bool = True,
    atol: float = 1e-4,
    optimize: bool = True,
) -> dict[str, Path]:
    """Exports `model` (or the converted directory it names) to `output_dir`; returns {file name: path}. With
    `verify`, each graph is run in onnxruntime on the example inputs and on a second batch and text length, and
    compared with PyTorch (ValueError beyond `atol`). `optimize`: onnxscript's graph optimisation (constant folding,
    fusions)."""
    if not isinstance(model, nn.Module):
        from transformers import AutoConfig

        from .tasks import TASKS

        config = AutoConfig.from_pretrained(model)
        architecture = (config.architectures or ["BEiT3Model"])[0]
        classes = {task.model_class.__name__: task.model_class for task in TASKS.values()}
        if architecture not in classes:
            raise ValueError(f"{model}: its config names {architecture!r}, which is no BEiT-3 model.")
        model = classes[architecture].from_pretrained(model)
    graphs = _graphs(model)  # raises for unsupported heads, before anything is written
    model = model.eval()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for file_name, module, inputs, input_names, output_name in graphs:
        path = output_dir / file_name
        module = module.eval()
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                inputs,
                dynamo=True,
                input_names=input_names,
                output_names=[output_name],
                dynamic_shapes=_dynamic_shapes(input_names),
                opset_version=opset,
                optimize=optimize,
                verbose=False,
            )
        program.save(str(path))
        written[file_name] = path
        logger.info(f"wrote {path} ({', '.join(input_names)} -> {output_name})")
        if verify:
            _verify(path, module, model.config, input_names, atol)
    if isinstance(model, BEiT3ForImageTextRetrieval):
        scale = math.exp(float(model.logit_scale.detach()))
        (output_dir / "retrieval.json").write_text(json.dumps({"logit_scale_exp": scale}, indent=2) + "\n")
    return written


def _verify(path: Path, module: nn.Module, config, input_names: list[str], atol: float) -> float:
    """Largest |onnxruntime - PyTorch| over two input shapes; ValueError beyond `atol`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch_size, text_length in ((2, 7), (3, 11)):
        example = dict(zip(("pixel_values", "input_ids", "attention_mask"), _example_inputs(config, batch_size, text_length)))
        inputs = [example[name] for name in input_names]
        with torch.no_grad():
            expected = module(*inputs).numpy()
        actual = session.run(None, {name: tensor.numpy() for name, tensor in zip(input_names, inputs)})[0]
        if actual.shape != expected.shape:
            raise ValueError(f"{path.name}: onnxruntime gave shape {actual.shape}, PyTorch {expected.shape}.")
        worst = max(worst, float(abs(actual - expected).max()))
    if worst > atol:
        raise ValueError(f"{path.name}: onnxruntime differs from PyTorch by {worst:.2e} (> atol {atol:.0e}).")
    logger.info(f"{path.name}: onnxruntime equals PyTorch within {worst:.2e}")
    return worst


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a converted BEiT-3 directory (beit3-convert / save_pretrained)")
    parser.add_argument("output_dir", help="where to write the .onnx graphs")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnxruntime - PyTorch|")
    args = parser.parse_args(argv)
    written = export_onnx(args.model_dir, args.output_dir, opset=args.opset, verify=not args.no_verify, atol=args.atol)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
