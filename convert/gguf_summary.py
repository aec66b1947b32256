"""Read a GGUF file back: size, bits per weight and the real per-tensor type mix."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core import gguf_keys
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy

from .gguf_header import GGUFHeader, read_gguf_header


@dataclass
class GGUFSummary:
    """What a GGUF file holds, for tables and `info`."""

    path: Path
    file_bytes: int
    tensor_bytes: int
    parameters: int
    architecture: str
    file_type: str
    type_mix: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        """The model family and the graph it runs as (see `source_description`)."""
        return source_description(self.metadata, self.architecture)

    @property
    def bits_per_weight(self) -> float:
        """Tensor data bits per parameter, as llama.cpp reports it."""
        return 8 * self.tensor_bytes / self.parameters if self.parameters else 0.0

    def type_mix_text(self) -> str:
        """E.g. "q4_K 61%, q8_0 38%, f32 1%" by share of parameters."""
        total = sum(self.type_mix.values()) or 1
        parts = sorted(self.type_mix.items(), key=lambda item: -item[1])
        return ", ".join(
            f"{name} {100 * count / total:.0f}%" if count * 100 >= total else f"{name} <1%" for name, count in parts
        )


def source_description(metadata: dict[str, Any], architecture: str) -> str:
    """E.g. "MobileLLM v1, run as llama" for a file this package wrote (it names the family), else the architecture."""
    source = metadata.get(gguf_keys.SOURCE_LABEL)
    return f"{source}, run as {architecture}" if source else architecture


def read_summary(path: Path) -> GGUFSummary:
    """Summarize a GGUF file; a malformed file raises InputError."""
    return summarize_header(read_gguf_header(path))


def summarize_header(header: GGUFHeader) -> GGUFSummary:
    """Summarize an already parsed GGUF header."""
    mix: Counter[str] = Counter()
    for tensor in header.tensors:
        mix[type_name(tensor.type)] += tensor.n_elements
    return GGUFSummary(
        path=header.path,
        file_bytes=header.file_size,
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        parameters=sum(mix.values()),
        architecture=header.architecture,
        file_type=_file_type_name(header.get(gguf.Keys.General.FILE_TYPE)),
        type_mix=dict(mix),
        metadata=header.metadata,
    )


def type_name(tensor_type: gguf.GGMLQuantizationType) -> str:
    """A ggml type as llama.cpp prints it: f32, q8_0, q4_K, iq4_nl."""
    return tensor_type.name.lower().replace("_k", "_K")


def _file_type_name(value: Any) -> str:
    try:
        return gguf.LlamaFileType(int(value)).name.replace("MOSTLY_", "").replace("ALL_", "")
    except (TypeError, ValueError):
        return "unknown"
