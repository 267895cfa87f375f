"""`pipeline(task, model=local_dir)` for every BEiT-3 task, offline, on a real photo (scikit-image's cat).

Each model directory holds a tiny random model and the BEiT-3 processor (a SentencePiece tokenizer trained here,
in the BEiT-3 id layout); every pipeline result is compared with the same computation done by hand.
"""

import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import beit3_hf
from beit3_hf.generation import captioning_generation_config
from beit3_hf.image_processing_beit3 import BEiT3ImageProcessor
from beit3_hf.pipelines import BEiT3VisualQuestionAnsweringPipeline, VQA_TASK, register_pipelines
from beit3_hf.processing_beit3 import BEiT3Processor, register_processors
from beit3_hf.tokenization_beit3 import load_beit3_tokenizer
from conftest import tiny_config

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the test photo")
pytest.importorskip("sentencepiece", reason="the test tokenizer is trained with sentencepiece")

# what `import beit3_hf` alone registered (the fixtures below register again, explicitly, before the pipelines run)
VQA_REGISTERED_BY_IMPORT = PIPELINE_REGISTRY.supported_tasks.get(VQA_TASK, {}).get("impl")

LABELS = ["cat", "dog", "car"]
ANSWERS = ["yes", "no", "2", "cat", "sleeping"]
SENTENCES = [
    "a photo of a cat lying on a sofa",
    "a dog runs on the grass",
    "a red car parked near two trees",
    "what is the cat doing?",
    "how many animals are there?",
    "is there a dog in the image?",
    "This is a photo of a cat.",
    "This is a photo of a dog.",
    "This is a photo of a car.",
]


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(skimage_data.chelsea())


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from beit3_hf.data.shapes import train_shapes_tokenizer

    register_processors()
    register_pipelines()
    tokenizer_dir = train_shapes_tokenizer(SENTENCES, tmp_path_factory.mktemp("spm"), vocab_size=120)
    tokenizer = load_beit3_tokenizer(tokenizer_dir)
    return BEiT3Processor(image_processor=BEiT3ImageProcessor.from_preset("vl", size=32), tokenizer=tokenizer)


def save_model(directory, model_class, processor, **config_overrides):
    tokenizer = processor.tokenizer
    # the processor pads text to 64 tokens, as the original datasets do
    config = tiny_config(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id, max_text_positions=64,
                         **config_overrides)
    config.architectures = [model_class.__name__]
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model


def test_image_classification(tmp_path, photo, processor):
    image_processor = BEiT3ImageProcessor.from_preset("imagenet", size=32)
    id2label = dict(enumerate(LABELS))
    config = tiny_config(num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                         use_final_layer_norm=False)
    torch.manual_seed(0)
    model = beit3_hf.BEiT3ForImageClassification(config).eval()
    with torch.no_grad():  # the default head init is scaled by 1e-3; make the logits differ visibly
        model.classifier.weight.normal_(std=0.5)
    model.save_pretrained(tmp_path)
    image_processor.save_pretrained(tmp_path)

    classify = pipeline("image-classification", model=str(tmp_path))
    result = classify(photo)

    with torch.no_grad():
        probabilities = model(**image_processor(photo, return_tensors="pt")).logits.softmax(-1)[0]
    expected = sorted(zip(probabilities.tolist(), LABELS), reverse=True)
    assert [r["label"] for r in result] == [label for _, label in expected]
    assert [r["score"] for r in result] == pytest.approx([score for score, _ in expected], abs=1e-5)


def test_zero_shot_image_classification(tmp_path, photo, processor):
    model = save_model(tmp_path, beit3_hf.BEiT3ForImageTextRetrieval, processor)
    classify = pipeline("zero-shot-image-classification", model=str(tmp_path))
    result = classify(photo, candidate_labels=LABELS, hypothesis_template="a photo of a {}")

    texts = processor.tokenizer([f"a photo of a {label}" for label in LABELS], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values=processor(images=photo, return_tensors="pt").pixel_values, **texts)
    probabilities = logits.logits_per_image.softmax(-1)[0]
    expected = dict(zip(LABELS, probabilities.tolist()))
    assert sorted(r["label"] for r in result) == sorted(LABELS)
    assert {r["label"]: r["score"] for r in result} == pytest.approx(expected, abs=1e-5)
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)


def test_image_feature_extraction(tmp_path, photo, processor):
    model = save_model(tmp_path, beit3_hf.BEiT3Model, processor)
    extract = pipeline("image-feature-extraction", model=str(tmp_path))
    features = extract(photo, return_tensors=True)

    with torch.no_grad():
        expected = model(pixel_values=processor(images=photo, return_tensors="pt").pixel_values).last_hidden_state
    assert features.shape == (1, model.config.num_patches + 1, model.config.hidden_size)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompt", ["", "a photo of"])
def test_image_text_to_text_captioning(tmp_path, photo, processor, prompt):
    model = save_model(tmp_path, beit3_hf.BEiT3ForCaptioning, processor)
    model.generation_config = captioning_generation_config(num_max_bpe_tokens=12)
    model.generation_config.save_pretrained(tmp_path)
    caption = pipeline("image-text-to-text", model=str(tmp_path))
    result = caption(images=photo, text=prompt, max_new_tokens=6)

    prompt_ids = processor.tokenizer(prompt, return_tensors="pt").input_ids[:, :-1]  # <s> prompt, no </s>
    with torch.no_grad():
        sequences = model.generate(pixel_values=processor(images=photo, return_tensors="pt").pixel_values,
                                   input_ids=prompt_ids, max_new_tokens=6)
    assert sequences.shape[1] > prompt_ids.shape[1]  # something was generated (3 beams, as in the release)
    new_text = processor.tokenizer.decode(sequences[0, prompt_ids.shape[1]:], skip_special_tokens=True)
    assert len(result) == 1 and result[0]["input_text"] == prompt
    assert result[0]["generated_text"].startswith(prompt)
    assert result[0]["generated_text"][len(prompt):].strip() == new_text.strip()
    # a batch (the processor pads the prompts; generate continues each after its last word)
    batch = caption(images=[photo, photo.rotate(90)], text=[prompt, prompt], max_new_tokens=6)
    assert len(batch) == 2 and batch[0] == result[0]


def test_visual_question_answering(tmp_path, photo, processor):
    id2label = dict(enumerate(ANSWERS))
    model = save_model(tmp_path, beit3_hf.BEiT3ForVisualQuestionAnswering, processor, num_labels=len(ANSWERS),
                       id2label=id2label, label2id={v: k for k, v in id2label.items()}, use_final_layer_norm=False)
    answer = pipeline(VQA_TASK, model=str(tmp_path))
    assert isinstance(answer, BEiT3VisualQuestionAnsweringPipeline)
    question = "what is the cat doing?"
    result = answer(photo, question=question, top_k=3)

    with torch.no_grad():
        logits = model(**processor(images=photo, text=question, return_tensors="pt")).logits[0]
    scores, indices = logits.sigmoid().topk(3)
    assert [r["answer"] for r in result] == [ANSWERS[i] for i in indices.tolist()]
    assert [r["score"] for r in result] == pytest.approx(scores.tolist(), abs=1e-5)

    # dict input, default top_k (clipped to the vocabulary), and a batch of questions about one image
    assert answer({"image": photo, "question": question}, top_k=2) == result[:2]
    assert len(answer(photo, question=question)) == len(ANSWERS)
    batch = answer(photo, question=[question, "how many animals are there?"], top_k=1)
    assert len(batch) == 2 and batch[0] == result[:1]
    with pytest.raises(ValueError, match="top_k"):
        answer(photo, question=question, top_k=0)
    with pytest.raises(ValueError, match="2 images and 3 questions"):
        answer([photo, photo], question=[question] * 3)


def test_import_registers_the_vqa_pipeline():
    assert VQA_REGISTERED_BY_IMPORT is BEiT3VisualQuestionAnsweringPipeline, "`import beit3_hf` must register it"


def test_register_pipelines_is_idempotent(monkeypatch):
    register_pipelines()
    calls = []
    monkeypatch.setattr(PIPELINE_REGISTRY, "register_pipeline", lambda *args, **kwargs: calls.append(args))
    register_pipelines()  # transformers would warn "already registered, overwriting"
    assert calls == []
    assert PIPELINE_REGISTRY.supported_tasks[VQA_TASK]["impl"] is BEiT3VisualQuestionAnsweringPipeline
