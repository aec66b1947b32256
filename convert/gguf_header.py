"""A fast, defensive reader of a GGUF file's header: metadata, tensor table, bounds.

llama.cpp can abort the whole process on a malformed file, so everything it would
trust (magic, version, value types, tensor types, shapes and data ranges) is checked
here first, and so are the counts and ids in the metadata that must agree with what the
file holds (the number of blocks, the special token ids), before anything is sized by
them. Large string arrays (the vocabulary) are skipped unless asked for; numeric arrays
longer than `MAX_LISTED_ITEMS` stay `array.array`s (as large as their bytes in the file). It needs
neither numpy nor gguf-py's reader, so a command that reads headers starts without them.
"""

from __future__ import annotations

import array
import itertools
import math
import mmap
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy

GGUF_MAGIC = b"GGUF"
MAX_LISTED_ITEMS = 1 << 20
"""Numeric arrays up to this length become Python lists (per-layer values, token types and
scores of a vocabulary); a longer one stays a numpy array, so memory is bounded by the file."""
SPECIAL_TOKEN_KEYS = tuple(key for name, key in vars(gguf.Keys.Tokenizer).items() if name.endswith("_ID"))
"""Every `tokenizer.ggml.*_token_id` key (bos, eos, eot, eom, unk, sep, pad, mask, fim ...)."""
_BLOCK_INDEX = re.compile(r"(?:^|\.)blk\.(\d+)\.")
"""The block number N in a tensor name `blk.N.*` (also `enc.blk.N.*`, `dec.blk.N.*`)."""
_ARCHITECTURES = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
EXPERT_TENSOR_KINDS = (
    gguf.MODEL_TENSOR.FFN_GATE_EXP,
    gguf.MODEL_TENSOR.FFN_UP_EXP,
    gguf.MODEL_TENSOR.FFN_DOWN_EXP,
    gguf.MODEL_TENSOR.FFN_GATE_UP_EXP,
)
"""The tensors that hold one matrix per expert; their last ggml dimension counts the experts."""
_EXPERT_TENSOR = re.compile(
    "|".join(re.escape(gguf.TENSOR_NAMES[kind]).replace(r"\{bid\}", r"\d+") + r"\." for kind in EXPERT_TENSOR_KINDS)
)
_SCALARS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}
_U64 = struct.Struct("<Q")
_ARRAY_CODES = {"?": "B"}
"""`array` type codes where struct's differ (a large bool array is read as bytes)."""
VOCABULARY_KEYS = (gguf.Keys.Tokenizer.LIST, gguf.Keys.Tokenizer.MERGES)
"""The large string arrays a header read steps over unless `keep_vocabulary`."""


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table."""

    name: str
    shape: tuple[int, ...]
    type: gguf.GGMLQuantizationType
    offset: int
    n_elements: int
    n_bytes: int


@dataclass
class GGUFHeader:
    """The parsed header of a GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorEntry]
    array_lengths: dict[str, int] = field(default_factory=dict)
    file_size: int = 0
    value_spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Byte range [start, end) of each key's type tag and value in the file (for verbatim copies)."""
    data_start: int = 0
    """File offset of the tensor data section (tensor offsets count from here)."""

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value, or `default`."""
        return self.metadata.get(key, default)

    def hyperparameter(self, key: str, default: int | None = None, *, per_layer: bool = False) -> int:
        """An integer value; InputError when it is missing (and there is no default) or not a number.

        `per_layer`: the value may be a list with one entry per layer (llama.cpp allows that for
        head counts and the feed-forward width); it counts by its largest entry.
        """
        try:
            value = self.metadata[key] if default is None else self.metadata.get(key, default)
            if per_layer and isinstance(value, list):
                return max((int(v) for v in value), default=0)
            return int(value)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{self.path}: missing or invalid hyperparameter {err}") from None

    @property
    def architecture(self) -> str:
        """general.architecture, or "unknown"."""
        return str(self.metadata.get(gguf.Keys.General.ARCHITECTURE, "unknown"))

    def expert_tensors(self) -> list[TensorEntry]:
        """The tensors of mixture-of-experts layers (blk.N.ffn_{gate,up,down}_exps ...)."""
        return [t for t in self.tensors if _EXPERT_TENSOR.match(t.name)]


class _Cursor:
    def __init__(self, buffer: Any, path: Path) -> None:
        self.buffer, self.pos, self.path = buffer, 0, path

    def take(self, size: int) -> int:
        start = self.pos
        if size < 0 or start + size > len(self.buffer):
            raise self.truncated(start + size)
        self.pos += size
        return start

    def truncated(self, needed: int) -> InputError:
        return InputError(f"{self.path}: truncated GGUF header (needs byte {needed}, file has {len(self.buffer)})")

    def scalar(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.buffer, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        start = self.take(length)
        return bytes(self.buffer[start : start + length]).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, known_end: int | None = None) -> None:
        """Step over `count` strings (a vocabulary): `take` in local variables, as it runs 100k+ times.

        With `known_end` (where an earlier read of the unchanged file found them to end), jump there."""
        buffer, pos, length_at = self.buffer, self.pos, _U64.unpack_from
        if known_end is not None and pos + 8 * count <= known_end <= len(buffer):
            self.pos = known_end
            return
        try:
            for _ in itertools.repeat(None, count):
                pos += 8 + length_at(buffer, pos)[0]
        except struct.error:  # a length read past the end: the file is shorter than its strings
            raise self.truncated(pos + 8) from None
        if pos > len(buffer):
            raise self.truncated(pos)
        self.pos = pos


def read_gguf_header(
    path: Path, keep_vocabulary: bool = False, vocabulary_spans: dict[str, tuple[int, int]] | None = None
) -> GGUFHeader:
    """Parse and bounds-check a GGUF file's header. Raises InputError on anything malformed.

    `vocabulary_spans`: the `value_spans` of the VOCABULARY_KEYS from an earlier read of the same,
    unchanged file; a vocabulary starting where its span does is jumped over, not stepped through."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size < 24:
        raise InputError(f"{path}: not a GGUF file (only {size} bytes)")
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        if buffer[:4] != GGUF_MAGIC:
            raise InputError(f"{path}: not a GGUF file (bad magic {bytes(buffer[:4])!r})")
        cursor = _Cursor(buffer, path)
        cursor.take(4)
        version = cursor.scalar("<I")
        if version not in (2, 3):
            raise InputError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = cursor.scalar("<Q"), cursor.scalar("<Q")
        if n_tensors > size or n_kv > size:
            raise InputError(f"{path}: corrupt GGUF header (counts {n_tensors} tensors, {n_kv} keys)")
        metadata: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        spans: dict[str, tuple[int, int]] = {}
        for _ in range(n_kv):
            key = cursor.string()
            start = cursor.pos
            value_type = _value_type(cursor.scalar("<I"), path, key)
            known = (vocabulary_spans or {}).get(key)
            known_end = known[1] if known is not None and known[0] == start else None
            metadata[key] = _read_value(cursor, value_type, key, keep_vocabulary, lengths, known_end)
            spans[key] = (start, cursor.pos)
        tensors = _read_tensor_table(cursor, n_tensors, path)
        alignment = int(metadata.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise InputError(f"{path}: invalid general.alignment {alignment}")
        data_start = -(-cursor.pos // alignment) * alignment
    for tensor in tensors:
        if tensor.offset % alignment:
            raise InputError(f"{path}: tensor {tensor.name} is not aligned")
        end = data_start + tensor.offset + tensor.n_bytes
        if end > size:
            raise InputError(f"{path}: truncated: tensor {tensor.name} ends at byte {end}, the file has {size}")
    header = GGUFHeader(path, version, metadata, tensors, lengths, size, spans, data_start)
    _check_block_count(header)
    _check_special_tokens(header)
    return header


def _check_block_count(header: GGUFHeader) -> None:
    """InputError unless `{arch}.block_count` blocks are exactly the blocks blk.0 ... the file holds.

    llama.cpp and the layout sizes per-layer tables by the count; a count that the tensors
    do not bear out is refused before anything is built from it. Checked for architectures
    whose tensors are named by block (all of llama.cpp's language models), when the file has
    tensors and the key.
    """
    arch = header.architecture
    key = gguf_keys.arch_key(gguf.Keys.LLM.BLOCK_COUNT, arch)
    if key not in header.metadata or not header.tensors or not _has_block_tensors(arch):
        return
    count = header.hyperparameter(key)
    blocks = max(count, header.hyperparameter(gguf_keys.arch_key(gguf.Keys.LLM.DECODER_BLOCK_COUNT, arch), 0))
    found = sorted({int(match.group(1)) for t in header.tensors if (match := _BLOCK_INDEX.search(t.name))})
    if found == list(range(blocks)):
        return
    if not found:
        held = "no block tensors (blk.N)"
    elif found == list(range(len(found))):
        held = f"the tensors of {len(found)} blocks (blk.0 to blk.{found[-1]})"
    else:
        held = f"block tensors numbered {found[0]} to {found[-1]} with gaps ({len(found)} blocks)"
    raise InputError(f"{header.path}: {key} is {count}, but the file holds {held}")


def _has_block_tensors(arch: str) -> bool:
    """True when gguf-py names `arch`'s tensors by block (blk.{bid}.*)."""
    kind = _ARCHITECTURES.get(arch)
    return kind is not None and any("blk.{bid}" in gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS.get(kind, ()))


def _check_special_tokens(header: GGUFHeader) -> None:
    """InputError for a special token id (bos, eos, pad ...) that is not a token of the vocabulary."""
    n_vocab = header.array_lengths.get(gguf_keys.TOKENS)
    if n_vocab is None:
        return  # no vocabulary: validation refuses the file as having no tokenizer
    for key in SPECIAL_TOKEN_KEYS:
        value = header.metadata.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{header.path}: {key} is a {type(value).__name__}, not a token id")
        if not 0 <= value < n_vocab:
            raise InputError(f"{header.path}: {key} is {value}, outside the vocabulary of {n_vocab} tokens")


def _value_type(raw: int, path: Path, key: str) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(raw)
    except ValueError:
        raise InputError(f"{path}: corrupt GGUF metadata (key {key!r} has unknown type {raw})") from None


def _read_value(
    cursor: _Cursor,
    value_type: gguf.GGUFValueType,
    key: str,
    keep_vocabulary: bool,
    lengths: dict[str, int],
    known_end: int | None = None,
) -> Any:
    if value_type == gguf.GGUFValueType.STRING:
        return cursor.string()
    if value_type != gguf.GGUFValueType.ARRAY:
        return cursor.scalar(_SCALARS[value_type])
    item_type = _value_type(cursor.scalar("<I"), cursor.path, key)
    count = cursor.scalar("<Q")
    item_format = _SCALARS.get(item_type)
    item_bytes = struct.calcsize(item_format) if item_format else 8  # a string or an array starts with 8 bytes
    if count > (len(cursor.buffer) - cursor.pos) // item_bytes:
        raise InputError(
            f"{cursor.path}: corrupt GGUF metadata (key {key!r} claims {count} items, "
            "more than the rest of the file holds)"
        )
    lengths[key] = count
    if item_format is not None:
        start = cursor.take(count * item_bytes)
        if count <= MAX_LISTED_ITEMS:
            return list(struct.unpack_from(f"<{count}{item_format[1]}", cursor.buffer, start))
        values = array.array(_ARRAY_CODES.get(item_format[1], item_format[1]))
        values.frombytes(cursor.buffer[start : start + count * item_bytes])
        if sys.byteorder == "big":
            values.byteswap()
        return values
    if item_type == gguf.GGUFValueType.STRING:
        if key in VOCABULARY_KEYS and not keep_vocabulary:
            cursor.skip_strings(count, known_end)
            return None
        return [cursor.string() for _ in range(count)]
    raise InputError(f"{cursor.path}: nested arrays are not supported (key {key!r})")


def _read_tensor_table(cursor: _Cursor, count: int, path: Path) -> list[TensorEntry]:
    tensors = []
    for _ in range(count):
        name = cursor.string()
        n_dims = cursor.scalar("<I")
        if not 1 <= n_dims <= 4:
            raise InputError(f"{path}: tensor {name} has {n_dims} dimensions")
        shape = tuple(cursor.scalar("<Q") for _ in range(n_dims))
        raw_type = cursor.scalar("<I")
        offset = cursor.scalar("<Q")
        try:
            tensor_type = gguf.GGMLQuantizationType(raw_type)
            block, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
        except (ValueError, KeyError):
            raise InputError(f"{path}: tensor {name} has unknown type {raw_type}") from None
        n_elements = math.prod(shape)  # Python integers: a hostile shape cannot wrap around
        if shape[0] % block:
            raise InputError(f"{path}: tensor {name} row of {shape[0]} is not a multiple of its block {block}")
        tensors.append(TensorEntry(name, shape, tensor_type, offset, n_elements, n_elements // block * type_size))
    return tensors
