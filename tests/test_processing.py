"""Tests of `BEiT3Processor` and the Auto-class registration (`register_processors`)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, XLMRobertaTokenizer

from beit3_hf.configuration_beit3 import BEiT3Config
from beit3_hf.image_processing_beit3 import BEiT3ImageProcessor, BEiT3ImageProcessorTorchvision
from beit3_hf.processing_beit3 import BEiT3Processor, register_processors
from beit3_hf.tokenization_beit3 import BEiT3Tokenizer, convert_spm_to_tokenizer

spm = pytest.importorskip("sentencepiece")
S = 32
CORPUS = [
    "a fish on a bike",
    "what color is the cat on the left?",
    "two dogs play in the snow",
    "the left image has more circles than the right image",
    "a large blue triangle at the top left",
] * 25


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("processor_tokenizer")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=100, hard_vocab_limit=False,
        model_type="unigram", normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2,
    )  # fmt: skip
    (directory / "beit3.spm").write_bytes(buffer.getvalue())
    convert_spm_to_tokenizer(directory / "beit3.spm", directory / "tokenizer")
    return directory / "tokenizer"


@pytest.fixture(scope="module")
def processor(tokenizer_dir):
    register_processors()
    return BEiT3Processor(BEiT3ImageProcessor.from_preset("vl", size=S), AutoTokenizer.from_pretrained(tokenizer_dir))


def image(seed=0, height=20, width=30):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_image_text_outputs(processor):
    inputs = processor(images=[image(0), image(1)], text=["a fish on a bike", "two dogs"], return_tensors="pt")
    assert set(inputs) == {"pixel_values", "input_ids", "attention_mask"}
    assert inputs["pixel_values"].shape == (2, 3, S, S) and inputs["pixel_values"].dtype == torch.float32
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (2, 64)  # padded to 64 by default
    ids, mask = inputs["input_ids"][1], inputs["attention_mask"][1]
    length = int(mask.sum())
    assert ids[0] == 0 and ids[length - 1] == 2 and (ids[length:] == 1).all()  # <s> ... </s> <pad> ...
    assert (mask[:length] == 1).all() and (mask[length:] == 0).all()  # 1 = real token
    expected = processor.tokenizer("two dogs")["input_ids"]
    assert ids[:length].tolist() == expected


def test_matches_the_sub_processors(processor):
    inputs = processor(images=image(3), text="what color is the cat?", return_tensors="pt")
    assert torch.equal(inputs["pixel_values"], processor.image_processor(image(3), return_tensors="pt").pixel_values)
    direct = processor.tokenizer("what color is the cat?", padding="max_length", max_length=64, truncation=True)
    assert inputs["input_ids"][0].tolist() == direct["input_ids"]


def test_padding_and_truncation_options(processor):
    longest = processor(text=["a fish", "a fish on a bike"], padding="longest", return_tensors="pt")
    assert longest["input_ids"].shape[1] == len(processor.tokenizer("a fish on a bike")["input_ids"])
    short = processor(text="a fish on a bike", max_length=8, return_tensors="pt")
    assert short["input_ids"].shape == (1, 8) and short["input_ids"][0, -1] == 2
    very_long = " ".join(["the left image has more circles than the right image"] * 100)
    truncated = processor(text=very_long, return_tensors="pt")
    assert truncated["input_ids"].shape == (1, 64)
    assert truncated["input_ids"][0, 0] == 0 and truncated["input_ids"][0, -1] == 2
    assert truncated["attention_mask"].all()
    grouped = processor(text="a fish", text_kwargs={"max_length": 10}, return_tensors="pt")
    assert grouped["input_ids"].shape == (1, 10)


def test_empty_string_is_bos_eos(processor):
    inputs = processor(text=["", "a fish"], return_tensors="pt")
    assert inputs["input_ids"][0, :3].tolist() == [0, 2, 1]
    assert inputs["attention_mask"][0].sum() == 2


def test_nlvr2_pairs(processor):
    pairs = [[image(0), image(1, 40, 10)], [Image.fromarray(image(2)), image(3)]]
    inputs = processor(images=pairs, text=["left has more", "right has more"], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 2, 3, S, S)
    assert inputs["input_ids"].shape == (2, 64)


def test_single_modalities(processor):
    assert set(processor(images=image(), return_tensors="pt")) == {"pixel_values"}
    assert set(processor(text="a fish", return_tensors="pt")) == {"input_ids", "attention_mask"}
    plain = processor(text="a fish")
    assert isinstance(plain["input_ids"], list)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "images=None and text=None"),
        ({"images": None, "text": None}, "images=None and text=None"),
        ({"text": 42}, "int 42"),
        ({"text": ["ok", None]}, "NoneType None"),
        ({"text": []}, "empty list"),
        ({"images": [image(0), image(1)], "text": ["only one"]}, "2 image examples but 1 texts"),
        ({"images": [], "text": "x"}, "empty list"),
        ({"images": np.zeros((6, 6, 2), np.uint8), "text": "x"}, r"\(6, 6, 2\)"),
    ],
)
def test_bad_input_raises(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_decode(processor):
    ids = processor(text=["a fish on a bike", "two dogs play in the snow"], return_tensors="pt")["input_ids"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a fish on a bike", "two dogs play in the snow"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "a fish on a bike"


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "BEiT3Processor"
    assert saved["image_processor"]["image_processor_type"] == "BEiT3ImageProcessor"
    inputs = dict(images=[[image(0), image(1)]], text=["a fish on a bike"], return_tensors="pt")
    expected = processor(**inputs)
    for reloaded in (BEiT3Processor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(reloaded, BEiT3Processor)
        assert isinstance(reloaded.tokenizer, XLMRobertaTokenizer)
        assert type(reloaded.tokenizer) is BEiT3Tokenizer
        assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
        got = reloaded(**inputs)
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), key


def test_imagenet_preset_round_trip(tokenizer_dir, tmp_path):
    processor = BEiT3Processor(
        BEiT3ImageProcessor.from_preset("imagenet", size=S), AutoTokenizer.from_pretrained(tokenizer_dir)
    )
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert dict(reloaded.image_processor.size) == {"shortest_edge": S}
    assert reloaded.image_processor.do_center_crop
    assert torch.equal(
        reloaded(images=image(5, 50, 70), return_tensors="pt")["pixel_values"],
        processor(images=image(5, 50, 70), return_tensors="pt")["pixel_values"],
    )


def test_registration_is_idempotent_and_resolves(processor, tmp_path):
    register_processors()
    register_processors()
    processor.image_processor.save_pretrained(tmp_path / "image_processor")
    loaded = AutoImageProcessor.from_pretrained(tmp_path / "image_processor", backend="pil")
    assert type(loaded) is BEiT3ImageProcessor
    # A folder with a BEiT-3 config.json resolves the tokenizer class through the registration too.
    BEiT3Config().save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "model"), BEiT3Processor)
    assert isinstance(AutoTokenizer.from_pretrained(tmp_path / "model"), XLMRobertaTokenizer)
    assert type(AutoTokenizer.from_pretrained(tmp_path / "model")) is BEiT3Tokenizer
    # ... by its name in tokenizer_config.json, or by the model type when the config names no class
    config_path = tmp_path / "model" / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    assert tokenizer_config.pop("tokenizer_class") == "BEiT3Tokenizer"
    config_path.write_text(json.dumps(tokenizer_config))
    assert type(AutoTokenizer.from_pretrained(tmp_path / "model")) is BEiT3Tokenizer


@pytest.mark.skipif(BEiT3ImageProcessorTorchvision is None, reason="torchvision is not installed (optional backend)")
def test_torchvision_backend_registration(processor, tmp_path):
    register_processors()
    processor.save_pretrained(tmp_path)
    # The PIL class stays the default (bit-exact); the tensor class is one keyword away.
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is BEiT3ImageProcessor
    tensor_processor = AutoImageProcessor.from_pretrained(tmp_path, backend="torchvision")
    assert type(tensor_processor) is BEiT3ImageProcessorTorchvision
    assert type(AutoProcessor.from_pretrained(tmp_path, backend="torchvision").image_processor) is (
        BEiT3ImageProcessorTorchvision
    )
    assert tensor_processor(image(), return_tensors="pt").pixel_values.shape == (1, 3, S, S)


# Text that XLM-R's own pipeline (a split at every whitespace character) encodes unlike SentencePiece.
WHITESPACE_TEXTS = ["a\tfish on\na bike", "two\u0085dogs", " what  color\t"]


@pytest.mark.parametrize("saved_class", ["BEiT3Tokenizer", "XLMRobertaTokenizer"])
def test_reloaded_processor_keeps_the_sentencepiece_pipeline(processor, tokenizer_dir, tmp_path, saved_class):
    sentencepiece = spm.SentencePieceProcessor(model_file=str(tokenizer_dir.parent / "beit3.spm"))
    expected = [[0] + [3 if i == 0 else i + 1 for i in sentencepiece.encode(text)] + [2] for text in WHITESPACE_TEXTS]
    processor.save_pretrained(tmp_path)
    config_path = tmp_path / "tokenizer_config.json"
    # "XLMRobertaTokenizer": a processor saved before BEiT3Tokenizer existed
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "tokenizer_class": saved_class}))
    for reloaded in (BEiT3Processor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(reloaded.tokenizer) is BEiT3Tokenizer
        assert reloaded(text=WHITESPACE_TEXTS, padding="longest")["input_ids"] == [
            ids + [1] * (max(map(len, expected)) - len(ids)) for ids in expected
        ]
    assert processor.tokenizer(WHITESPACE_TEXTS)["input_ids"] == expected
    assert XLMRobertaTokenizer.from_pretrained(tmp_path)(WHITESPACE_TEXTS)["input_ids"] != expected
