"""ONNX export (`beit3_hf.onnx_export`): onnxruntime equals PyTorch within 1e-4 at batch sizes and text lengths
other than the export's, padding included; unsupported heads raise before anything is written."""

import json
import math

import numpy as np
import pytest
import torch

import beit3_hf
from beit3_hf.onnx_export import export_onnx, main

from conftest import make_inputs, tiny_config

onnxruntime = pytest.importorskip("onnxruntime", reason="pip install beit3-hf[onnx] (onnx, onnxscript, onnxruntime)")
pytest.importorskip("onnxscript", reason="pip install beit3-hf[onnx] (torch's ONNX exporter needs onnxscript)")

ATOL = 1e-4


def run(path, **inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: inputs[name].numpy() for name in names})[0])


def test_retrieval_towers_and_vqa_match_pytorch(tmp_path):
    torch.manual_seed(0)
    retrieval = beit3_hf.BEiT3ForImageTextRetrieval(tiny_config(num_hidden_layers=1)).eval()
    retrieval.save_pretrained(tmp_path / "retrieval")
    main([str(tmp_path / "retrieval"), str(tmp_path / "retrieval_onnx")])  # the CLI, from a converted directory
    # a batch size and a text length the export did not see, the last row padded
    pixel_values, input_ids, attention_mask = make_inputs(batch_size=3, text_length=9, pad_from=5)
    image_embeds = run(tmp_path / "retrieval_onnx" / "image_encoder.onnx", pixel_values=pixel_values)
    text_embeds = run(tmp_path / "retrieval_onnx" / "text_encoder.onnx", input_ids=input_ids,
                      attention_mask=attention_mask)  # fmt: skip
    scale = json.loads((tmp_path / "retrieval_onnx" / "retrieval.json").read_text())["logit_scale_exp"]
    with torch.no_grad():
        expected = retrieval(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(image_embeds, expected.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(text_embeds, expected.text_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(scale * image_embeds @ text_embeds.T, expected.logits_per_image, atol=10 * ATOL, rtol=0)
    assert math.isclose(scale, retrieval.logit_scale.exp().item(), rel_tol=1e-6)
    # padding is read: changing a padded token leaves the embedding alone, an unpadded one does not
    changed = input_ids.clone()
    changed[-1, -1] = 7
    again = run(tmp_path / "retrieval_onnx" / "text_encoder.onnx", input_ids=changed, attention_mask=attention_mask)
    torch.testing.assert_close(again, text_embeds, atol=ATOL, rtol=0)

    vqa = beit3_hf.BEiT3ForVisualQuestionAnswering(tiny_config(num_hidden_layers=1)).eval()
    export_onnx(vqa, tmp_path / "vqa_onnx", verify=False)
    logits = run(tmp_path / "vqa_onnx" / "model.onnx", pixel_values=pixel_values, input_ids=input_ids,
                 attention_mask=attention_mask)  # fmt: skip
    with torch.no_grad():
        expected = vqa(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_image_classifier_matches_pytorch(tmp_path):
    torch.manual_seed(1)
    model = beit3_hf.BEiT3ForImageClassification(tiny_config(num_hidden_layers=1, use_final_layer_norm=False)).eval()
    export_onnx(model, tmp_path, verify=True)  # verify: its own two-shape onnxruntime check
    pixel_values = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(pixel_values).logits
    actual = run(tmp_path / "model.onnx", pixel_values=pixel_values)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    assert np.argmax(actual.numpy(), -1).tolist() == expected.argmax(-1).tolist()


@pytest.mark.parametrize(
    "model_class, message",
    [
        (beit3_hf.BEiT3ForCaptioning, r"got BEiT3ForCaptioning \(captioning is autoregressive generation"),
        (beit3_hf.BEiT3ForVisualReasoning, r"supports BEiT3ForImageTextRetrieval, .*; got BEiT3ForVisualReasoning"),
        (beit3_hf.BEiT3Model, r"got BEiT3Model \(no graph is defined for it\)"),
    ],
)
def test_unsupported_heads_raise_before_writing(tmp_path, model_class, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(model_class(tiny_config(num_hidden_layers=1)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
