"""Repair the MobileLLM-R1 GGUFs that llama.cpp's own converter writes (see docs/DESIGN.md, "Repair").

Those files say `llama4` with zero experts, which llama.cpp refuses to load (and the same
file with `expert_count` set to 1 by hand, which llama.cpp aborts on). Their tensors
are the checkpoint's own under the names and shapes of our qwen3 layout, with the q/k rows
of each head in interleaved-RoPE order and no q/k norm. A repair reorders those rows on the
raw tensor bytes (a row is a whole number of quant blocks in every ggml type, so F16, Q8_0
and K-quants move byte-exactly), adds the unit q/k norms, renames `llama4.*` to `qwen3.*`
(dropping the expert/MoE/sliding-window keys) and copies every other key verbatim. It
streams: at most one permuted q/k matrix or one chunk of another tensor is in memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy

from .atomic_file import atomic_output
from .gguf_header import GGUFHeader, TensorEntry, read_gguf_header
from .layout import (
    GGUF_ARCHITECTURE,
    LLAMA4_GGUF_ARCHITECTURE,
    V1_GGUF_ARCHITECTURE,
    MappedTensor,
    ModelDims,
    match_layout,
)
from .model_spec import SOURCE_ARCHITECTURE_LABEL, SUPPORTED_HF_CLASSES
from .pipeline import ConvertProgress, SilentProgress
from .synthetic import SYNTHETIC_SPECS
from .tensor_plan import interleaved_to_half_split

BROKEN_ARCHITECTURE = LLAMA4_GGUF_ARCHITECTURE
_RELABELLED_ARCHITECTURE = V1_GGUF_ARCHITECTURE  # MobileLLM-R1 relabelled `llama` by hand, or v1 layer-share
_DROPPED_KEY_WORDS = ("expert", "moe", "sliding_window")
_COPY_CHUNK = 1 << 24
_V = gguf.GGUFValueType

_RELABELLED_EXPLANATION = (
    "a `llama` file with MobileLLM-R1's shapes: a relabelled llama4 conversion, which loads but computes "
    "without the q/k norm (garbage output) and whose q/k row order is unknown; repair the original llama4 "
    "file with `mllm-cpu repair`, or convert the checkpoint with `mllm-cpu convert`"
)


def llama4_expert_count(header: GGUFHeader) -> int | None:
    """For a dense llama4 file (a MobileLLM-R1 conversion), its `expert_count`: 0, or 1; None for any other file.

    0 (or no key) is llama.cpp's own conversion, which llama.cpp refuses; 1 with no expert tensors is that
    conversion relabelled by hand to pass the refusal, on which llama.cpp aborts
    (`GGML_ASSERT(f_attn_temp_scale != 0.0f)`, a dense llama4 graph without temperature tuning). Both
    hold the same dense tensors and are repaired alike.
    """
    if header.architecture != BROKEN_ARCHITECTURE:
        return None
    count = header.get(gguf_keys.arch_key(gguf.Keys.LLM.EXPERT_COUNT, BROKEN_ARCHITECTURE))
    if not count:
        return 0
    if count == 1 and not header.expert_tensors():
        return 1
    return None


def needs_repair(path: Path) -> bool:
    """True for a dense llama4 MobileLLM-R1 file (`repair_gguf` turns it into qwen3)."""
    return llama4_expert_count(read_gguf_header(Path(path))) is not None


def refuse_relabelled(header: GGUFHeader) -> None:
    """InputError for a `llama` file that cannot be repaired or run: MobileLLM-R1 relabelled, or a MobileLLM v1
    layer-share model with each shared block once."""
    if header.architecture != _RELABELLED_ARCHITECTURE:
        return
    if _is_relabelled_mobilellm(header):
        raise InputError(f"{header.path}: {_RELABELLED_EXPLANATION}")
    blocks = _unshared_layer_share_blocks(header)
    if blocks is not None:
        raise InputError(
            f"{header.path}: named layer-share, but holds MobileLLM v1's {blocks} blocks once each; the layer-share "
            f"model runs every block twice ({2 * blocks} layers), so this file computes another function and is not "
            "repaired; convert the checkpoint with `mllm-cpu convert`, which writes each block twice"
        )


def _names(header: GGUFHeader) -> str:
    """The file's names (general.name, basename, finetune and the file name), lower case, words joined by -."""
    keys = (gguf.Keys.General.NAME, gguf.Keys.General.BASENAME, gguf.Keys.General.FINETUNE)
    text = " ".join([*(str(header.get(key) or "") for key in keys), header.path.name])
    return text.lower().replace(" ", "-").replace("_", "-")


def _shape(header: GGUFHeader) -> tuple[int, ...] | None:
    """(blocks, width, FFN width, heads, KV heads) of a file, None when its header does not give them."""
    try:
        dims = ModelDims.from_header(header)
    except InputError:
        return None
    return dims.n_layer, dims.n_embd, dims.n_ff, dims.n_head, dims.n_head_kv


def _is_relabelled_mobilellm(header: GGUFHeader) -> bool:
    """True for a `llama` file that is really MobileLLM-R1 (by name or by its exact shapes)."""
    if "mobilellm-r1" in _names(header):
        return True
    shape = _shape(header)
    return any(
        shape == (s.n_layer, s.n_embd, s.n_ff, s.n_head, s.n_head_kv) for s in SYNTHETIC_SPECS.values() if not s.is_v1
    )


def _unshared_layer_share_blocks(header: GGUFHeader) -> int | None:
    """For a `llama` file named layer-share that holds a MobileLLM v1 size's blocks once each (a conversion
    that dropped the sharing), that block count; None for any other file (ours hold each block twice)."""
    if "layer-share" not in _names(header):
        return None
    shape = _shape(header)
    for spec in SYNTHETIC_SPECS.values():
        blocks = spec.n_layer // spec.layer_repeat
        if spec.is_v1 and shape == (blocks, spec.n_embd, spec.n_ff, spec.n_head, spec.n_head_kv):
            return blocks
    return None


@dataclass(frozen=True)
class _OutputTensor:
    mapped: MappedTensor
    source: TensorEntry | None  # None: a unit norm written here
    type: gguf.GGMLQuantizationType
    n_bytes: int


def repair_gguf(
    source: Path,
    target: Path,
    *,
    progress: ConvertProgress | None = None,
    origin: str = "repaired",
    origin_source: str | None = None,
) -> None:
    """Write the qwen3-layout repair of a dense llama4 MobileLLM-R1 GGUF (zero or one expert) to `target`.

    The output is written under a temporary name, checked, and renamed; `origin` and
    `origin_source` (default: the source file name) are recorded with the source file name.
    """
    source, target = Path(source), Path(target)
    header = read_gguf_header(source)
    refuse_relabelled(header)
    if llama4_expert_count(header) is None:
        raise InputError(
            f"{source}: architecture {header.architecture}, not a dense llama4 file (zero or one expert); "
            "nothing to repair"
        )
    dims = ModelDims.from_header(header)
    tensors = _plan(header, dims)
    alignment = int(header.get(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
    progress = progress or SilentProgress()
    progress.file_started(target.name, len(tensors))
    provenance = {
        gguf_keys.SOURCE_ARCHITECTURE: SUPPORTED_HF_CLASSES[0],
        gguf_keys.SOURCE_LABEL: SOURCE_ARCHITECTURE_LABEL,
        gguf_keys.ORIGIN: origin,
        gguf_keys.ORIGIN_SOURCE: origin_source or source.name,
        gguf_keys.REPAIRED_FROM: source.name,
    }
    with atomic_output(target) as temporary, source.open("rb") as reader, temporary.open("wb") as writer:
        _write_header(writer, reader, header, tensors, provenance, alignment)
        for tensor in tensors:
            _pad(writer, alignment)
            _write_data(writer, reader, header, tensor, dims.head_dim)
            progress.tensor_written(tensor.mapped.gguf_name)
        writer.close()
        _check_output(temporary, tensors)
    progress.file_finished(target.name)


def _plan(header: GGUFHeader, dims: ModelDims) -> list[_OutputTensor]:
    """The output tensors in qwen3 file order; every source tensor must be used with its expected shape."""
    planned = [
        _OutputTensor(mapped, None, gguf.GGMLQuantizationType.F32, 4 * mapped.shape[0])
        if entry is None
        else _OutputTensor(mapped, entry, entry.type, entry.n_bytes)
        for mapped, entry in match_layout(header, dims, with_norms=False)
    ]
    extra = sorted({t.name for t in header.tensors} - {t.mapped.gguf_name for t in planned})
    if extra:
        raise InputError(f"{header.path}: unexpected tensor {extra[0]} for a dense MobileLLM-R1 file")
    return planned


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _string_value(text: str) -> bytes:
    return struct.pack("<I", _V.STRING) + _string(text)


def _renamed_key(key: str) -> str | None:
    """The key in the repaired file, or None to drop it."""
    prefix = f"{BROKEN_ARCHITECTURE}."
    if not key.startswith(prefix):
        return key
    if any(word in key for word in _DROPPED_KEY_WORDS):
        return None
    return f"{GGUF_ARCHITECTURE}.{key.removeprefix(prefix)}"


def _write_header(
    writer: BinaryIO,
    reader: BinaryIO,
    header: GGUFHeader,
    tensors: list[_OutputTensor],
    provenance: dict[str, str],
    alignment: int,
) -> None:
    """Magic, counts, the metadata (copied verbatim where kept) and the tensor table."""
    pairs: list[tuple[str, bytes]] = []
    for key, (start, end) in header.value_spans.items():
        new_key = _renamed_key(key)
        if new_key is None or new_key in provenance:
            continue
        if key == gguf.Keys.General.ARCHITECTURE:
            pairs.append((key, _string_value(GGUF_ARCHITECTURE)))
            continue
        reader.seek(start)
        pairs.append((new_key, reader.read(end - start)))
    pairs += [(key, _string_value(value)) for key, value in provenance.items()]

    writer.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(pairs)))
    for key, value in pairs:
        writer.write(_string(key) + value)
    offset = 0
    for tensor in tensors:
        shape = tensor.mapped.ggml_shape
        writer.write(_string(tensor.mapped.gguf_name) + struct.pack("<I", len(shape)))
        writer.write(struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", tensor.type, offset))
        offset = _aligned(offset + tensor.n_bytes, alignment)


def _aligned(position: int, alignment: int) -> int:
    return -(-position // alignment) * alignment


def _pad(writer: BinaryIO, alignment: int) -> None:
    position = writer.tell()
    writer.write(b"\0" * (_aligned(position, alignment) - position))


def _write_data(writer: BinaryIO, reader: BinaryIO, header: GGUFHeader, tensor: _OutputTensor, head_dim: int) -> None:
    """Copy one tensor's bytes, q/k rows reordered per head; a unit norm is written as ones."""
    if tensor.source is None:
        writer.write(np.ones(tensor.mapped.shape, dtype=np.float32).tobytes())
        return
    reader.seek(header.data_start + tensor.source.offset)
    if tensor.mapped.permuted_heads:
        rows = tensor.mapped.shape[0]
        raw = np.frombuffer(reader.read(tensor.n_bytes), dtype=np.uint8)
        by_head = raw.reshape(tensor.mapped.permuted_heads, head_dim, tensor.n_bytes // rows)
        writer.write(by_head[:, interleaved_to_half_split(head_dim), :].tobytes())
        return
    remaining = tensor.n_bytes
    while remaining:
        chunk = reader.read(min(remaining, _COPY_CHUNK))
        if not chunk:
            raise InputError(f"{header.path}: truncated in tensor {tensor.source.name}")
        writer.write(chunk)
        remaining -= len(chunk)


def _check_output(path: Path, tensors: list[_OutputTensor]) -> None:
    """Read the written file back: qwen3, every tensor where and as large as planned."""
    written = read_gguf_header(path)
    got = {t.name: (t.shape, t.type, t.n_bytes) for t in written.tensors}
    expected = {t.mapped.gguf_name: (t.mapped.ggml_shape, t.type, t.n_bytes) for t in tensors}
    if written.architecture != GGUF_ARCHITECTURE or got != expected:
        raise InputError(f"{path}: the repaired file does not read back as written")
