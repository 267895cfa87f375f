"""Remote code: directories saved by this package load where it is not installed, with `trust_remote_code=True`.

`import beit3_hf` calls `register_remote_code()`, which registers every config, model, processor and tokenizer class
for its Auto class (`register_for_auto_class`). From then on `save_pretrained` (and so `beit3-convert`) writes,
next to the weights, the package's module files the saved class needs (transformers' `custom_object_save` copies the
defining file and every file it imports relatively, which is why the package's modules import each other with
`from .module import ...` only) and an `auto_map` naming the class of each Auto class. A BEiT-3 `config.json`
names every head and the backbone (`AutoBackbone`), not only the saved one (`BEiT3Config.remote_auto_map`), and
the config copies their files too (`remote_code_files`), so the code of a directory is complete and

    AutoModel.from_pretrained(path, trust_remote_code=True)                       # BEiT3Model
    AutoModelForVisualQuestionAnswering.from_pretrained(path, trust_remote_code=True)
    AutoProcessor.from_pretrained(path, trust_remote_code=True)                   # BEiT3Processor

work in an environment with only torch and transformers, like the package's own Auto classes after
`import beit3_hf`. The NLVR2 head, which no transformers Auto class fits (the package registers it with none),
loads remotely through `AutoModelForSequenceClassification` (a 2-way classifier over an image pair and a text).
Where the package is imported, its own registrations win and `trust_remote_code` is not needed.
"""

from __future__ import annotations

import sys

from transformers.dynamic_module_utils import get_relative_import_files

from .configuration_beit3 import BEiT3Config
from .configuration_visual_tokenizer import BEiT3VisualTokenizerConfig
from .image_processing_beit3 import BEiT3ImageProcessor
from .modeling_beit3 import BEiT3ForVisualReasoning
from .modeling_beit3_backbone import BEiT3Backbone
from .modeling_visual_tokenizer import BEiT3VisualTokenizer
from .processing_beit3 import BEiT3Processor
from .tasks import TASKS
from .tokenization_beit3 import BEiT3Tokenizer

__all__ = ["REMOTE_AUTO_CLASSES", "register_remote_code", "remote_auto_map", "remote_code_files"]

#: Auto class of the heads that the package registers with none (remote code needs one to name them), and of the
#: backbone (registered in `__init__`, not a task).
REMOTE_ONLY_AUTO_CLASSES = {BEiT3ForVisualReasoning: "AutoModelForSequenceClassification", BEiT3Backbone: "AutoBackbone"}


def _reference(cls: type) -> str:
    """`module.Class` as `auto_map` writes it: the module's file name, since the files are saved flat."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


def _model_auto_classes() -> dict[type, str]:
    """Model class -> the Auto class it is saved for (`TASKS`' registrations, then `REMOTE_ONLY_AUTO_CLASSES`)."""
    classes = {task.model_class: task.auto_class.__name__ for task in TASKS.values() if task.auto_class is not None}
    return {**classes, **REMOTE_ONLY_AUTO_CLASSES}


def remote_auto_map() -> dict[str, str]:
    """The `auto_map` of a BEiT-3 `config.json`: AutoConfig and the Auto class of every head."""
    auto_map = {"AutoConfig": _reference(BEiT3Config)}
    for model_class, auto_class in _model_auto_classes().items():
        if auto_class in auto_map:
            raise ValueError(f"Two BEiT-3 models are registered for {auto_class}: {auto_map[auto_class]} and {model_class}.")
        auto_map[auto_class] = _reference(model_class)
    return auto_map


#: Every class `register_remote_code` registers, with its Auto class.
REMOTE_AUTO_CLASSES: dict[type, str] = {}


def register_remote_code() -> None:
    """Registers every BEiT-3 class for its Auto class, so `save_pretrained` writes the code and `auto_map` (harmless
    to call again)."""
    REMOTE_AUTO_CLASSES.update(
        {
            BEiT3Config: "AutoConfig",
            **_model_auto_classes(),
            BEiT3VisualTokenizerConfig: "AutoConfig",
            BEiT3VisualTokenizer: "AutoModel",
            BEiT3ImageProcessor: "AutoImageProcessor",
            BEiT3Processor: "AutoProcessor",
            BEiT3Tokenizer: "AutoTokenizer",
        }
    )
    for cls, auto_class in REMOTE_AUTO_CLASSES.items():
        cls.register_for_auto_class(auto_class)
    BEiT3Config.remote_auto_map = remote_auto_map()
    BEiT3Config.remote_code_files = remote_code_files()


def remote_code_files() -> tuple[str, ...]:
    """The package files `remote_auto_map` names, and every file they import relatively (transformers' own walk)."""
    modules = {sys.modules[model_class.__module__].__file__ for model_class in _model_auto_classes()}
    files = set(modules)
    for module in modules:
        files.update(get_relative_import_files(module))
    return tuple(sorted(files))
