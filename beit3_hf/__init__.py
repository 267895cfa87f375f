"""BEiT-3 for Hugging Face Transformers.

`import beit3_hf` registers the config, the backbone and every head with transformers' Auto classes (the Auto class
of each task in `tasks.TASKS`, e.g. `AutoModelForPreTraining` for the masked-data-modeling heads), so
`AutoModel.from_pretrained(local_dir)`, `AutoProcessor.from_pretrained(local_dir)` and `pipeline(...)` (including the
`visual-question-answering` task that transformers 5 no longer ships) work on converted checkpoints. The BEiT v2
visual tokenizer (model type "beit3_visual_tokenizer") is registered with AutoConfig, AutoModel and
AutoImageProcessor too.

The small models trained by the package itself ship inside it: `shipped_model_path("shapes-vqa")` is a directory for
any `from_pretrained`, `load_shipped_model("shapes-vqa")` gives `(model, processor)` (`SHIPPED_MODELS` lists them).
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from .configuration_beit3 import BEIT3_PRESETS, BEiT3Config
from .configuration_visual_tokenizer import BEiT3VisualTokenizerConfig
from . import modeling_beit3
from .modeling_beit3 import (
    BEiT3CaptioningOutput,
    BEiT3ForCaptioning,
    BEiT3ForImageClassification,
    BEiT3ForImageTextRetrieval,
    BEiT3ForMaskedDataModeling,
    BEiT3ForMaskedDataModelingOutput,
    BEiT3ForVisualQuestionAnswering,
    BEiT3ForVisualReasoning,
    BEiT3ImageTextRetrievalOutput,
    BEiT3Model,
    BEiT3ModelOutput,
    BEiT3Multiway,
    BEiT3PreTrainedModel,
)
from .modeling_beit3_backbone import BEiT3Backbone
from .modeling_visual_tokenizer import (
    BEiT3VectorQuantizer,
    BEiT3VisualTokenizer,
    BEiT3VisualTokenizerOutput,
)
from .image_processing_beit3 import BEiT3ImageProcessor
from .masking import BlockMaskingGenerator, mask_text_tokens
from .parameter_groups import count_parameters_by_group
from .pipelines import BEiT3VisualQuestionAnsweringPipeline, register_pipelines
from .processing_beit3 import BEiT3Processor, register_processors
from .remote_code import register_remote_code
from .shipped import SHIPPED_MODELS, load_shipped_model, shipped_model_path
from .tasks import TASKS
from .tokenization_beit3 import BEiT3Tokenizer, convert_spm_to_tokenizer, load_beit3_tokenizer

__version__ = "0.1.0"

AutoConfig.register("beit3", BEiT3Config, exist_ok=True)
for _task in TASKS.values():  # one Auto class per task (`tasks.py`)
    if _task.auto_class is not None:
        _task.auto_class.register(BEiT3Config, _task.model_class, exist_ok=True)
AutoBackbone.register(BEiT3Config, BEiT3Backbone, exist_ok=True)  # detection / segmentation backbone
register_processors()
register_pipelines()
register_remote_code()  # saved directories carry their code and `auto_map` (load with trust_remote_code=True)
AutoConfig.register(BEiT3VisualTokenizerConfig.model_type, BEiT3VisualTokenizerConfig, exist_ok=True)
AutoModel.register(BEiT3VisualTokenizerConfig, BEiT3VisualTokenizer, exist_ok=True)
# the tokenizer's processor is the BEiT-3 one (PIL, plus torchvision when installed) without normalisation
AutoImageProcessor.register(
    BEiT3VisualTokenizerConfig, image_processor_classes=dict(IMAGE_PROCESSOR_MAPPING[BEiT3Config]), exist_ok=True
)

__all__ = [
    *modeling_beit3.__all__,
    "BEIT3_PRESETS",
    "BEiT3Backbone",
    "BEiT3Config",
    "BEiT3ImageProcessor",
    "BEiT3Processor",
    "BEiT3Tokenizer",
    "BEiT3VectorQuantizer",
    "BEiT3VisualQuestionAnsweringPipeline",
    "BEiT3VisualTokenizer",
    "BEiT3VisualTokenizerConfig",
    "BEiT3VisualTokenizerOutput",
    "BlockMaskingGenerator",
    "SHIPPED_MODELS",
    "convert_spm_to_tokenizer",
    "load_beit3_tokenizer",
    "load_shipped_model",
    "mask_text_tokens",
    "shipped_model_path",
    "count_parameters_by_group",
]
