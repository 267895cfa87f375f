from setuptools import find_packages, setup

# Each extra holds what its commands import.
EXTRAS = {
    # python -m beit3_hf.demo: the scores (evaluate modules: pycocoevalcap's BLEU, torchmetrics' mIoU) and, for
    # --model-dir, real photos (scikit-image)
    "demo": ["scikit-image", "evaluate>=0.4", "datasets>=4", "pycocoevalcap", "torchmetrics>=1.3"],
    # the example scripts (datasets, LoRA, the Trainer) and their data: python -m beit3_hf.data.shapes trains the
    # shapes-world tokenizer with sentencepiece; the metrics are evaluate modules, BLEU / CIDEr pycocoevalcap's scorers
    "train": ["datasets>=4", "peft>=0.18", "accelerate>=1.3", "sentencepiece", "evaluate>=0.4", "pycocoevalcap"],
    # 8-bit / 4-bit loading (beit3_hf.peft_utils.load_model prepares it for QLoRA with peft)
    "quant": ["bitsandbytes>=0.46.1", "accelerate>=1.3", "peft>=0.18"],
    # torchvision image-processor backend (pulls a large torch build: optional on purpose)
    "vision": ["torchvision"],
    # beit3-convert --spm: compare the converted tokenizer's ids with SentencePiece itself (the conversion needs none)
    "spm": ["sentencepiece"],
    # beit3-export-onnx: torch's exporter (onnxscript) and the onnxruntime check of every graph (tested with onnx
    # 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0; no floor tested)
    "onnx": ["onnx", "onnxscript", "onnxruntime"],
    # examples/ds_zero{2,3}.json with the example scripts' --deepspeed (tested with deepspeed 0.19.8 on CPU, 2 gloo
    # processes; no floor tested)
    "deepspeed": ["deepspeed"],
    # the detection / segmentation examples' metrics: COCO mAP (pycocotools' COCOeval), mean IoU (torchmetrics)
    "dense": ["pycocotools>=2.0.7", "torchmetrics>=1.3"],
}
# the test suite: everything above but torchvision (its tests skip without it), plus protobuf for the tokenizer
# tests (the official torchscale/unilm code is installed by .ci/run with --no-deps)
EXTRAS["dev"] = sorted(
    {"pytest", "hypothesis", "protobuf"}.union(
        *(EXTRAS[name] for name in ("demo", "train", "quant", "spm", "dense", "onnx", "deepspeed"))
    )
)

setup(
    name="beit3-hf",
    version="0.1.0",
    description="BEiT-3 (Image as a Foreign Language) for Hugging Face Transformers: config, model, heads, processors, converter.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["beit3_hf", "beit3_hf.*"]),
    # the evaluate modules of beit3_hf.metrics (loaded by path, so they must ship as files)
    # ... and the shipped models (beit3_hf.shipped): model directories, their scores, the Fashion-MNIST test sample
    package_data={"beit3_hf": ["assets/shapes_tokenizer/*", "assets/models/*", "assets/models/*/*", "metrics/*/*.py"]},
    python_requires=">=3.10",
    # Floors. torch and huggingface-hub: transformers 5.24's own (it disables torch < 2.6; torch 2.6 itself is not
    # tested here, CI runs 2.13, see .ci/run). The others were tested together at the floor, with
    # tests/test_examples.py and tests/test_lora_quant.py: huggingface-hub 1.31.0, bitsandbytes 0.46.1
    # (transformers' minimum for bnb), accelerate 1.3.0 (transformers says 1.1, but its Trainer calls
    # `unwrap_model(keep_torch_compile=...)`, new in 1.3), peft 0.18.0 (0.17 fails to import under transformers 5)
    # and datasets 4.0.0.
    install_requires=[
        "torch>=2.6",
        "transformers>=5.24,<6",
        "huggingface-hub>=1.31",
        "safetensors",
        "numpy",
        "pillow",
        "tokenizers",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "beit3-convert=beit3_hf.convert:main",
            "beit3-export-onnx=beit3_hf.onnx_export:main",
            "beit3-publish=beit3_hf.publish:main",
        ]
    },
)
