"""Convert an original BEiT-3 checkpoint (unilm / torchscale `.pth`) into a Hugging Face model directory.

    python -m beit3_hf.convert beit3_base_patch16_480_vqa.pth ./beit3-base-vqa [--spm beit3.spm]
    beit3-convert ORIGINAL.pth OUTPUT_DIR [--task vqa] [--num-attention-heads 12] [--push-to-hub user/repo]
    beit3-convert vqkd_encoder_base_decoder_3x768x12_clip.pth OUTPUT_DIR --task visual_tokenizer

Everything is inferred from the tensors: depth, width, FFN size, patch and image size, vocabulary, labels, whether
the final LayerNorm exists, and which head the checkpoint holds. Every key must find a place and every parameter
must be filled, or the conversion stops with one message listing what is wrong. The BEiT v2 visual tokenizers
(VQ-KD) convert the same way into `BEiT3VisualTokenizer`, with their [0, 1]-pixel image processor.
"""

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from transformers.utils import logging

from .configuration_beit3 import BEiT3Config
from .configuration_visual_tokenizer import (
    TEACHER_NORMALIZATION,
    BEiT3VisualTokenizerConfig,
    visual_tokenizer_processor_kwargs,
)
from .foreign_layouts import FAIRSEQ_POSITION_OFFSET, to_unilm_layout
from .image_processing_beit3 import BEiT3ImageProcessor
from .model_cards import render_card
from .modeling_beit3 import BEiT3Model
from .modeling_visual_tokenizer import BEiT3VisualTokenizer
from .processing_beit3 import BEiT3Processor
from .processor_presets import processor_config_for
from .tasks import RELEASED_CHECKPOINTS, RELEASED_VISUAL_TOKENIZERS, TASKS, Signature, get_task, layouts
from .tokenization_beit3 import convert_spm_to_tokenizer

logger = logging.get_logger(__name__)


EXPERTS = {"A": "image", "B": "text"}

# The backbone's keys, shared by every task; each task's head keys are `TASKS[task].head_key_mapping`.
# fmt: off
BACKBONE_KEY_MAPPING = {
    r"^beit3\.text_embed\.weight$":                           r"beit3.embeddings.token_embedding.weight",
    r"^beit3\.vision_embed\.proj\.(weight|bias)$":            r"beit3.embeddings.patch_embedding.\1",
    r"^beit3\.vision_embed\.(cls_token|mask_token)$":         r"beit3.embeddings.\1",
    r"^beit3\.encoder\.embed_positions\.A\.weight$":          r"beit3.embeddings.image_position_embedding.weight",
    r"^beit3\.encoder\.embed_positions\.B\.weight$":          r"beit3.embeddings.text_position_embedding.weight",
    r"^beit3\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.(A|B)\.(weight|bias)$":
        r"beit3.encoder.layers.\1.layer_norm1.\2.\3",
    r"^beit3\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(A|B)\.(weight|bias)$":
        r"beit3.encoder.layers.\1.self_attn.\2_proj.\3.\4",
    r"^beit3\.encoder\.layers\.(\d+)\.self_attn\.inner_attn_ln\.(A|B)\.(weight|bias)$":
        r"beit3.encoder.layers.\1.self_attn.sub_layer_norm.\2.\3",
    r"^beit3\.encoder\.layers\.(\d+)\.final_layer_norm\.(A|B)\.(weight|bias)$":
        r"beit3.encoder.layers.\1.layer_norm2.\2.\3",
    r"^beit3\.encoder\.layers\.(\d+)\.ffn\.(A|B)\.(fc1|fc2)\.(weight|bias)$":
        r"beit3.encoder.layers.\1.mlp.\2.\3.\4",
    r"^beit3\.encoder\.layers\.(\d+)\.ffn\.(A|B)\.ffn_layernorm\.(weight|bias)$":
        r"beit3.encoder.layers.\1.mlp.\2.sub_layer_norm.\3",
    r"^beit3\.encoder\.layer_norm\.(A|B)\.(weight|bias)$":    r"beit3.final_layer_norm.\1.\2",
}
# fmt: on

#: `--task` of the BEiT v2 visual tokenizer files, which hold no BEiT-3 model (they are no `TASKS` entry).
VISUAL_TOKENIZER_TASK = "visual_tokenizer"

# The tokenizer's keys: BEiT v2 ViTs under `encoder.` and `decoder.` (their fused `attn.qkv.weight` is split into
# q/k/v in `convert_visual_tokenizer_state_dict`), the task layers and the quantizer.
# fmt: off
VISUAL_TOKENIZER_KEY_MAPPING = {
    r"^(encoder|decoder)\.patch_embed\.proj\.(weight|bias)$":             r"\1.patch_embedding.\2",
    r"^(encoder|decoder)\.cls_token$":                                    r"\1.cls_token",
    r"^(encoder|decoder)\.pos_embed$":                                    r"\1.position_embedding",
    r"^(encoder|decoder)\.blocks\.(\d+)\.norm(1|2)\.(weight|bias)$":       r"\1.layers.\2.layer_norm\3.\4",
    r"^(encoder|decoder)\.blocks\.(\d+)\.attn\.(q|v)_bias$":               r"\1.layers.\2.attention.\3_proj.bias",
    r"^(encoder|decoder)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)$":      r"\1.layers.\2.attention.out_proj.\3",
    r"^(encoder|decoder)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$":  r"\1.layers.\2.mlp.\3.\4",
    r"^(encoder|decoder)\.fc_norm\.(weight|bias)$":                       r"\1.layer_norm.\2",
    r"^encode_task_layer\.0\.(weight|bias)$":                             r"encoder_task_layer.fc1.\1",
    r"^encode_task_layer\.2\.(weight|bias)$":                             r"encoder_task_layer.fc2.\1",
    r"^decode_task_layer\.0\.(weight|bias)$":                             r"decoder_task_layer.fc1.\1",
    r"^decode_task_layer\.2\.(weight|bias)$":                             r"decoder_task_layer.fc2.\1",
    r"^quantize\.embedding\.weight$":                                     r"quantizer.codebook",
    r"^quantize\.embedding\.initted$":                                    r"quantizer.initialized",
    r"^quantize\.cluster_size$":                                          r"quantizer.cluster_size",
}
# fmt: on
VISUAL_TOKENIZER_QKV = r"^(encoder|decoder)\.blocks\.(\d+)\.attn\.qkv\.weight$"
#: The frozen teacher, its input scaling and the loss module serve training only; the release's loader drops them too.
VISUAL_TOKENIZER_DROPPED_PREFIXES = ("teacher", "scaling", "loss")
#: `EmbeddingEMA`'s own averages, which the release never reads (its `weight_update` is dead code).
VISUAL_TOKENIZER_UNUSED_KEYS = ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg")


def _read_weights(path: Path) -> dict:
    """A `.pth`/`.bin` (read with `weights_only=True`), a `.safetensors` file, or a model directory holding either
    (sharded ones through their index), as the transformers PR's and timm's Hub repositories are."""
    if path.is_dir():
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"):  # fmt: skip
            if (path / name).is_file():
                return _read_weights(path / name)
        raise ValueError(f"{path} is a directory without model.safetensors or pytorch_model.bin (or their index).")
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        return {key: value for shard in shards for key, value in _read_weights(path.parent / shard).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a checkpoint safely (see `_read_weights`); weights may sit under "model", "module", "state_dict" or at
    the top level."""
    checkpoint = _read_weights(Path(path))
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}).")
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    not_tensors = [key for key, value in checkpoint.items() if not torch.is_tensor(value)]
    if not_tensors:
        raise ValueError(f"{path}: these entries are not tensors: {not_tensors[:10]}")
    return checkpoint


def _matches(signature: Signature, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether every key of `signature` is present with the rows it asks for."""
    for key, rows in signature.items():
        if isinstance(rows, str):  # as many rows as another key (-1: that key is missing, so no match)
            rows = state_dict[rows].shape[0] if rows in state_dict else -1
        if key not in state_dict or (rows is not None and state_dict[key].shape[0] != rows):
            return False
    return True


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """The key layout a checkpoint has: the first whose signature matches, most specific (most keys) first."""
    candidates = sorted(layouts().items(), key=lambda item: -len(item[1].signature))  # stable: ties keep table order
    return next(name for name, layout in candidates if _matches(layout.signature, state_dict))


def detect_task(state_dict: dict[str, torch.Tensor]) -> str:
    """The task whose model a checkpoint converts to (a bare backbone when no head signature matches)."""
    return layouts()[detect_layout(state_dict)].task


def _require(state_dict: dict[str, torch.Tensor], key: str, kind: str = "BEiT-3") -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"Not a {kind} checkpoint: the key {key!r} is missing.")
    return state_dict[key]


def infer_config(
    state_dict: dict[str, torch.Tensor],
    task: str | None = None,
    num_attention_heads: int | None = None,
    image_only: bool = False,
) -> tuple[BEiT3Config, str]:
    """The config (and task) a checkpoint was trained with, read off its tensor shapes. `image_only`: the image path
    alone (timm's weights), with no text keys to read."""
    task = task or detect_task(state_dict)
    label_key = get_task(task).label_key
    patch_weight = _require(state_dict, "beit3.vision_embed.proj.weight")
    if image_only:
        defaults = BEiT3Config()
        vocab_size, hidden_size = defaults.vocab_size, patch_weight.shape[0]
        text_rows = defaults.max_text_positions + FAIRSEQ_POSITION_OFFSET
    else:
        vocab_size, hidden_size = _require(state_dict, "beit3.text_embed.weight").shape
        text_rows = _require(state_dict, "beit3.encoder.embed_positions.B.weight").shape[0]
    image_rows = _require(state_dict, "beit3.encoder.embed_positions.A.weight").shape[0]
    layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"beit3\.encoder\.layers\.(\d+)\.", key))}
    if not layers:
        raise ValueError("Not a BEiT-3 checkpoint: no `beit3.encoder.layers.*` keys.")
    intermediate_size = _require(state_dict, "beit3.encoder.layers.0.ffn.A.fc1.weight").shape[0]

    patch_size = patch_weight.shape[-1]
    grid = math.isqrt(image_rows - 1 - FAIRSEQ_POSITION_OFFSET)
    if grid * grid != image_rows - 1 - FAIRSEQ_POSITION_OFFSET:
        raise ValueError(f"The image position table has {image_rows} rows, which is not 3 + a square grid.")

    num_labels = _require(state_dict, label_key).shape[0] if label_key else 2
    from_rows = {}
    for attribute, key in get_task(task).config_from_rows.items():
        if key not in state_dict:
            raise ValueError(f"A BEiT-3 {task} checkpoint holds {key!r} (it sets `{attribute}`); this one does not.")
        from_rows[attribute] = state_dict[key].shape[0]
    config = BEiT3Config(
        hidden_size=hidden_size,
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=num_attention_heads or hidden_size // 64,
        intermediate_size=intermediate_size,
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=patch_weight.shape[1],
        vocab_size=vocab_size,
        max_text_positions=text_rows - FAIRSEQ_POSITION_OFFSET,
        use_final_layer_norm="beit3.encoder.layer_norm.A.weight" in state_dict,
        num_labels=num_labels,
        image_only=image_only,
        **from_rows,
    )
    return config, task


def _rename(key: str, mapping: dict[str, str]) -> str | None:
    for pattern, replacement in mapping.items():
        if re.match(pattern, key):
            new_key = re.sub(pattern, replacement, key)
            return re.sub(r"\.(A|B)\.", lambda m: f".{EXPERTS[m.group(1)]}.", new_key)
    return None


def _dropped_keys(state_dict: dict[str, torch.Tensor], task: str) -> tuple[list[str], str]:
    """Present keys that `task`'s model has no place for but may drop, and why: the heads of an `EXTRA_LAYOUTS`
    layout converted to `task`, or, for the bare backbone, those of a detected task with `backbone_drops_head`."""
    dropped = {
        key
        for layout in layouts().values()
        if layout.task == task and layout.dropped_keys and _matches(layout.signature, state_dict)
        for key in layout.dropped_keys
        if key in state_dict
    }
    reason = f"no BEiT-3 {task} model has a place for these heads yet"
    detected = TASKS[detect_task(state_dict)]
    if get_task(task).model_class is BEiT3Model and detected.backbone_drops_head:
        dropped |= {key for key in state_dict if _rename(key, detected.head_key_mapping) is not None}
        reason = f"the backbone has no place for the {detected.name} heads (`--task {detected.name}` keeps them)"
    return sorted(dropped), reason


def _tasks_placing(keys: list[str]) -> list[str]:
    """The tasks whose key mapping has a place for every one of `keys`."""
    return [
        name
        for name, spec in TASKS.items()
        if all(_rename(key, {**BACKBONE_KEY_MAPPING, **spec.head_key_mapping}) is not None for key in keys)
    ]


def convert_state_dict(state_dict: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Original keys -> ours. Raises one ValueError listing every key that has no place."""
    spec = get_task(task)
    dropped, reason = _dropped_keys(state_dict, task)
    if dropped:
        logger.warning(f"Dropping {dropped}: {reason}.")
    mapping = {**BACKBONE_KEY_MAPPING, **spec.head_key_mapping}
    converted, unplaced = {}, []
    for key, value in state_dict.items():
        if key in dropped:
            continue
        new_key = _rename(key, mapping)
        if new_key is None:
            unplaced.append(key)
            continue
        if key.startswith("beit3.encoder.embed_positions."):
            value = value[FAIRSEQ_POSITION_OFFSET:]
        converted[new_key] = value
    if unplaced:
        fitting = _tasks_placing(unplaced)
        hint = f" They fit the {' or '.join(fitting)} task: pass `--task {fitting[0]}`." if fitting else ""
        raise ValueError(
            f"{len(unplaced)} checkpoint key(s) have no place in a BEiT-3 {task} model: {sorted(unplaced)}.{hint}"
        )
    if spec.model_class is BEiT3Model:  # the bare backbone is the base model: its keys carry no `beit3.` prefix
        converted = {key.removeprefix("beit3."): value for key, value in converted.items()}
    return converted


def load_converted(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]):
    """Strict load with one message naming every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            "The checkpoint does not fit the inferred model.\n"
            f"  parameters left unfilled: {missing}\n  keys without a place: {unexpected}\n"
            f"  shape mismatches: {mismatched}"
        )
    model.load_state_dict(state_dict, strict=True)


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path | None = None,
    task: str | None = None,
    num_attention_heads: int | None = None,
    spm_path: str | Path | None = None,
    answer2label_path: str | Path | None = None,
    swap_experts: bool = False,
):
    """Converts `checkpoint_path` (a released `.pth`, or the transformers PR's or timm's BEiT-3 weights: see
    `foreign_layouts`); saves the model (and its preprocessing) to `output_dir` when given. `swap_experts`: read a
    transformers PR file of the 2023 revision, whose `.text` experts hold the image weights."""
    original = load_original_state_dict(checkpoint_path)
    name = Path(checkpoint_path).stem
    if task is None and "quantize.embedding.weight" in original:
        task = VISUAL_TOKENIZER_TASK
    if task == VISUAL_TOKENIZER_TASK:
        if spm_path is not None or answer2label_path is not None:
            raise ValueError("A visual tokenizer takes images only: drop `spm_path` / `answer2label_path`.")
        return convert_visual_tokenizer(original, name, output_dir, num_attention_heads)
    original, source_layout = to_unilm_layout(original, swap_experts=swap_experts)
    image_only = source_layout == "timm"
    detected = detect_layout(original)
    found = ", ".join(f"{key} {tuple(original[key].shape)}" for key in layouts()[detected].signature)
    logger.info(
        f"{name}: the keys of the {detected} layout{f' ({found})' if found else ''}; converting to the "
        f"{task or layouts()[detected].task} task."
    )
    config, task = infer_config(original, task=task, num_attention_heads=num_attention_heads, image_only=image_only)
    released = RELEASED_CHECKPOINTS.get(name)
    if released is not None and released.image_size != config.image_size:
        raise ValueError(
            f"{name} is released at {released.image_size}px but its position table says {config.image_size}px."
        )
    if answer2label_path is not None:
        label2id = _read_answer2label(answer2label_path)
        if len(label2id) != config.num_labels:
            raise ValueError(
                f"{answer2label_path} lists {len(label2id)} answers but the checkpoint has {config.num_labels}."
            )
        config.label2id = label2id
        config.id2label = {index: answer for answer, index in label2id.items()}
    spec = TASKS[task]
    config.architectures = [spec.model_class.__name__]
    model = spec.model_class(config)
    load_converted(model, convert_state_dict(original, task))
    model.eval()
    if spec.generation_config is not None:  # the release's evaluation decoding (captioning: unilm's beam search)
        model.generation_config = spec.generation_config(
            bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id
        )
    if output_dir is not None:
        model.save_pretrained(output_dir)
        _save_preprocessing(Path(output_dir), task, config, spm_path)
        if released is not None and released.task == task:  # the card describes the released conversion
            (Path(output_dir) / "README.md").write_text(render_card(name, released), encoding="utf-8")
    return model


def _num_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    blocks = {int(m.group(1)) for key in state_dict if (m := re.match(rf"{prefix}\.blocks\.(\d+)\.", key))}
    if not blocks:
        raise ValueError(f"Not a BEiT v2 visual tokenizer checkpoint: no `{prefix}.blocks.*` keys.")
    return max(blocks) + 1


def _teacher_of(state_dict: dict[str, torch.Tensor], teacher_hidden_size: int) -> str:
    """The teacher: the one whose mean the saved scaling layer subtracts, else by width (CLIP 512, DINO 768)."""
    shift = state_dict.get("scaling_layer.shift")
    if shift is None:
        return "dino" if teacher_hidden_size == 768 else "clip"
    for teacher, (mean, _) in TEACHER_NORMALIZATION.items():
        if shift.numel() == len(mean) and torch.allclose(shift.flatten().float(), torch.tensor(mean)):
            return teacher
    raise ValueError(f"`scaling_layer.shift` = {shift.flatten().tolist()} is neither the CLIP nor the ImageNet mean.")


def infer_visual_tokenizer_config(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None
) -> BEiT3VisualTokenizerConfig:
    """The tokenizer's config read off its tensors; heads default to width / 64 (true of every release; at least
    one) for both ViTs, and `num_attention_heads` overrides both."""
    kind = "BEiT v2 visual tokenizer"
    hidden_size, num_channels, patch_size, _ = _require(state_dict, "encoder.patch_embed.proj.weight", kind).shape
    decoder_hidden_size, _, decoder_patch, _ = _require(state_dict, "decoder.patch_embed.proj.weight", kind).shape
    codebook_size, codebook_dim = _require(state_dict, "quantize.embedding.weight", kind).shape
    positions = _require(state_dict, "encoder.pos_embed", kind).shape[1]
    decoder_positions = _require(state_dict, "decoder.pos_embed", kind).shape[1]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"The encoder position table has {positions} rows, which is not 1 + a square grid.")
    if decoder_patch != 1 or decoder_positions != positions:
        raise ValueError(
            f"The decoder must run over the {grid}x{grid} code grid with patch size 1, but its patch size is "
            f"{decoder_patch} and its position table has {decoder_positions} rows (the encoder's: {positions})."
        )
    teacher_hidden_size = _require(state_dict, "decode_task_layer.2.weight", kind).shape[0]
    return BEiT3VisualTokenizerConfig(
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=_num_blocks(state_dict, "encoder"),
        num_attention_heads=num_attention_heads or max(1, hidden_size // 64),
        intermediate_size=_require(state_dict, "encoder.blocks.0.mlp.fc1.weight", kind).shape[0],
        decoder_hidden_size=decoder_hidden_size,
        decoder_num_hidden_layers=_num_blocks(state_dict, "decoder"),
        decoder_num_attention_heads=num_attention_heads or max(1, decoder_hidden_size // 64),
        decoder_intermediate_size=_require(state_dict, "decoder.blocks.0.mlp.fc1.weight", kind).shape[0],
        codebook_size=codebook_size,
        codebook_dim=codebook_dim,
        teacher=_teacher_of(state_dict, teacher_hidden_size),
        teacher_hidden_size=teacher_hidden_size,
    )


def convert_visual_tokenizer_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original VQ-KD keys -> ours, without the teacher, scaling and loss keys and the never-read EMA averages.
    Raises one ValueError listing every other key that has no place."""
    converted, unplaced = {}, []
    for key, value in state_dict.items():
        if key.startswith(VISUAL_TOKENIZER_DROPPED_PREFIXES) or key in VISUAL_TOKENIZER_UNUSED_KEYS:
            continue
        if match := re.match(VISUAL_TOKENIZER_QKV, key):
            for name, weight in zip("qkv", value.chunk(3)):
                converted[f"{match[1]}.layers.{match[2]}.attention.{name}_proj.weight"] = weight
            continue
        new_key = _rename(key, VISUAL_TOKENIZER_KEY_MAPPING)
        if new_key is None:
            unplaced.append(key)
            continue
        if new_key == "quantizer.initialized" and value.numel() == 1:  # the release's float `[1.]`
            value = value.reshape(()).bool()
        converted[new_key] = value
    if unplaced:
        raise ValueError(
            f"{len(unplaced)} checkpoint key(s) have no place in a BEiT-3 visual tokenizer: {sorted(unplaced)}"
        )
    return converted


def _check_released_tokenizer(name: str, config: BEiT3VisualTokenizerConfig):
    """A file named as a released tokenizer (hash suffix allowed) must have that release's sizes."""
    row = RELEASED_VISUAL_TOKENIZERS.get(name.split("-")[0])
    if row is None:
        return
    found = dict(
        teacher=config.teacher,
        decoder_layers=config.decoder_num_hidden_layers,
        teacher_hidden_size=config.teacher_hidden_size,
        image_size=config.image_size,
        codebook_size=config.codebook_size,
        codebook_dim=config.codebook_dim,
    )
    wrong = {key: found[key] for key, value in dataclasses.asdict(row).items() if found[key] != value}
    if wrong:
        raise ValueError(f"{name} is released with {dataclasses.asdict(row)}, but its tensors say {wrong}.")


def convert_visual_tokenizer(
    original: dict[str, torch.Tensor],
    name: str = "",
    output_dir: str | Path | None = None,
    num_attention_heads: int | None = None,
) -> BEiT3VisualTokenizer:
    """Converts a VQ-KD state dict; saves the model and its image processor to `output_dir` when given."""
    config = infer_visual_tokenizer_config(original, num_attention_heads)
    _check_released_tokenizer(name, config)
    config.architectures = [BEiT3VisualTokenizer.__name__]
    model = BEiT3VisualTokenizer(config)
    load_converted(model, convert_visual_tokenizer_state_dict(original))
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        BEiT3ImageProcessor(**visual_tokenizer_processor_kwargs(config.image_size)).save_pretrained(output_dir)
    return model


def _read_answer2label(path: str | Path) -> dict[str, int]:
    """unilm's `answer2label.txt`: one JSON object per line, {"answer": ..., "label": ...}."""
    label2id = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                label2id[row["answer"]] = int(row["label"])
    return label2id


def _save_preprocessing(output_dir: Path, task: str, config: BEiT3Config, spm_path):
    """Writes the image processor (and tokenizer) matching the checkpoint, so the directory is self-contained."""
    image_processor = BEiT3ImageProcessor(**processor_config_for(task, config.image_size))
    if spm_path is None:
        image_processor.save_pretrained(output_dir)
        return
    tokenizer = convert_spm_to_tokenizer(spm_path, output_dir)
    BEiT3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "checkpoint",
        help="original BEiT-3 .pth file, or the transformers PR's / timm's BEiT-3 weights (file or model directory)",
    )
    parser.add_argument("output_dir", help="where to write the Hugging Face model directory")
    parser.add_argument(
        "--task",
        choices=sorted([*TASKS, VISUAL_TOKENIZER_TASK]),
        help="override the head detected from the keys (visual_tokenizer: a BEiT v2 VQ-KD file)",
    )
    parser.add_argument("--num-attention-heads", type=int, help="default: hidden_size / 64 (true of every release)")
    parser.add_argument("--spm", help="the release's beit3.spm, converted into tokenizer.json next to the weights")
    parser.add_argument("--answer2label", help="unilm answer2label.txt, sets id2label for VQA checkpoints")
    parser.add_argument(
        "--swap-experts",
        action="store_true",
        help="a transformers PR checkpoint of the 2023 revision (#22289), whose `.text` experts hold the image weights",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the converted directory to this Hub repo")
    args = parser.parse_args(argv)

    model = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        task=args.task,
        num_attention_heads=args.num_attention_heads,
        spm_path=args.spm,
        answer2label_path=args.answer2label,
        swap_experts=args.swap_experts,
    )
    config = model.config
    print(
        f"{type(model).__name__}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"image {config.image_size}px, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
        f"-> {args.output_dir}"
    )
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=args.push_to_hub, folder_path=args.output_dir)
        print(f"uploaded to {args.push_to_hub}")


if __name__ == "__main__":
    main()
