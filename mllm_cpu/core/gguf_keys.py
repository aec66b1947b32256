"""GGUF metadata keys this project writes and reads beyond gguf-py's `gguf.Keys`.

Standard keys come from `gguf.Keys` (with `{arch}` filled by `.format(arch=...)`); the keys
below are ours and record where a file came from.
"""

from __future__ import annotations

from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy

SOURCE_ARCHITECTURE = "mllm_cpu.source_architecture"
"""The Hugging Face class the weights came from, e.g. Llama4ForCausalLM."""
SOURCE_LABEL = "mllm_cpu.source_label"
"""A human label for the source, e.g. "MobileLLM-R1 (Llama4 dense)"."""
LAYER_REPEAT = "mllm_cpu.layer_repeat"
"""MobileLLM v1 layer sharing: each checkpoint block is written this many times in a row (2)."""
ORIGIN = "mllm_cpu.origin"
"""How the file was made: "converted" (from a local checkpoint folder) or "pulled" (from the hub)."""
ORIGIN_SOURCE = "mllm_cpu.origin.source"
"""What it was made from: the checkpoint folder's name, or "owner/repo@commit" for a pull."""
REPAIRED_FROM = "mllm_cpu.repaired_from"
"""Set by `mllm-cpu repair`: the file name of the llama4 zero-expert GGUF the file was repaired from."""

ARCHITECTURE = gguf.Keys.General.ARCHITECTURE
NAME = gguf.Keys.General.NAME
TOKENIZER_MODEL = gguf.Keys.Tokenizer.MODEL
TOKENS = gguf.Keys.Tokenizer.LIST
BOS_ID = gguf.Keys.Tokenizer.BOS_ID
EOS_ID = gguf.Keys.Tokenizer.EOS_ID
EOT_ID = gguf.Keys.Tokenizer.EOT_ID
EOM_ID = gguf.Keys.Tokenizer.EOM_ID
ADD_BOS = gguf.Keys.Tokenizer.ADD_BOS
CHAT_TEMPLATE = gguf.Keys.Tokenizer.CHAT_TEMPLATE


def arch_key(template: str, arch: str) -> str:
    """A per-architecture key: arch_key(gguf.Keys.LLM.BLOCK_COUNT, "qwen3") -> "qwen3.block_count"."""
    return template.format(arch=arch)
