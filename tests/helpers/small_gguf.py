"""Small GGUF files written by gguf-py as other converters write them, for the validation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def rewrite_gguf(source: Path, target: Path, changes: dict[str, Any], drop_tensors: tuple[str, ...] = ()) -> Path:
    """Copy a GGUF with some metadata changed: `changes` maps a key to its new value (typed as the old
    one; a new key's whole number as UINT32, as llama.cpp's counts, other values as gguf-py infers them),
    or to None to drop the key. A new `general.architecture`
    renames the old architecture's keys too. Tensors are copied as they are, but those whose names
    contain one of `drop_tensors`."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    new_arch = changes.get(gguf.Keys.General.ARCHITECTURE, arch)
    writer = gguf.GGUFWriter(target, new_arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == gguf.Keys.General.ARCHITECTURE:
            continue
        if key.startswith(f"{arch}."):
            key = f"{new_arch}.{key.removeprefix(f'{arch}.')}"
        if key in changes:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for key, value in changes.items():
        if value is None or key == gguf.Keys.General.ARCHITECTURE:
            continue
        old = reader.fields.get(key)
        if old is not None and old.types[0] != gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, old.types[0])
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            writer.add_key_value(key, value, gguf.GGUFValueType.UINT32)
        else:
            writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value))
    for tensor in reader.tensors:
        if any(part in tensor.name for part in drop_tensors):
            continue
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
