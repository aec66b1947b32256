"""Board presets and the memory fit check: weights + KV cache + compute buffers vs a budget.

KV cache bytes follow llama.cpp: it rounds the context up to a multiple of 256 cells and
stores K and V for every layer, KV head and head dimension, F16 (2 bytes) by default:
2 * n_layer * cells * n_head_kv * head_dim * bytes per element.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import GIB, MIB
from mllm_cpu.hardware import available_memory_bytes, physical_cores, total_memory_bytes

CONTEXT_PADDING = 256
F16_BYTES = 2


@dataclass(frozen=True)
class Board:
    """A machine to plan for: threads to run with and the memory a model may use."""

    key: str
    description: str
    threads: int
    memory_bytes: int
    budget_bytes: int


BOARDS: dict[str, Board] = {
    board.key: board
    for board in (
        Board(
            "rpi4",
            "Raspberry Pi 4 Model B, 4 GB variant (4x Cortex-A72 1.8 GHz); 512 MiB left to firmware and a Lite OS",
            4,
            4 * GIB,
            4 * GIB - 512 * MIB,
        ),
        Board(
            "rpi5",
            "Raspberry Pi 5, 8 GB (4x Cortex-A76 2.4 GHz); 512 MiB left to firmware and a Lite OS",
            4,
            8 * GIB,
            8 * GIB - 512 * MIB,
        ),
        Board(
            "pi-zero-2",
            "Raspberry Pi Zero 2 W, 512 MB (4x Cortex-A53 1 GHz); 128 MiB left to the GPU split, kernel and a Lite OS",
            4,
            512 * MIB,
            384 * MIB,
        ),
    )
}
BOARD_NAMES = (*BOARDS, "laptop")


def this_machine() -> Board:
    """The `laptop` preset: this machine's physical cores, budget = memory available now."""
    return Board(
        "laptop",
        f"this machine ({platform.machine()}, {physical_cores()} cores), budget = memory available now",
        physical_cores(),
        total_memory_bytes(),
        available_memory_bytes(),
    )


def parse_board(name: str) -> Board:
    """A preset by name: rpi4, rpi5, pi-zero-2 or laptop."""
    key = name.strip().lower()
    if key == "laptop":
        return this_machine()
    if key not in BOARDS:
        raise InputError(f"unknown board {name}; choose from: {', '.join(BOARD_NAMES)}")
    return BOARDS[key]


def padded_context(n_ctx: int) -> int:
    """The KV cells llama.cpp allocates for a context of n_ctx tokens (a multiple of 256)."""
    return -(-n_ctx // CONTEXT_PADDING) * CONTEXT_PADDING


def kv_cache_bytes(n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int, bytes_per_element: int = F16_BYTES) -> int:
    """K and V for every layer and cell: 2 * n_layer * cells * n_head_kv * head_dim * bytes."""
    return 2 * n_layer * padded_context(n_ctx) * n_head_kv * head_dim * bytes_per_element


@dataclass(frozen=True)
class FitCheck:
    """Whether a model runs within a board's memory budget at a context length."""

    board: str
    budget_bytes: int
    n_ctx: int
    kv_cells: int
    weight_bytes: int
    kv_bytes: int
    compute_bytes: int
    max_context: int
    sequences: int = 1
    """Sequences decoded together, each with a KV cache of `n_ctx` tokens (`bench --parallel`)."""

    @property
    def total_bytes(self) -> int:
        """Weights + KV cache + compute and output buffers."""
        return self.weight_bytes + self.kv_bytes + self.compute_bytes

    @property
    def fits(self) -> bool:
        """True when the total is within the budget."""
        return self.total_bytes <= self.budget_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived totals."""
        return {**asdict(self), "total_bytes": self.total_bytes, "fits": self.fits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitCheck:
        """The inverse of `to_dict`."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def fit_check(
    board: Board,
    n_layer: int,
    n_head_kv: int,
    head_dim: int,
    n_ctx_train: int,
    weight_bytes: int,
    compute_bytes: int,
    n_ctx: int,
    sequences: int = 1,
) -> FitCheck:
    """Check a context length (of each of `sequences` sequences) against the budget and find the largest
    context that fits.

    `weight_bytes` is the tensor data llama.cpp maps or repacks; `compute_bytes` the compute
    and output buffers llama.cpp reserves (with flash attention they hardly grow with the
    context, so the same value is used for the largest context). The largest context is a
    multiple of 256 up to the model's training context; 0 if not even 256 tokens fit.
    """
    if n_ctx < 1:
        raise InputError(f"context length must be at least 1, got {n_ctx}")
    per_cell = kv_cache_bytes(n_layer, n_head_kv, head_dim, CONTEXT_PADDING) // CONTEXT_PADDING
    room = board.budget_bytes - weight_bytes - compute_bytes
    largest = max(0, room // sequences // per_cell // CONTEXT_PADDING * CONTEXT_PADDING) if room > 0 else 0
    return FitCheck(
        board=board.key,
        budget_bytes=board.budget_bytes,
        n_ctx=n_ctx,
        kv_cells=padded_context(n_ctx),
        weight_bytes=weight_bytes,
        kv_bytes=sequences * kv_cache_bytes(n_layer, n_head_kv, head_dim, n_ctx),
        compute_bytes=compute_bytes,
        max_context=min(largest, n_ctx_train),
        sequences=sequences,
    )
