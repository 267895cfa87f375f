"""BEiT-3 for Hugging Face Transformers."""
