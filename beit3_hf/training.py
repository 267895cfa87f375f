"""Fine-tuning helpers shared by the example scripts (`examples/run_*.py`): model loading (converted checkpoint or
random init from a config, optional bitsandbytes quantisation), LoRA on the Multiway experts, the data collators of
the five tasks, and the argument dataclasses and train/evaluate loop the scripts have in common.

LoRA targets are regexes over our module names. Every Multiway expert is a plain `nn.Linear` leaf named after its
modality: `beit3.encoder.layers.3.self_attn.q_proj.image`, `...self_attn.out_proj.text`, `...mlp.image.fc1`,
`...mlp.text.fc2` and, in the paper's layout, `...mlp.image_text.fc1` (the vision-language expert of the top blocks).

- `"all"`: every attention projection (expert or shared) and every feed-forward expert, the VL one included.
- `"image"` / `"text"`: only the experts that tokens of that modality alone pass through. A module shared by both
  modalities (the attention projections when `multiway_attention=False`, as in the paper) and the VL expert (used
  by image-text input) are left out, so that adapting one modality never changes what the other computes: with
  `"image"`, text-only outputs stay exactly those of the base model. In the paper layout `"image"` therefore adapts
  the image feed-forward experts only; use `"all"` to adapt the shared attention too.

Task heads (`classifier`, `fc_norm`, `pooler`, `image_projection`, `text_projection`, `lm_head`) are trained in
full (`modules_to_save`) and are never quantised. The retrieval head's `logit_scale` is a bare parameter, which
PEFT can neither adapt nor save: it stays at its loaded value under LoRA.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import BitsAndBytesConfig
from transformers.utils import logging

from .configuration_beit3 import BEIT3_PRESETS, BEiT3Config
from .modeling_beit3 import BEiT3PreTrainedModel

logger = logging.get_logger(__name__)

_ATTENTION = r"self_attn\.(q_proj|k_proj|v_proj|out_proj)"

LORA_TARGETS = {
    "all": rf".*\.{_ATTENTION}(\.(image|text))?|.*\.mlp\.(image|text|image_text)\.(fc1|fc2)",
    "image": rf".*\.{_ATTENTION}\.image|.*\.mlp\.image\.(fc1|fc2)",
    "text": rf".*\.{_ATTENTION}\.text|.*\.mlp\.text\.(fc1|fc2)",
}
"""Regexes (full match) over the names of the linear layers that `apply_lora(target=...)` adapts; see the module doc.
The attention pattern of `"all"` also matches the Multiway container (`...q_proj`) of the released layout, which is
why `lora_target_modules` keeps linear leaves only."""


# ----------------------------------------------------------------------------------------------------------------
# Heads, LoRA, quantisation
# ----------------------------------------------------------------------------------------------------------------


def head_module_names(model: BEiT3PreTrainedModel | type[BEiT3PreTrainedModel]) -> list[str]:
    """
    Names of the task-head modules of a BEiT-3 model (or model class): every top-level child except the backbone,
    e.g. `["fc_norm", "classifier"]` for image classification and `["lm_head"]` for captioning. These are the
    LoRA `modules_to_save` and the bitsandbytes skip list.
    """
    if isinstance(model, type):
        if not issubclass(model, BEiT3PreTrainedModel):
            raise ValueError(f"`model` must be a BEiT-3 model or model class, got {model!r}.")
        # the module tree does not depend on the sizes: build a minimal one without allocating memory
        tiny = BEiT3Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                           image_size=8, patch_size=8, vocab_size=8, max_text_positions=8)
        with torch.device("meta"):
            model = model(tiny)
    prefix = getattr(model, "base_model_prefix", "beit3")
    if not hasattr(model, prefix):  # the bare backbone has no head
        return []
    return [name for name, _ in model.named_children() if name != prefix]


def lora_target_modules(model: torch.nn.Module, target: str = "all") -> list[str]:
    """The names of the linear layers of `model` that LoRA adapts for `target` (a key of `LORA_TARGETS`)."""
    if target not in LORA_TARGETS:
        raise ValueError(f"Unknown LoRA target {target!r}; choose one of {sorted(LORA_TARGETS)}.")
    pattern = re.compile(LORA_TARGETS[target])
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)]
    if not names:
        raise ValueError(f"LoRA target {target!r} matches no linear layer of {type(model).__name__}.")
    return names


def apply_lora(
    model: BEiT3PreTrainedModel,
    target: str = "all",
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    modules_to_save: Sequence[str] | None = None,
):
    """
    Wraps `model` in a PEFT `PeftModel` with LoRA adapters on the experts chosen by `target` (a key of
    `LORA_TARGETS`); the task heads (`head_module_names(model)` unless `modules_to_save` is given) are trained in
    full and saved with the adapter. Every other weight is frozen.
    """
    from peft import LoraConfig, get_peft_model

    target_modules = lora_target_modules(model, target)
    if modules_to_save is None:
        modules_to_save = head_module_names(model)
    lora_config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=list(modules_to_save) or None,
    )
    return get_peft_model(model, lora_config)


def quantization_config(
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    model_class: type[BEiT3PreTrainedModel] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> BitsAndBytesConfig | None:
    """
    A bitsandbytes config for 8-bit (LLM.int8) or 4-bit (NF4, double quantisation) loading, or `None` when
    neither is asked for. The heads of `model_class` are listed in `llm_int8_skip_modules` and stay in full
    precision (bitsandbytes' own heuristic would quantise any head with a bias). `compute_dtype` (4-bit only)
    defaults to bf16 on a GPU that supports it, else fp32.
    """
    if load_in_8bit and load_in_4bit:
        raise ValueError("Choose one of `load_in_8bit` and `load_in_4bit`, not both.")
    if not (load_in_8bit or load_in_4bit):
        return None
    skip = head_module_names(model_class) if model_class is not None else []
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if compute_dtype is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        compute_dtype = torch.bfloat16 if bf16 else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


# ----------------------------------------------------------------------------------------------------------------
# Configs and models
# ----------------------------------------------------------------------------------------------------------------


def parse_config_overrides(overrides: str | dict | None) -> dict:
    """`"hidden_size=32,num_hidden_layers=2,multiway_attention=False"` -> a dict of Python literals."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Config overrides must look like `key=value,key=value`; got {item!r} in {overrides!r}.")
        try:
            parsed[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed[key.strip()] = value.strip()  # a bare string such as hidden_act=gelu
    return parsed


def build_config(config_name: str | None = None, config_overrides: str | dict | None = None, **kwargs) -> BEiT3Config:
    """
    A `BEiT3Config` from a preset name (`"base"`, `"large"`, `"giant"`), a `config.json` path or directory, or the
    defaults (`None`), with `config_overrides` and `kwargs` (e.g. `num_labels`) applied and validated.
    """
    overrides = {**parse_config_overrides(config_overrides), **kwargs}
    if config_name is None:
        return BEiT3Config(**overrides)
    if config_name in BEIT3_PRESETS:
        return BEiT3Config.from_preset(config_name, **overrides)
    if os.path.exists(config_name):
        config_dict, _ = BEiT3Config.get_config_dict(config_name)
        return BEiT3Config.from_dict({**config_dict, **overrides})
    raise ValueError(
        f"`config_name` {config_name!r} is neither a preset ({sorted(BEIT3_PRESETS)}) nor an existing config file "
        "or directory."
    )


def load_model(
    model_class: type[BEiT3PreTrainedModel],
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    config_overrides: str | dict | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
    ignore_mismatched_sizes: bool = False,
    dtype: torch.dtype | None = None,
    **config_kwargs,
) -> BEiT3PreTrainedModel:
    """
    Loads `model_class` from a converted checkpoint directory (`model_name_or_path`), or builds it with random
    weights from `build_config(config_name, config_overrides)`. `config_kwargs` (e.g. `num_labels`, `id2label`)
    go to the config in both cases; a head whose shape then differs from the checkpoint's needs
    `ignore_mismatched_sizes=True`.

    With `load_in_8bit` / `load_in_4bit` the backbone's linear layers are quantised with bitsandbytes (heads kept in
    full precision) and the model is prepared for QLoRA by `peft.prepare_model_for_kbit_training` (every weight
    frozen; add adapters with `apply_lora`). Quantisation happens at load time, so a random init is written to a
    temporary directory first. `gradient_checkpointing` there uses non-reentrant checkpointing, the only kind that
    gives LoRA gradients for image-only input.
    """
    quantization = quantization_config(load_in_8bit, load_in_4bit, model_class)
    if model_name_or_path is None:
        if config_name is None and config_overrides is None:
            logger.warning("No checkpoint and no config given: building a randomly initialised BEiT-3 base model.")
        config = build_config(config_name, config_overrides, **config_kwargs)
        model = model_class(config)
        if dtype is not None:
            model = model.to(dtype)
        if quantization is None:
            return model
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            model = load_model(model_class, tmp, load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit,
                               gradient_checkpointing=gradient_checkpointing, dtype=dtype)
        model.name_or_path = model.config._name_or_path = ""  # not the temporary directory, which is gone
        return model
    if config_name is not None or config_overrides is not None:
        raise ValueError(
            "Pass either `model_name_or_path` (a converted checkpoint) or `config_name`/`config_overrides` "
            f"(random init), not both; got {model_name_or_path!r} and {config_name or config_overrides!r}."
        )

    load_kwargs = dict(config_kwargs, ignore_mismatched_sizes=ignore_mismatched_sizes)
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    if quantization is not None:
        load_kwargs["quantization_config"] = quantization
        # one full copy per process: the GPU of this rank, or the CPU
        load_kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"}
    model = model_class.from_pretrained(model_name_or_path, **load_kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # PEFT's own checkpointing switch would take the deprecated `gradient_checkpointing_enable` path
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if load_in_4bit:
            keep_4bit_weights_trainable(model)
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def keep_4bit_weights_trainable(model: torch.nn.Module) -> None:
    """
    Stops bitsandbytes from repacking 4-bit weights into its CPU inference layout. On CPUs with AVX512-BF16 it does
    that at the first no-grad forward in eval mode (a Trainer evaluation, say) and never undoes it, after which
    every training forward fails ("a view of a leaf Variable ... in-place operation"). Costs only the faster CPU
    4-bit inference kernel; CUDA is unaffected.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


# ----------------------------------------------------------------------------------------------------------------
# Collators
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ImageClassificationCollator:
    """`{"image", "label"}` examples -> `pixel_values` and `labels`. `processor` is a `BEiT3Processor` or an image
    processor (grey-scale and RGBA images are converted to RGB by `BEiT3ImageProcessor`)."""

    processor: object
    image_column: str = "image"
    label_column: str = "label"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        image_processor = getattr(self.processor, "image_processor", self.processor)
        images = [example[self.image_column] for example in examples]
        return {
            "pixel_values": image_processor(images, return_tensors="pt")["pixel_values"],
            "labels": torch.tensor([example[self.label_column] for example in examples]),
        }


@dataclass
class ImageTextCollator:
    """
    `{"image", "text"}` examples -> `pixel_values`, `input_ids` and `attention_mask` from a `BEiT3Processor`
    (`<s> text </s>`, cut at `max_length` and padded to the longest text of the batch), plus `labels` from
    `label_column` when it is set.

    - Retrieval: no labels; `return_loss=True` asks the model for its contrastive loss.
    - NLVR2: `pair_columns` names the two image columns; `pixel_values` is `(batch, 2, channels, height, width)`.
    """

    processor: object
    image_column: str = "image"
    text_column: str = "text"
    label_column: str | None = None
    pair_columns: tuple[str, str] | None = None
    max_length: int = 64
    return_loss: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if self.pair_columns is None:
            images = [example[self.image_column] for example in examples]
        else:
            images = [[example[column] for column in self.pair_columns] for example in examples]
        batch = dict(
            self.processor(
                images=images,
                text=[example[self.text_column] for example in examples],
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        if self.label_column is not None:
            batch["labels"] = self.labels(examples)
        if self.return_loss:
            batch["return_loss"] = True
        return batch

    def labels(self, examples: list[dict]) -> torch.Tensor:
        return torch.tensor([example[self.label_column] for example in examples])


@dataclass
class VQACollator(ImageTextCollator):
    """
    VQA: image + question, and `labels` = VQAv2 soft scores over the answer vocabulary `label2id`
    (`beit3_hf.vqa.answer_target`: 1/2/3/4+ annotators -> 0.3/0.6/0.9/1.0) from the list of annotator answers in
    `label_column`. A single answer string counts as certain (score 1).
    """

    text_column: str = "question"
    label_column: str = "answers"
    label2id: dict[str, int] | None = None

    def labels(self, examples: list[dict]) -> torch.Tensor:
        from .vqa import answer_target

        if not self.label2id:
            raise ValueError("VQACollator needs the answer vocabulary `label2id`.")
        targets = torch.zeros(len(examples), len(self.label2id))
        for row, example in enumerate(examples):
            answers = example[self.label_column]
            if isinstance(answers, str):
                if answers in self.label2id:
                    targets[row, self.label2id[answers]] = 1.0
            else:
                targets[row] = answer_target(answers, self.label2id, len(self.label2id))
        return targets


def mask_caption_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    unilm's captioning training corruption (`CaptioningDataset._masking_on_text_tokens`). For a caption of `n`
    real tokens (`<s>` and `</s>` included), `max(1, min(int(n * mask_prob + 0.5), n - 1))` distinct positions
    are drawn from `[1, n - 1]` (never `<s>`, possibly `</s>`); each becomes `<mask>` (80%), stays (10%) or
    becomes a random id in `[3, vocab_size - 1]` (10%). Returns the corrupted ids and `labels` holding the
    original ids at the drawn positions and -100 elsewhere.
    """
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"`mask_prob` must be in (0, 1], got {mask_prob!r}.")
    lengths = attention_mask.sum(dim=1)
    if (lengths < 2).any():
        raise ValueError(f"Every caption needs at least `<s>` and `</s>`; got real lengths {lengths.tolist()}.")
    masked = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    for row, length in enumerate(lengths.tolist()):
        num_masked = max(1, min(int(length * mask_prob + 0.5), length - 1))
        positions = torch.randperm(length - 1, generator=generator)[:num_masked] + 1
        labels[row, positions] = input_ids[row, positions]
        choice = torch.rand(num_masked, generator=generator)
        random_ids = torch.randint(3, vocab_size, (num_masked,), generator=generator)
        kept_or_random = torch.where(choice < 0.9, input_ids[row, positions], random_ids)
        masked[row, positions] = torch.where(choice < 0.8, mask_token_id, kept_or_random)
    return masked, labels


@dataclass
class CaptioningCollator:
    """
    `{"image", "text"}` examples -> `pixel_values`, masked `input_ids`, `attention_mask` and `labels`
    (`mask_caption_tokens`, unilm's recipe; captions cut at `max_length` = 32 tokens as in its training command).
    Randomness comes from torch's global generator, which Trainer seeds and restores on resume.
    """

    processor: object
    image_column: str = "image"
    text_column: str = "text"
    max_length: int = 32
    mask_prob: float = 0.6

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        texts = [example[self.text_column] for example in examples]
        texts = [text if isinstance(text, str) else text[0] for text in texts]  # several references: the first
        batch = self.processor(
            images=[example[self.image_column] for example in examples],
            text=texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        tokenizer = self.processor.tokenizer
        input_ids, labels = mask_caption_tokens(
            batch["input_ids"], batch["attention_mask"], tokenizer.mask_token_id, len(tokenizer), self.mask_prob
        )
        return {"pixel_values": batch["pixel_values"], "input_ids": input_ids,
                "attention_mask": batch["attention_mask"], "labels": labels}


# ----------------------------------------------------------------------------------------------------------------
# What the example scripts share: arguments, data, model, the train/evaluate loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Where the model comes from, and LoRA / quantisation."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A converted BEiT-3 checkpoint directory (see beit3_hf/convert.py). Leave it out to train "
                          "from random weights built from --config_name / --config_overrides."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Random init: a preset (base, large, giant) or a config.json path."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Random init: config fields to change, e.g. "
                          "'hidden_size=128,num_hidden_layers=4,num_attention_heads=4,intermediate_size=256'."},
    )
    tokenizer_dir: str | None = field(
        default=None, metadata={"help": "Tokenizer directory, for a checkpoint without one or a random init."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise checkpoint heads whose shape differs (e.g. other labels)."}
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (heads in full) instead of all weights."})
    lora_target: str = field(
        default="all",
        metadata={"help": "Experts that get adapters: all, image (image experts only) or text (text experts only).",
                  "choices": sorted(LORA_TARGETS)},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    merge_lora: bool = field(
        default=False, metadata={"help": "After training, also save the merged model in <output_dir>/merged."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "QLoRA: quantise the backbone to 8 bits."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: quantise the backbone to 4 bits (NF4)."})


@dataclass
class DataArguments:
    """Which data, how much of it, and its column names."""

    dataset_dir: str = field(
        metadata={"help": "An imagefolder directory with train/ and test/ splits: class sub-folders (classification) "
                          "or images plus a metadata.jsonl with the other columns, as each task of the shapes world "
                          "(python -m beit3_hf.data.shapes) is written; or a DatasetDict saved with save_to_disk."},
    )
    train_split: str = field(default="train")
    eval_split: str = field(default="test")
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    image_column: str = field(default="image")
    max_text_length: int = field(default=64, metadata={"help": "Longest text in tokens, <s> and </s> included."})


SCRIPT_DEFAULTS = dict(
    do_train=True,
    do_eval=True,
    remove_unused_columns=False,  # the collators need the raw `image`/`text` columns
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=10,
    report_to="none",
    weight_decay=0.05,
    warmup_steps=0.1,  # a fraction of the training steps
    seed=42,
)
"""TrainingArguments defaults of the example scripts (each still overridable on the command line). On a machine
without a GPU `use_cpu` is on, so that `torchrun` on CPUs trains one model with gloo (without it every process
trains alone); `bf16` is on where the GPU supports it."""


def parse_arguments(data_class: type[DataArguments] = DataArguments, args: Sequence[str] | None = None, **defaults):
    """
    `(ModelArguments, data_class, TrainingArguments)` from the command line (`args`, default `sys.argv[1:]`) or
    from a single `.json` file, with `SCRIPT_DEFAULTS` and the script's own `defaults` (e.g. a learning rate).
    """
    import sys

    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, data_class, TrainingArguments))
    has_gpu = torch.cuda.is_available()
    parser.set_defaults(
        **SCRIPT_DEFAULTS, use_cpu=not has_gpu, bf16=has_gpu and torch.cuda.is_bf16_supported(), **defaults
    )
    args = sys.argv[1:] if args is None else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(args[0]))
    return parser.parse_args_into_dataclasses(args)


def setup_logging(training_args) -> None:
    """transformers/datasets verbosity from `--log_level` (warnings only on the non-main processes)."""
    import datasets
    import transformers

    log_level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def load_task_dataset(data_args: DataArguments):
    """
    The training and evaluation splits of `data_args.dataset_dir`: a directory written by `Dataset(Dict).save_to_disk`,
    or an `imagefolder` (class sub-folders, or images plus a `metadata.jsonl` holding the other columns, as the
    shapes-world generator writes), cut to `max_train_samples` / `max_eval_samples`.
    """
    import datasets

    path = data_args.dataset_dir
    if not os.path.isdir(path):
        raise ValueError(f"`dataset_dir` {path!r} is not a directory.")
    metadata = {split: os.path.join(path, split, "metadata.jsonl")
                for split in (data_args.train_split, data_args.eval_split)}
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
    elif all(os.path.isfile(file) for file in metadata.values()):
        # the same imagefolder, without listing and fingerprinting every image first (30 s for 20k images)
        dataset = datasets.load_dataset("imagefolder", data_files=metadata)
    else:
        dataset = datasets.load_dataset("imagefolder", data_dir=path)
    splits = []
    for split, limit in ((data_args.train_split, data_args.max_train_samples),
                         (data_args.eval_split, data_args.max_eval_samples)):
        if split not in dataset:
            raise ValueError(f"{path!r} has no {split!r} split; it has {sorted(dataset)}.")
        part = dataset[split]
        splits.append(part.select(range(min(limit, len(part)))) if limit is not None else part)
    return tuple(splits)


def prepare_model(
    model_class: type[BEiT3PreTrainedModel], model_args: ModelArguments, training_args, tokenizer=None, **config_kwargs
):
    """
    The model to train: `load_model` with the script's arguments (seeded first, so every process and every rerun
    starts from the same random init), then LoRA adapters with `--lora`. Quantised weights cannot be trained
    directly, so `--load_in_8bit` / `--load_in_4bit` need `--lora` (QLoRA).

    With a `tokenizer`, the config takes its special-token ids (`<mask>` above all, which captioning generation
    feeds) and a random init sizes its vocabulary to it unless `--config_overrides` sets `vocab_size`.
    """
    from transformers import set_seed

    if (model_args.load_in_8bit or model_args.load_in_4bit) and not model_args.lora:
        raise ValueError("Quantised (--load_in_8bit / --load_in_4bit) weights are frozen: add --lora to train (QLoRA).")
    if tokenizer is not None:
        config_kwargs.update(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            mask_token_id=tokenizer.mask_token_id,
        )
        vocab_size = model_config(model_args).vocab_size
        if model_args.model_name_or_path is None and "vocab_size" not in parse_config_overrides(
            model_args.config_overrides
        ):
            vocab_size = config_kwargs["vocab_size"] = len(tokenizer)
        if len(tokenizer) > vocab_size:
            raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {vocab_size}.")
    set_seed(training_args.seed)
    model = load_model(
        model_class,
        model_args.model_name_or_path,
        config_name=model_args.config_name,
        config_overrides=model_args.config_overrides,
        load_in_8bit=model_args.load_in_8bit,
        load_in_4bit=model_args.load_in_4bit,
        gradient_checkpointing=bool(training_args.activation_checkpointing),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **config_kwargs,
    )
    if model_args.lora:
        if model_args.model_name_or_path is None:
            logger.warning("LoRA on a randomly initialised model: the adapters are only meaningful with that init.")
        model = apply_lora(model, model_args.lora_target, model_args.lora_r, model_args.lora_alpha,
                           model_args.lora_dropout)
        trainable, total = model.get_nb_trainable_parameters()
        logger.info(f"LoRA ({model_args.lora_target}): {trainable:,} of {total:,} parameters trainable "
                    f"({100 * trainable / total:.2f}%).")
    return model


def text_length(data_args: DataArguments, model) -> int:
    """`--max_text_length`, cut to what the model's text position table holds."""
    limit = model.config.max_text_positions
    if data_args.max_text_length > limit:
        logger.warning(f"--max_text_length {data_args.max_text_length} is cut to the model's {limit} text positions.")
    return min(data_args.max_text_length, limit)


def train_and_evaluate(trainer, model_args: ModelArguments, training_args, evaluate=None) -> dict:
    """
    The end of every script: train (resuming from `--resume_from_checkpoint`, a path or `last`), save the model
    (the adapters with `--lora`, plus the merged model in `<output_dir>/merged` with `--merge_lora`) and the
    processor, evaluate, and write `train_results.json`, `eval_results.json` and `all_results.json` to the output
    directory. `evaluate(trainer)` replaces `trainer.evaluate()` for metrics that need more than logits and labels
    (it returns `eval_`-prefixed metrics). Returns all metrics.
    """
    metrics = {}
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        result = trainer.train(resume_from_checkpoint=True if checkpoint == "last" else checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        eval_metrics = evaluate(trainer) if evaluate is not None else trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.do_train and model_args.lora and model_args.merge_lora and trainer.is_world_process_zero():
        if model_args.load_in_8bit or model_args.load_in_4bit:
            logger.warning("Not merging: the adapters of a quantised model would be merged into quantised weights.")
        else:  # last: merging rewrites the model in place
            merged_dir = os.path.join(training_args.output_dir, "merged")
            trainer.model.merge_and_unload().save_pretrained(merged_dir)
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(merged_dir)
    return metrics


def model_config(model_args: ModelArguments) -> BEiT3Config:
    """The config the script's model will have: the checkpoint's, or the random init's."""
    if model_args.model_name_or_path is not None:
        return BEiT3Config.from_pretrained(model_args.model_name_or_path)
    return build_config(model_args.config_name, model_args.config_overrides)


def load_processor(model_args: ModelArguments, task: str, needs_tokenizer: bool = True):
    """
    The processor of a task: a `BEiT3ImageProcessor` with the preprocessing the original fine-tuning used for it
    (`processor_presets.TASK_PRESETS`: "imagenet" for image classification, "vl" for the rest) at the model's
    `image_size`, and, with `needs_tokenizer`, the tokenizer from `--tokenizer_dir` or else the
    checkpoint directory, in a `BEiT3Processor`. Image classification needs no tokenizer and gets the image
    processor alone.
    """
    from .image_processing_beit3 import BEiT3ImageProcessor
    from .processing_beit3 import BEiT3Processor
    from .processor_presets import TASK_PRESETS
    from .tokenization_beit3 import load_beit3_tokenizer

    image_processor = BEiT3ImageProcessor.from_preset(TASK_PRESETS[task], size=model_config(model_args).image_size)
    if not needs_tokenizer:
        return image_processor
    tokenizer_source = model_args.tokenizer_dir or model_args.model_name_or_path
    if tokenizer_source is None:
        raise ValueError(f"The {task} script needs a tokenizer: pass --tokenizer_dir (e.g. data/shapes/tokenizer).")
    return BEiT3Processor(image_processor=image_processor, tokenizer=load_beit3_tokenizer(tokenizer_source))
