"""Hugging Face MobileLLM-R1 checkpoints to GGUF: pure file-format work."""
