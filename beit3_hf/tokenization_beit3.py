"""BEiT-3 tokenizer: the released `beit3.spm` SentencePiece model as an XLM-RoBERTa fast tokenizer (`BEiT3Tokenizer`).

The original code builds its tokenizer with `XLMRobertaTokenizer("beit3.spm")`. In transformers 5 that call no
longer works, and its look-alikes fail silently: `XLMRobertaTokenizer(vocab_file="beit3.spm")` and
`from_pretrained` on a folder holding only `beit3.spm` both build a 5-token placeholder vocabulary that maps every
word to `<unk>`. This module converts the SentencePiece model once into a `tokenizer.json` +
`tokenizer_config.json` (`"tokenizer_class": "BEiT3Tokenizer"`) folder that `AutoTokenizer.from_pretrained(folder)`
loads offline with neither `sentencepiece` nor `protobuf` installed, and checks that the result is the real
vocabulary and, when `sentencepiece` is installed, that it gives SentencePiece's own ids.

The fast tokenizer follows SentencePiece step by step: its normalizer (character map, removal of extra spaces, dummy
prefix, `▁` for spaces), then the Unigram model over the whole text with no pre-tokenizer, so whitespace that the
model keeps (a tab under identity rules) stays a character and a user-defined symbol keeps the `▁` before it.
`BEiT3Tokenizer` (an `XLMRobertaTokenizer`) loads that pipeline as saved, whereas
`XLMRobertaTokenizer.from_pretrained` rebuilds XLM-R's own (character map, then a split at every whitespace
character); once `beit3_hf` is imported, `AutoTokenizer`, `AutoProcessor` and `load_beit3_tokenizer` all give
`BEiT3Tokenizer`. Known difference left: tokenizers' `Precompiled` normalizer rewrites some grapheme clusters unlike
SentencePiece (NBSP + a combining accent loses the accent, half-width "ﾃﾞ" is not composed).

The conversion reads the SentencePiece model file itself (a small protobuf message, decoded here without the
`protobuf` package) and lays the vocabulary out as fairseq / XLM-R does:

| token        | id               |
|--------------|------------------|
| `<s>`        | 0 (bos = cls)    |
| `<pad>`      | 1                |
| `</s>`       | 2 (eos = sep)    |
| `<unk>`      | 3                |
| spm piece k  | k + 1 (k >= 3)   |
| `<mask>`     | len(spm) + 1     |

For the released `beit3.spm` (64,000 pieces) that gives 64,002 ids with `<mask>` = 64,001; the model's embedding
has 64,010 rows, the last eight unused.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, normalizers
from transformers import XLMRobertaTokenizer
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "BEiT3Tokenizer",
    "DEFAULT_MODEL_MAX_LENGTH",
    "SentencePieceModel",
    "build_tokenizer_from_spm",
    "convert_spm_to_tokenizer",
    "load_beit3_tokenizer",
    "read_sentencepiece_model",
]

#: `num_max_bpe_tokens` of the original fine-tuning scripts (VQA, NLVR2 and retrieval).
DEFAULT_MODEL_MAX_LENGTH = 64

# The XLM-R special tokens and their fixed ids (fairseq dictionary order).
_XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_MASK_TOKEN = "<mask>"

# `SentencePiece.Type` and `TrainerSpec.ModelType` from sentencepiece_model.proto.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_MODEL_TYPE_NAMES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}

# Sentences whose ids are compared against `sentencepiece` itself after conversion (when it is installed);
# `_probe_sentences` adds whitespace, NFKC and user-defined-symbol cases to them.
_PROBE_SENTENCES = (
    "a fish on a bike",
    "Hello world!",
    "What color is the cat on the left?",
    "Two dogs are playing in the snow near 3 trees.",
    "The quick brown fox jumps over the lazy dog",
)
# Whitespace that identity rules keep as characters and NFKC rules map to a space (except U+0085, which they keep;
# XLM-R's whitespace split drops it), and runs of spaces.
_WHITESPACE_PROBES = (
    "\t", "\n", "\r", "\r\n", "\u00a0", "\u2003", "\u3000", "\u0085", "\u2028", "\u200b", "  ", "  \t ",
)  # fmt: skip
# Characters that NFKC rewrites (full width, ligatures, circled digits, superscripts, units, decomposed accents)
# and the literal "▁", which SentencePiece drops at the end of the text only.
_NFKC_PROBES = ("ｆｕｌｌ ｗｉｄｔｈ", "ﬁsh ﬂag", "①② x² ㎏ ½", "Å e\u0301 ß ™…", "ｶﾀｶﾅ", "▁a ▁ b▁")

# `FLT_MIN`, the floor of SentencePiece's best normal-piece score when scoring user-defined pieces.
_FLT_MIN = 1.17549435e-38


# --------------------------------------------------------------------------------------------------------------------
# Reading a SentencePiece model without `protobuf`
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class SentencePieceModel:
    """The parts of a SentencePiece `ModelProto` that a Unigram fast tokenizer needs.

    Attributes:
        pieces: `(piece, score, type)` for every piece, in id order (`type` uses the proto's numbering:
            1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte).
        model_type: 1 unigram, 2 BPE, 3 word, 4 char.
        precompiled_charsmap: the normalization rules compiled into a double-array trie (empty for "identity").
        normalizer_name: e.g. `"nmt_nfkc"` or `"identity"`.
        add_dummy_prefix: whether SentencePiece prepends a space (`▁`) to the text.
        remove_extra_whitespaces: whether it drops leading and trailing spaces and merges runs of spaces.
        escape_whitespaces: whether it writes spaces as `▁`.
        treat_whitespace_as_suffix: whether the `▁` goes after words instead of before (`TrainerSpec`).
    """

    pieces: list[tuple[str, float, int]] = field(default_factory=list)
    model_type: int = 1
    precompiled_charsmap: bytes = b""
    normalizer_name: str = ""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    treat_whitespace_as_suffix: bool = False


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


_unpack_float = struct.Struct("<f").unpack_from


def _iter_fields(data: bytes):
    """Yields `(field_number, wire_type, value)` for each field of a serialized protobuf message.

    Varints come back as `int`, fixed32/fixed64 as raw `bytes` and length-delimited fields as `bytes`.
    """
    pos, end = 0, len(data)
    while pos < end:
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length = data[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} (field {number})")
        if pos > end or number == 0:
            raise ValueError("truncated or corrupt message")
        yield number, wire_type, value


def _parse_piece(message: bytes) -> tuple[str, float, int]:
    """Decodes one `ModelProto.SentencePiece` (`piece` = 1, `score` = 2, `type` = 3)."""
    piece, score, piece_type = None, 0.0, _NORMAL
    pos, end = 0, len(message)
    # Fast path for the usual encoding (one-byte keys, short pieces); anything else goes through `_iter_fields`.
    while pos < end:
        key = message[pos]
        if key == 0x0A and pos + 1 < end and message[pos + 1] < 0x80:  # piece, length < 128
            length = message[pos + 1]
            piece = message[pos + 2 : pos + 2 + length].decode("utf-8")
            pos += 2 + length
        elif key == 0x15:  # score, fixed32
            score = _unpack_float(message, pos + 1)[0]
            pos += 5
        elif key == 0x18 and pos + 1 < end and message[pos + 1] < 0x80:  # type, one-byte varint
            piece_type = message[pos + 1]
            pos += 2
        else:
            piece, score, piece_type = None, 0.0, _NORMAL
            for number, wire_type, value in _iter_fields(message):
                if number == 1 and wire_type == 2:
                    piece = value.decode("utf-8")
                elif number == 2 and wire_type == 5:
                    score = _unpack_float(value)[0]
                elif number == 3 and wire_type == 0:
                    piece_type = value
            break
    if pos > end:
        raise ValueError("truncated piece")
    if piece is None:
        raise ValueError("a piece has no text")
    return piece, score, piece_type


def read_sentencepiece_model(spm_path: str | os.PathLike) -> SentencePieceModel:
    """Decodes a SentencePiece model file (`*.model`, `*.spm`, ...) with no dependency on `protobuf`.

    Only the fields needed to rebuild the tokenizer are read (see `sentencepiece_model.proto`: `ModelProto.pieces` = 1,
    `trainer_spec` = 2 with `model_type` = 3 and `treat_whitespace_as_suffix` = 24, `normalizer_spec` = 3 with
    `name` = 1, `precompiled_charsmap` = 2, `add_dummy_prefix` = 3, `remove_extra_whitespaces` = 4 and
    `escape_whitespaces` = 5); everything else is skipped.

    Raises:
        FileNotFoundError: `spm_path` does not exist.
        ValueError: the file is not a SentencePiece model.
    """
    path = Path(spm_path)
    if not path.is_file():
        raise FileNotFoundError(f"No SentencePiece model at {str(spm_path)!r}.")
    data = path.read_bytes()
    model = SentencePieceModel()
    try:
        for number, wire_type, value in _iter_fields(data):
            if number == 1 and wire_type == 2:  # repeated SentencePiece pieces
                model.pieces.append(_parse_piece(value))
            elif number == 2 and wire_type == 2:  # TrainerSpec
                for sub_number, sub_wire, sub_value in _iter_fields(value):
                    if sub_number == 3 and sub_wire == 0:
                        model.model_type = sub_value
                    elif sub_number == 24 and sub_wire == 0:
                        model.treat_whitespace_as_suffix = bool(sub_value)
            elif number == 3 and wire_type == 2:  # NormalizerSpec
                for sub_number, sub_wire, sub_value in _iter_fields(value):
                    if sub_number == 1 and sub_wire == 2:
                        model.normalizer_name = sub_value.decode("utf-8")
                    elif sub_number == 2 and sub_wire == 2:
                        model.precompiled_charsmap = bytes(sub_value)
                    elif sub_number == 3 and sub_wire == 0:
                        model.add_dummy_prefix = bool(sub_value)
                    elif sub_number == 4 and sub_wire == 0:
                        model.remove_extra_whitespaces = bool(sub_value)
                    elif sub_number == 5 and sub_wire == 0:
                        model.escape_whitespaces = bool(sub_value)
    except (ValueError, UnicodeDecodeError, struct.error) as error:
        raise ValueError(f"{str(spm_path)!r} is not a valid SentencePiece model: {error}") from error
    if not model.pieces:
        raise ValueError(f"{str(spm_path)!r} is not a SentencePiece model: it holds no pieces.")
    return model


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------


def _check_xlmr_layout(model: SentencePieceModel, spm_path) -> None:
    name = str(spm_path)
    if model.model_type != 1:
        kind = _MODEL_TYPE_NAMES.get(model.model_type, str(model.model_type))
        raise ValueError(
            f"{name!r} is a {kind} SentencePiece model; the XLM-R / BEiT-3 tokenizer needs a UNIGRAM model."
        )
    if len(model.pieces) < 4:
        raise ValueError(f"{name!r} has only {len(model.pieces)} pieces; that is not a usable vocabulary.")
    types = [piece_type for _, _, piece_type in model.pieces[:3]]
    if types != [_UNKNOWN, _CONTROL, _CONTROL]:
        found = [(piece, piece_type) for piece, _, piece_type in model.pieces[:3]]
        raise ValueError(
            f"{name!r} does not start with the pieces <unk>, <s>, </s> (ids 0, 1, 2) that the XLM-R layout "
            f"assumes; found (piece, type) = {found}. Train it with unk_id=0, bos_id=1, eos_id=2, pad_id=-1."
        )
    if any(piece_type == _BYTE for _, _, piece_type in model.pieces):
        logger.warning(
            f"{name} has byte-fallback pieces; the XLM-R fast tokenizer does not use byte fallback, so characters "
            "missing from the vocabulary become <unk> instead of bytes."
        )


def _check_expressible(model: SentencePieceModel, spm_path) -> None:
    """Refuses the SentencePiece settings that a tokenizers pipeline cannot reproduce id for id."""
    name = str(spm_path)
    if model.treat_whitespace_as_suffix:
        raise ValueError(f"{name!r} sets treat_whitespace_as_suffix=true, which the converter does not support.")
    if model.precompiled_charsmap and not model.remove_extra_whitespaces:
        raise ValueError(
            f"{name!r} sets remove_extra_whitespaces=false with the {model.normalizer_name!r} rules, which the "
            "converter does not support: tokenizers' Precompiled normalizer rewrites '\\r\\n' as one character, "
            "SentencePiece as two, and without the merging of spaces the ids differ."
        )
    unused = [piece for piece, _, piece_type in model.pieces if piece_type == _UNUSED]
    if unused:
        raise ValueError(
            f"{name!r} has unused pieces {unused[:5]}, which SentencePiece never emits and a Unigram fast "
            "tokenizer cannot exclude."
        )
    charsmap = normalizers.Precompiled(model.precompiled_charsmap) if model.precompiled_charsmap else None
    for piece, _, piece_type in model.pieces:
        if piece_type != _USER_DEFINED:
            continue
        # SentencePiece matches user-defined symbols in the raw text; the fast tokenizer finds them after
        # normalization, which is the same only for symbols that normalization leaves alone.
        if any(char.isspace() for char in piece) or (charsmap and charsmap.normalize_str(piece) != piece):
            raise ValueError(
                f"{name!r} has the user-defined symbol {piece!r}, which contains whitespace or is changed by the "
                f"{model.normalizer_name!r} rules; the converter supports only symbols that normalization leaves "
                "unchanged."
            )


def _sentencepiece_normalizer(model: SentencePieceModel) -> normalizers.Normalizer:
    """SentencePiece's `Normalizer::Normalize` for this model's `NormalizerSpec`, as a tokenizers normalizer.

    As in SentencePiece, only the space (after the character map) counts as whitespace, so a tab that the rules
    keep stays a tab, and "leading" and "trailing" mean at the ends of the text, not of its lines.
    """
    steps = [normalizers.Precompiled(model.precompiled_charsmap)] if model.precompiled_charsmap else []
    if model.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))  # `Prepend` leaves "" alone: no prefix on blank text
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if model.remove_extra_whitespaces:
        # The trailing spaces go last, after escaping, so a literal "▁" at the end goes too, as in SentencePiece.
        space = "\u2581" if model.escape_whitespaces else " "
        steps.append(normalizers.Replace(Regex(f"{space}+\\z"), ""))
    return normalizers.Sequence(steps)


def _unigram_vocab(model: SentencePieceModel) -> list[tuple[str, float]]:
    """The XLM-R layout of the vocabulary, with the scores SentencePiece's Viterbi search gives each piece.

    SentencePiece scores a user-defined piece `length * max(FLT_MIN, best normal score) - 0.1` (about -0.1), so it
    beats any split of the same text into normal pieces; the model file stores 0 for it.
    """
    best = max([_FLT_MIN] + [score for _, score, piece_type in model.pieces if piece_type == _NORMAL])
    vocab = [(token, 0.0) for token in _XLMR_SPECIALS]
    vocab += [
        (piece, len(piece.encode("utf-8")) * best - 0.1 if piece_type == _USER_DEFINED else score)
        for piece, score, piece_type in model.pieces[3:]
    ]
    vocab.append((_MASK_TOKEN, 0.0))
    return vocab


def _spm_ids_to_xlmr(ids: list[int]) -> list[int]:
    """Maps SentencePiece ids to XLM-R ids: unk 0 → 3, bos 1 → 0, eos 2 → 2, piece k → k + 1."""
    special = {0: 3, 1: 0, 2: 2}
    return [special.get(i, i + 1) for i in ids]


def _normal_ids(model: SentencePieceModel) -> list[int]:
    return [i for i, (_, _, piece_type) in enumerate(model.pieces) if i >= 3 and piece_type == _NORMAL]


def _probe_sentences(model: SentencePieceModel) -> list[str]:
    """The sentences `_verify` encodes with both tokenizers.

    Besides `_PROBE_SENTENCES`: NFKC-sensitive text, every kind of whitespace alone, inside and around words, each
    user-defined symbol alone, between spaces and glued to words, and a sentence of vocabulary pieces (so that
    non-English vocabularies get a real test).
    """
    probes = list(_PROBE_SENTENCES) + list(_NFKC_PROBES)
    for space in _WHITESPACE_PROBES:
        probes += [space, f"a{space}fish", f"{space}a fish on{space}"]
    for symbol in (piece for piece, _, piece_type in model.pieces if piece_type == _USER_DEFINED):
        probes += [symbol, f"a {symbol} fish", f"a{symbol}fish {symbol}", f" {symbol}  {symbol}{symbol} "]
        probes.append(f"\t{symbol}\n.")
    normal_ids = _normal_ids(model)
    words = [model.pieces[i][0].replace("\u2581", " ").strip() for i in normal_ids[:: max(1, len(normal_ids) // 8)]]
    probes.append(" ".join(word for word in words[:8] if word))
    return probes


def _verify(tokenizer, model: SentencePieceModel, spm_path) -> None:
    """Raises `ValueError` unless `tokenizer` holds the whole SentencePiece vocabulary in the XLM-R layout and, when
    `sentencepiece` is installed, encodes every probe sentence as SentencePiece does."""
    name = str(spm_path)
    expected_size = len(model.pieces) + 2
    if len(tokenizer) <= 5 or len(tokenizer) != expected_size:
        raise ValueError(
            f"The tokenizer converted from {name!r} has {len(tokenizer)} tokens instead of {expected_size} "
            "(len(spm) + 2); a 5-token vocabulary is transformers' silent placeholder."
        )
    expected_specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, _MASK_TOKEN: expected_size - 1}
    for token, token_id in expected_specials.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise ValueError(f"{token} should have id {token_id} in the tokenizer converted from {name!r}.")
    # A spread of ordinary pieces must sit at spm id + 1.
    normal_ids = _normal_ids(model)
    step = max(1, len(normal_ids) // 32)
    for spm_id in normal_ids[::step]:
        piece = model.pieces[spm_id][0]
        if tokenizer.convert_tokens_to_ids(piece) != spm_id + 1:
            raise ValueError(f"Piece {piece!r} (spm id {spm_id}) does not have id {spm_id + 1} after conversion.")

    try:
        import sentencepiece
    except ImportError:
        logger.info("sentencepiece is not installed: skipping the comparison of ids with SentencePiece itself.")
        return
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_path))
    for sentence in _probe_sentences(model):
        expected = [0] + _spm_ids_to_xlmr(processor.encode(sentence)) + [2]
        got = tokenizer(sentence)["input_ids"]
        if got != expected:
            raise ValueError(
                f"The tokenizer converted from {name!r} disagrees with SentencePiece on {sentence!r}: "
                f"{got} != {expected}."
            )


def _build(model: SentencePieceModel, spm_path, model_max_length: int) -> BEiT3Tokenizer:
    _check_xlmr_layout(model, spm_path)
    _check_expressible(model, spm_path)
    tokenizer = BEiT3Tokenizer(
        vocab=_unigram_vocab(model), add_prefix_space=model.add_dummy_prefix, model_max_length=model_max_length
    )
    # XLM-R's own pipeline splits the text at every whitespace character and adds `▁` to each word; SentencePiece
    # normalizes the text and runs the model over all of it.
    backend = tokenizer.backend_tokenizer
    backend.normalizer = _sentencepiece_normalizer(model)
    backend.pre_tokenizer = None
    # As transformers' own SentencePiece conversion does, control pieces become special added tokens (keeping
    # their vocabulary ids). User-defined pieces are not added tokens: those are cut out before normalization,
    # which would drop the `▁` SentencePiece puts before them.
    control = [AddedToken(piece, normalized=False, special=True) for piece, _, t in model.pieces[3:] if t == _CONTROL]
    if control:
        tokenizer.add_tokens(control)
    return tokenizer


def build_tokenizer_from_spm(
    spm_path: str | os.PathLike, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH, verify: bool = True
) -> BEiT3Tokenizer:
    """Builds the BEiT-3 (XLM-R layout) fast tokenizer from a SentencePiece model, in memory.

    Args:
        spm_path: a Unigram SentencePiece model with pieces `<unk>`, `<s>`, `</s>` at ids 0, 1, 2, under any file
            name (`beit3.spm`, `sentencepiece.bpe.model`, ...).
        model_max_length: the tokenizer's `model_max_length` (64 in the original fine-tuning scripts).
        verify: check the vocabulary size, the special ids, a spread of pieces and (if `sentencepiece` is installed)
            the ids of probe sentences (every kind of whitespace, NFKC-sensitive characters, each user-defined
            symbol) against SentencePiece itself.

    Raises:
        FileNotFoundError: `spm_path` does not exist.
        ValueError: the file is not a Unigram SentencePiece model with the XLM-R special pieces, uses a setting
            that the fast tokenizer cannot reproduce (`treat_whitespace_as_suffix`, `remove_extra_whitespaces=false`
            with normalization rules, unused pieces, user-defined symbols that normalization changes), or the
            result fails verification.
    """
    model = read_sentencepiece_model(spm_path)
    tokenizer = _build(model, spm_path, model_max_length)
    if verify:
        _verify(tokenizer, model, spm_path)
    return tokenizer


def convert_spm_to_tokenizer(
    spm_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> BEiT3Tokenizer:
    """Converts a SentencePiece model into a fast-tokenizer folder that loads offline without sentencepiece/protobuf.

    Writes `tokenizer.json` and `tokenizer_config.json` (`"tokenizer_class": "BEiT3Tokenizer"`) to `output_dir`,
    reloads them with `BEiT3Tokenizer.from_pretrained` (what `AutoTokenizer` resolves after `import beit3_hf`), and
    checks that the reloaded tokenizer has the full vocabulary in the XLM-R layout (`<s>`=0, `<pad>`=1, `</s>`=2,
    `<unk>`=3, spm id k → k + 1, `<mask>` = len(spm) + 1) and encodes like the in-memory one. Neither
    `sentencepiece` nor `protobuf` is needed; when `sentencepiece` is installed the ids of the probe sentences are
    also compared with SentencePiece's own.

    Example:

    ```python
    >>> from transformers import AutoTokenizer
    >>> convert_spm_to_tokenizer("beit3.spm", "beit3-tokenizer")  # doctest: +SKIP
    >>> AutoTokenizer.from_pretrained("beit3-tokenizer")("a fish on a bike").input_ids  # doctest: +SKIP
    [0, 10, 2343, 20, 10, 2753, 2]
    ```

    Args:
        spm_path: the SentencePiece model, under any file name.
        output_dir: folder to write (created if needed).
        model_max_length: saved as the tokenizer's `model_max_length`.

    Returns:
        The reloaded tokenizer.

    Raises:
        FileNotFoundError: `spm_path` does not exist.
        ValueError: the model is not usable as an XLM-R tokenizer, or the saved tokenizer fails verification
            (e.g. the silent 5-token placeholder vocabulary).
    """
    model = read_sentencepiece_model(spm_path)
    tokenizer = _build(model, spm_path, model_max_length)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)

    reloaded = load_beit3_tokenizer(output_dir)
    _verify(reloaded, model, spm_path)
    for sentence in _probe_sentences(model):
        if reloaded(sentence)["input_ids"] != tokenizer(sentence)["input_ids"]:
            raise ValueError(f"The tokenizer saved to {str(output_dir)!r} encodes {sentence!r} differently.")
    return reloaded


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


class BEiT3Tokenizer(XLMRobertaTokenizer):
    """The BEiT-3 tokenizer: an `XLMRobertaTokenizer` that keeps the pipeline saved in `tokenizer.json`.

    `XLMRobertaTokenizer.from_pretrained` keeps only the vocabulary of `tokenizer.json` and rebuilds XLM-R's own
    normalizer and pre-tokenizer, which split the text at every whitespace character; SentencePiece does not (tabs,
    newlines, U+0085, user-defined symbols). `BEiT3Tokenizer.from_pretrained` loads `tokenizer.json` whole (model,
    normalizer, pre-tokenizer, decoder, added tokens), so a folder written by `convert_spm_to_tokenizer` encodes as
    SentencePiece does. That folder names this class (`"tokenizer_class": "BEiT3Tokenizer"`), which
    `import beit3_hf` registers with `AutoTokenizer`, so `AutoTokenizer.from_pretrained(folder)` and
    `AutoProcessor.from_pretrained(folder)` load it too. A folder saved with `"tokenizer_class":
    "XLMRobertaTokenizer"` still loads as `XLMRobertaTokenizer` through `AutoTokenizer`; `load_beit3_tokenizer` or
    `BEiT3Tokenizer.from_pretrained` loads it with its saved pipeline.

    A folder with `sentencepiece.bpe.model` and no `tokenizer.json` is converted with `build_tokenizer_from_spm`
    (neither `sentencepiece` nor `protobuf` needed; `model_max_length` 64 unless given). Built from a vocabulary
    (`BEiT3Tokenizer(vocab=...)`), it is exactly XLM-R's tokenizer.
    """

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        """Hands `from_pretrained`'s files to `__init__`: `tokenizer.json` as it is (`TokenizersBackend.__init__`
        loads it whole), or a SentencePiece model converted by `build_tokenizer_from_spm`."""
        tokenizer_file = kwargs.get("tokenizer_file")
        if tokenizer_file is not None and os.path.isfile(tokenizer_file):
            return kwargs
        vocab_file = kwargs.get("vocab_file")
        no_backend = kwargs.get("tokenizer_object") is None and kwargs.get("vocab") is None
        if no_backend and isinstance(vocab_file, (str, os.PathLike)) and os.path.isfile(vocab_file):
            # transformers' own conversion looks its converter up by class name and would miss XLM-R's id layout
            kwargs["tokenizer_object"] = build_tokenizer_from_spm(vocab_file).backend_tokenizer
            kwargs.setdefault("model_max_length", DEFAULT_MODEL_MAX_LENGTH)
            return kwargs
        return super().convert_to_native_format(trust_remote_code=trust_remote_code, **kwargs)


def _find_spm_file(directory: Path) -> Path | None:
    for name in ("sentencepiece.bpe.model", "beit3.spm", "spm.model", "tokenizer.model"):
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(directory.glob("*.spm")) + sorted(directory.glob("*.model"))
    return candidates[0] if candidates else None


def load_beit3_tokenizer(path: str | os.PathLike, **kwargs) -> BEiT3Tokenizer:
    """Loads the BEiT-3 tokenizer from whatever form it comes in.

    - a folder with `tokenizer.json` (e.g. written by `convert_spm_to_tokenizer`): `BEiT3Tokenizer.from_pretrained`,
      which keeps the normalizer and pre-tokenizer saved in `tokenizer.json`, whatever `tokenizer_class` the folder
      names (`XLMRobertaTokenizer.from_pretrained` would replace them with XLM-R's own);
    - a folder with only a SentencePiece model (`sentencepiece.bpe.model`, `beit3.spm`, `*.spm`, `*.model`):
      converted in memory;
    - a SentencePiece model file: converted in memory.

    `kwargs` go to `from_pretrained` (first case) or set `model_max_length` (other cases). The result is checked
    not to be the 5-token placeholder vocabulary.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            tokenizer = BEiT3Tokenizer.from_pretrained(path, **kwargs)
        else:
            spm_file = _find_spm_file(path)
            if spm_file is None:
                raise ValueError(f"{str(path)!r} holds neither a tokenizer.json nor a SentencePiece model.")
            tokenizer = build_tokenizer_from_spm(spm_file, **kwargs)
    elif path.is_file():
        tokenizer = build_tokenizer_from_spm(path, **kwargs)
    else:
        raise FileNotFoundError(f"No tokenizer at {str(path)!r}.")
    if len(tokenizer) <= 5:
        raise ValueError(f"The tokenizer loaded from {str(path)!r} has only {len(tokenizer)} tokens (placeholder).")
    return tokenizer
