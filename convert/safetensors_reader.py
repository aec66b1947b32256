"""Reading safetensors checkpoints, single file or sharded, a block of rows at a time."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mllm_cpu.core.errors import InputError

# safetensors dtype -> numpy dtype used to view the raw bytes. BF16 is viewed as uint16.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
_HEADER_LIMIT = 100 * 1024 * 1024


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
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{index}: not a valid safetensors index ({err})") from None
        files = sorted({folder / shard for shard in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{folder}: shard(s) named in the index are missing: {', '.join(missing)}")
        return files
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    raise InputError(f"{folder}: no weights found (expected model.safetensors or model.safetensors.index.json)")


def _read_header(file: Path) -> list[StoredTensor]:
    size = file.stat().st_size
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InputError(f"{file}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_HEADER_LIMIT, size - 8):
            raise InputError(f"{file}: corrupt or truncated safetensors header")
        try:
            header = json.loads(handle.read(header_len))
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{file}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise InputError(f"{file}: corrupt safetensors header")
    data_start = 8 + header_len
    tensors = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{file}: corrupt safetensors entry for {name}") from None
        if dtype not in _STORAGE_DTYPES:
            raise InputError(f"{file}: tensor {name} has unsupported dtype {dtype} (need F32, F16 or BF16)")
        expected = int(np.prod(shape, dtype=np.int64)) * _STORAGE_DTYPES[dtype].itemsize
        if end - begin != expected:
            raise InputError(f"{file}: tensor {name} has {end - begin} bytes, its shape needs {expected}")
        if data_start + end > size:
            raise InputError(f"{file}: truncated: tensor {name} ends at byte {data_start + end}, the file has {size}")
        tensors.append(StoredTensor(name, dtype, shape, file, data_start + begin, data_start + end))
    return tensors
