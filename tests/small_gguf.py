"""Small GGUF files written by gguf-py as other converters write them, for the validation tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_small_gguf(path: Path, arch: str, *, expert_count: int | None = None) -> Path:
    """A GGUF of `arch` with a tokenizer and a few zero tensors; llama.cpp's own MobileLLM-R1
    conversion is `write_small_gguf(path, "llama4", expert_count=0)`."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    if expert_count is not None:
        writer.add_expert_count(expert_count)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(16)])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    for name, shape in [
        ("token_embd.weight", (16, 64)),
        ("output_norm.weight", (64,)),
        ("blk.0.attn_q.weight", (64, 64)),
        ("blk.0.ffn_up.weight", (128, 64)),
    ]:
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
