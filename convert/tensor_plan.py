"""Which GGUF tensor comes from which HF tensor, and how: the MobileLLM-R1 -> qwen3 mapping.

See docs/DESIGN.md ("The mapping"): llama4's weightless q/k RMS norm after interleaved RoPE equals
qwen3's q/k norm (weight ones) before NeoX RoPE once the rows of q_proj and k_proj are
permuted inside each head from (0, 1, ..., d-1) to (0, 2, 4, ..., 1, 3, 5, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mllm_cpu.core.errors import InputError

from .layout import TIED_OUTPUT_HF_NAME, MappedTensor, tensor_layout
from .model_spec import ModelSpec
from .safetensors_reader import CheckpointTensors

_LAYER_NAME = re.compile(r"model\.layers\.(\d{1,9})\.")


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor of the output file: its GGUF name, shape (rows, cols) and source.

    `read_rows(start, stop)` returns those rows as stored (BF16 as uint16 bits).
    """

    name: str
    shape: tuple[int, ...]
    source: str | None
    read_rows: Callable[[int, int], np.ndarray]
    stored_dtype: str

    @property
    def rows(self) -> int:
        """Rows of the tensor as written (1 for a 1-D tensor)."""
        return self.shape[0] if self.is_matrix else 1

    @property
    def is_matrix(self) -> bool:
        """True for 2-D weights (quantizable); norms are 1-D and stay F32."""
        return len(self.shape) == 2


def interleaved_to_half_split(head_dim: int) -> np.ndarray:
    """Row order that turns interleaved (complex-pair) RoPE into NeoX (half-split) RoPE."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def half_split_to_interleaved(head_dim: int) -> np.ndarray:
    """Row order that turns HF Llama's half-split RoPE into llama.cpp's `llama` (interleaved) RoPE.

    The inverse of `interleaved_to_half_split`; llama.cpp's convert_hf_to_gguf.py does the same for
    LlamaForCausalLM (`LlamaModel.permute`: reshape(n_head, 2, d/2, ...).swapaxes(1, 2)).
    """
    return np.arange(head_dim).reshape(2, head_dim // 2).T.ravel()


def plan_tensors(spec: ModelSpec, tensors: CheckpointTensors) -> list[PlannedTensor]:
    """The ordered tensor list of the GGUF file, with shapes checked against the spec."""
    _check_layer_count(spec, tensors)
    layout = tensor_layout(
        spec, tied=spec.tied_embeddings, architecture=spec.gguf_architecture, repeat=spec.layer_repeat
    )
    _reject_unexpected(spec, tensors, {t.hf_name for t in layout if t.hf_name is not None})
    return [
        _ones(mapped.gguf_name, mapped.shape[0])
        if mapped.hf_name is None
        else _from_checkpoint(tensors, mapped, mapped.hf_name, spec.head_dim, spec.is_v1)
        for mapped in layout
    ]


def _check_layer_count(spec: ModelSpec, tensors: CheckpointTensors) -> None:
    """config.json's layer count against the layers the checkpoint holds, before a tensor list is built for it."""
    stored = {int(match[1]) for name in tensors.tensors if (match := _LAYER_NAME.match(name))}
    blocks = spec.n_layer // spec.layer_repeat
    if blocks > len(stored):
        raise InputError(
            f"{tensors.folder}: config.json gives num_hidden_layers {blocks}, the checkpoint holds {len(stored)}"
        )


def _from_checkpoint(
    tensors: CheckpointTensors, mapped: MappedTensor, source: str, head_dim: int, v1: bool
) -> PlannedTensor:
    name, shape, permute_heads = mapped.gguf_name, mapped.shape, mapped.permuted_heads
    if source not in tensors:
        raise InputError(f"{tensors.folder}: tensor {source} is missing from the checkpoint")
    if tensors.shape(source) != shape:
        raise InputError(
            f"{tensors.folder}: tensor {source} has shape {list(tensors.shape(source))}, "
            f"config.json implies {list(shape)}"
        )

    if not permute_heads:
        return PlannedTensor(
            name, shape, source, lambda start, stop: tensors.read_rows(source, start, stop), tensors.dtype(source)
        )
    order = half_split_to_interleaved(head_dim) if v1 else interleaved_to_half_split(head_dim)

    def read_permuted(start: int, stop: int) -> np.ndarray:
        whole = tensors.read_rows(source, 0, shape[0])
        return whole.reshape(permute_heads, head_dim, -1)[:, order, :].reshape(shape)[start:stop]

    return PlannedTensor(name, shape, source, read_permuted, tensors.dtype(source))


def _ones(name: str, size: int) -> PlannedTensor:
    return PlannedTensor(name, (size,), None, lambda start, stop: np.ones(size, dtype=np.float32), "F32")


def _reject_unexpected(spec: ModelSpec, tensors: CheckpointTensors, used: set[str]) -> None:
    ignorable = {TIED_OUTPUT_HF_NAME} if spec.tied_embeddings else set()
    blocks = f"{spec.n_layer // spec.layer_repeat} blocks" if spec.layer_repeat > 1 else f"{spec.n_layer}-layer"
    extra = sorted(n for n in tensors.tensors if n not in used and n not in ignorable and "rotary_emb" not in n)
    if extra:
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise InputError(
            f"{tensors.folder}: unexpected tensor(s) {', '.join(extra[:3])}{more}; "
            f"config.json describes a {blocks} dense model"
        )
