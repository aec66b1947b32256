"""Small GGUF files written by gguf-py as other converters write them, for the validation tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.core.errors import InputError


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


@dataclass(frozen=True)
class _Layout:
    """What a rewrite copies from a GGUF: its version, each key's stored type and value (bytes), the
    tensors (name, shape, type, data bytes) and the alignment."""

    version: int
    values: dict[str, bytes]
    tensors: list[tuple[str, tuple[int, ...], int, bytes]]
    alignment: int


def _layout(source: Path) -> _Layout:
    """The source's layout: read by mllm-cpu's header reader (fast), or by gguf-py when that refuses the
    file (a hostile one, rewritten again)."""
    data = source.read_bytes()
    try:
        header = read_gguf_header(source)
    except InputError:
        reader = gguf.GGUFReader(source)
        values = {
            key: b"".join(part.tobytes() for part in field.parts[2:])
            for key, field in reader.fields.items()
            if not key.startswith("GGUF.")
        }
        tensors = [
            (t.name, tuple(int(n) for n in t.field.parts[3]), int(t.tensor_type), np.asarray(t.data).tobytes())
            for t in reader.tensors
        ]
        version = int(reader.fields["GGUF.version"].parts[0][0])
    else:
        values = {key: data[start:end] for key, (start, end) in header.value_spans.items()}
        base = header.data_start
        tensors = []
        for t in header.tensors:
            tensors.append((t.name, t.shape, int(t.type), data[base + t.offset : base + t.offset + t.n_bytes]))
        version = header.version
    stored = values.get(gguf.Keys.General.ALIGNMENT)
    alignment = struct.unpack("<I", stored[4:8])[0] if stored is not None else gguf.GGUF_DEFAULT_ALIGNMENT
    return _Layout(version, values, tensors, alignment)


def rewrite_gguf(source: Path, target: Path, changes: dict[str, Any], drop_tensors: tuple[str, ...] = ()) -> Path:
    """Copy a GGUF with some metadata changed: `changes` maps a key to its new value (typed as the old
    one; a new key's whole number as UINT32, as llama.cpp's counts, other values as gguf-py infers them),
    or to None to drop the key. A new `general.architecture`
    renames the old architecture's keys too. Tensors are copied as they are, but those whose names
    contain one of `drop_tensors`. Unchanged keys and tensor data are copied as bytes; changed values
    are encoded by gguf-py."""
    layout = _layout(source)
    arch = layout.values[gguf.Keys.General.ARCHITECTURE][12:].decode("utf-8")  # type, length, text
    new_arch = changes.get(gguf.Keys.General.ARCHITECTURE, arch)
    packer = gguf.GGUFWriter(None, new_arch)
    entries: list[bytes] = []
    for key, value in layout.values.items():
        if key in changes and key != gguf.Keys.General.ARCHITECTURE:
            continue
        if key == gguf.Keys.General.ARCHITECTURE:
            value = packer._pack_val(new_arch, gguf.GGUFValueType.STRING, add_vtype=True)
        elif key.startswith(f"{arch}."):
            key = f"{new_arch}.{key.removeprefix(f'{arch}.')}"
        entries.append(_packed_text(key) + value)
    for key, value in changes.items():
        if value is None or key == gguf.Keys.General.ARCHITECTURE:
            continue
        old = layout.values.get(key)
        old_type = gguf.GGUFValueType(struct.unpack("<I", old[:4])[0]) if old is not None else None
        if old_type is not None and old_type != gguf.GGUFValueType.ARRAY:
            vtype = old_type
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            vtype = gguf.GGUFValueType.UINT32
        else:
            vtype = gguf.GGUFValueType.get_type(value)
        entries.append(_packed_text(key) + packer._pack_val(value, vtype, add_vtype=True))
    alignment = layout.alignment
    kept = [t for t in layout.tensors if not any(part in t[0] for part in drop_tensors)]
    infos: list[bytes] = []
    offset = 0
    for name, shape, tensor_type, data in kept:
        offset = -(-offset // alignment) * alignment
        dims = struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
        infos.append(_packed_text(name) + dims + struct.pack("<IQ", tensor_type, offset))
        offset += len(data)
    header = b"GGUF" + struct.pack("<IQQ", layout.version, len(kept), len(entries))
    header += b"".join(entries) + b"".join(infos)
    with target.open("wb") as out:
        out.write(header + bytes(-len(header) % alignment))
        written = 0
        for *_, data in kept:
            padding = -written % alignment
            out.write(bytes(padding) + data)
            written += padding + len(data)
    return target


def _packed_text(text: str) -> bytes:
    """A GGUF string: its UTF-8 length (uint64), then the bytes."""
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data
