"""Reading safetensors checkpoints, single file or sharded, a block of rows at a time."""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import open_regular, size_text
from mllm_cpu.core.values import MIB

from .checkpoint_files import (
    WEIGHT_INDEX,
    integer,
    parse_json,
    plain,
    read_json_object,
    shown,
    wrong_type,
)

# safetensors dtype -> numpy dtype used to view the raw bytes. BF16 is viewed as uint16.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
HEADER_LIMIT = 16 * MIB
"""The largest safetensors header read: about 130 bytes per tensor (the 950M's 201 take 27 KiB)."""


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class CheckpointTensors:
    """All tensors of a checkpoint folder, read on demand, a block of rows at a time.

    Rows are read with plain file reads into fresh buffers rather than through a memory
    map, so the process holds only the block being converted, not the pages of every
    tensor it has touched.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tensors: dict[str, StoredTensor] = {}
        for file in _weight_files(folder):
            for tensor in _read_header(file):
                if tensor.name in self.tensors:
                    raise InputError(
                        f"{folder}: tensor {tensor.name} is in both {self.tensors[tensor.name].file.name} "
                        f"and {file.name}"
                    )
                self.tensors[tensor.name] = tensor

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of a tensor."""
        return self.tensors[name].shape

    def dtype(self, name: str) -> str:
        """The stored dtype of a tensor: F32, F16 or BF16."""
        return self.tensors[name].dtype

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor as stored (BF16 as uint16 bits); 1-D tensors have one row."""
        info = self.tensors[name]
        dtype = _STORAGE_DTYPES[info.dtype]
        row_shape = info.shape[1:] if len(info.shape) > 1 else info.shape
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        buffer = np.empty((stop - start, *row_shape), dtype=dtype)
        with info.file.open("rb") as handle:
            handle.seek(info.start + start * row_bytes)
            if handle.readinto(buffer.data.cast("B")) != buffer.nbytes:
                raise InputError(f"{info.file}: truncated while reading {name}")
        return buffer if len(info.shape) > 1 else buffer.reshape(info.shape)

    def storage_dtype(self) -> str:
        """The widest floating type the weights are stored in: F32, F16 or BF16."""
        dtypes = {t.dtype for t in self.tensors.values()}
        for candidate in ("F32", "BF16", "F16"):
            if candidate in dtypes:
                return candidate
        raise InputError(f"{self.folder}: no floating-point weights found")


def to_f32(stored_dtype: str, raw: np.ndarray) -> np.ndarray:
    """Convert raw stored values (as returned by CheckpointTensors.read_rows) to float32."""
    if stored_dtype == "BF16":
        return bf16_to_f32(raw)
    return raw.astype(np.float32, copy=False)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHT_INDEX
    single = folder / "model.safetensors"
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(_shard_name(v) for v in weight_map.values()):
            raise wrong_type(index, "weight_map", "an object of tensor names to shard file names", weight_map)
        files = sorted({folder / shard for shard in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise InputError(f"{folder}: shard(s) named in the index are missing: {', '.join(missing)}")
        return files
    if single.exists():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    raise InputError(f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)")


def _shard_name(value: object) -> bool:
    """A shard file name of the index: a plain name in the checkpoint folder."""
    return isinstance(value, str) and value.isprintable() and "/" not in value and value not in ("", ".", "..")


def _read_header(file: Path) -> list[StoredTensor]:
    """The tensors of one safetensors file, each entry checked: dtype, shape, and data inside the file, no overlaps."""
    with open_regular(file) as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InputError(f"{file}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise InputError(f"{file}: corrupt or truncated safetensors header")
        if header_len > HEADER_LIMIT:
            raise InputError(f"{file}: safetensors header of {header_len} bytes, larger than {size_text(HEADER_LIMIT)}")
        raw = handle.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{file}: corrupt safetensors header (not UTF-8)") from None
    header = parse_json(text, f"{file}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise InputError(f"{file}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    tensors = [_entry(file, name, meta, data_start, size) for name, meta in header.items() if name != "__metadata__"]
    by_offset = sorted(tensors, key=lambda t: (t.start, t.end))
    for before, after in zip(by_offset, by_offset[1:], strict=False):
        if after.start < before.end:
            raise InputError(
                f"{file}: tensors {before.name} and {after.name} overlap "
                f"(data_offsets {[before.start - data_start, before.end - data_start]} "
                f"and {[after.start - data_start, after.end - data_start]})"
            )
    return tensors


def _entry(file: Path, name: str, meta: object, data_start: int, size: int) -> StoredTensor:
    """One header entry as a StoredTensor; InputError naming the file, the tensor and the field."""
    where = f"{file}: tensor {plain(name)}"
    if not name.isprintable():
        raise InputError(f"{file}: tensor name {shown(name)} has control characters")
    if not isinstance(meta, dict):
        raise wrong_type(where, "its entry", "an object", meta)
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str):
        raise wrong_type(where, "dtype", "a type name such as BF16", dtype)
    if dtype not in _STORAGE_DTYPES:
        raise InputError(f"{where} has unsupported dtype {plain(dtype)} (need F32, F16 or BF16)")
    if not isinstance(shape, list) or not all(integer(n) and n >= 0 for n in shape):
        raise wrong_type(where, "shape", "a list of non-negative integers", shape)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(integer(n) and n >= 0 for n in offsets)):
        raise wrong_type(where, "data_offsets", "two non-negative integers", offsets)
    begin, end = offsets
    expected = math.prod(shape) * _STORAGE_DTYPES[dtype].itemsize
    if end - begin != expected:
        raise InputError(f"{where} has {end - begin} bytes, its shape needs {expected}")
    if data_start + end > size:
        raise InputError(
            f"{file}: truncated: tensor {plain(name)} ends at byte {data_start + end}, the file has {size}"
        )
    return StoredTensor(name, dtype, tuple(shape), file, data_start + begin, data_start + end)
