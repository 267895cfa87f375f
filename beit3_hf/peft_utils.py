"""LoRA on the Multiway experts, bitsandbytes quantisation, and loading a BEiT-3 model to fine-tune (a converted
checkpoint or a random init from a config, optionally quantised for QLoRA).

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
