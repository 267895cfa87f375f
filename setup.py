from setuptools import find_packages, setup

setup(
    name="beit3-hf",
    version="0.1.0",
    description="BEiT-3 (Image as a Foreign Language) for Hugging Face Transformers: config, model, heads, processors, converter.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["beit3_hf", "beit3_hf.*"]),
    package_data={"beit3_hf": ["assets/shapes_tokenizer/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.24,<6",
        "huggingface-hub>=1.0",
        "safetensors",
        "numpy",
        "pillow",
        "tokenizers",
        "scikit-image",  # real photos for the demo (python -m beit3_hf.demo)
    ],
    extras_require={
        # training examples: datasets, metrics, adapters, multi-process
        "train": ["datasets>=4", "evaluate", "peft>=0.17", "accelerate>=1.0", "scikit-image"],
        # 8-bit / 4-bit loading and QLoRA
        "quant": ["bitsandbytes>=0.45", "accelerate>=1.0"],
        # torchvision image-processor backend (pulls a large torch build: optional on purpose)
        "vision": ["torchvision"],
        # converting a SentencePiece model (.spm) into tokenizer.json
        "spm": ["sentencepiece", "protobuf"],
        # the test suite (the official torchscale/unilm code is installed by .ci/run with --no-deps)
        "dev": [
            "pytest",
            "hypothesis",
            "scikit-image",
            "sentencepiece",
            "protobuf",
            "datasets>=4",
            "evaluate",
            "peft>=0.17",
            "accelerate>=1.0",
        ],
    },
    entry_points={"console_scripts": ["beit3-convert=beit3_hf.convert:main"]},
)
