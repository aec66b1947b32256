"""The MobileLLM-R1 -> qwen3 tensor layout, declared once (see docs/DESIGN.md, "The mapping").

Each row says which GGUF tensor (name from gguf-py's `TENSOR_NAMES`) comes from which
Hugging Face tensor, its shape as a function of the model's dimensions, whether its rows
are permuted inside each head (interleaved -> half-split RoPE), and whether it is a q/k
norm of ones that the converter adds (llama4's weightless norm). The converter's planner,
the synthetic checkpoint writer, the GGUF validator and the tests all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy

from .gguf_header import GGUFHeader, TensorEntry

_T = gguf.MODEL_TENSOR

GGUF_ARCHITECTURE = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3]
"""The llama.cpp graph MobileLLM-R1 runs as."""
V1_GGUF_ARCHITECTURE = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
"""The llama.cpp graph MobileLLM v1 (MobileLLMForCausalLM, a Llama with shared embeddings) runs as."""
LLAMA4_GGUF_ARCHITECTURE = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA4]
"""What llama.cpp's own converter labels MobileLLM-R1 (a file `mllm-cpu repair` turns into qwen3)."""


class Dims(Protocol):
    """The dimensions a layout depends on (a ModelSpec or a ModelDims)."""

    @property
    def n_layer(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def n_head(self) -> int: ...
    @property
    def n_head_kv(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def n_ff(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...


@dataclass(frozen=True)
class ModelDims:
    """Plain model dimensions, for callers that have no ModelSpec (e.g. a GGUF header)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int

    @classmethod
    def from_header(cls, header: GGUFHeader, *, complete: bool = True) -> ModelDims:
        """The dimensions a GGUF header gives (its architecture's keys and the vocabulary's size).

        Head counts and the feed-forward width may be per-layer lists (counted by their largest
        entry). `complete` requires them (a file of this layout); otherwise an absent one is 0, as
        llama.cpp allows for other architectures (mamba has no heads). InputError names a
        missing or invalid key.
        """
        arch, absent = header.architecture, None if complete else 0

        def value(template: str, default: int | None = None, per_layer: bool = False) -> int:
            return header.hyperparameter(gguf_keys.arch_key(template, arch), default, per_layer=per_layer)

        n_layer = value(gguf.Keys.LLM.BLOCK_COUNT)
        n_embd = value(gguf.Keys.LLM.EMBEDDING_LENGTH)
        n_head = value(gguf.Keys.Attention.HEAD_COUNT, absent, per_layer=True)
        n_head_kv = value(gguf.Keys.Attention.HEAD_COUNT_KV, n_head, per_layer=True)
        head_dim = value(gguf.Keys.Attention.KEY_LENGTH, n_embd // n_head if n_head else 0)
        n_ff = value(gguf.Keys.LLM.FEED_FORWARD_LENGTH, absent, per_layer=True)
        if gguf_keys.TOKENS not in header.array_lengths:
            raise InputError(f"{header.path}: missing or invalid hyperparameter '{gguf_keys.TOKENS}'")
        return cls(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, header.array_lengths[gguf_keys.TOKENS])


@dataclass(frozen=True)
class _Row:
    kind: gguf.MODEL_TENSOR
    hf_name: str | None  # None: a unit q/k norm the converter adds
    shape: Callable[[Dims], tuple[int, ...]]  # (rows, cols) as in the HF checkpoint
    permuted_heads: Callable[[Dims], int] | None = None  # heads whose rows are permuted


def _q_rows(d: Dims) -> int:
    return d.n_head * d.head_dim


def _kv_rows(d: Dims) -> int:
    return d.n_head_kv * d.head_dim


_BEFORE_BLOCKS = (_Row(_T.TOKEN_EMBD, "model.embed_tokens.weight", lambda d: (d.n_vocab, d.n_embd)),)
_BLOCK = (
    _Row(_T.ATTN_NORM, "model.layers.{bid}.input_layernorm.weight", lambda d: (d.n_embd,)),
    _Row(_T.ATTN_Q, "model.layers.{bid}.self_attn.q_proj.weight", lambda d: (_q_rows(d), d.n_embd), lambda d: d.n_head),
    _Row(
        _T.ATTN_K,
        "model.layers.{bid}.self_attn.k_proj.weight",
        lambda d: (_kv_rows(d), d.n_embd),
        lambda d: d.n_head_kv,
    ),
    _Row(_T.ATTN_Q_NORM, None, lambda d: (d.head_dim,)),
    _Row(_T.ATTN_K_NORM, None, lambda d: (d.head_dim,)),
    _Row(_T.ATTN_V, "model.layers.{bid}.self_attn.v_proj.weight", lambda d: (_kv_rows(d), d.n_embd)),
    _Row(_T.ATTN_OUT, "model.layers.{bid}.self_attn.o_proj.weight", lambda d: (d.n_embd, _q_rows(d))),
    _Row(_T.FFN_NORM, "model.layers.{bid}.post_attention_layernorm.weight", lambda d: (d.n_embd,)),
    _Row(_T.FFN_GATE, "model.layers.{bid}.feed_forward.gate_proj.weight", lambda d: (d.n_ff, d.n_embd)),
    _Row(_T.FFN_UP, "model.layers.{bid}.feed_forward.up_proj.weight", lambda d: (d.n_ff, d.n_embd)),
    _Row(_T.FFN_DOWN, "model.layers.{bid}.feed_forward.down_proj.weight", lambda d: (d.n_embd, d.n_ff)),
)
_V1_BLOCK = (
    _Row(_T.ATTN_NORM, "model.layers.{bid}.input_layernorm.weight", lambda d: (d.n_embd,)),
    _Row(_T.ATTN_Q, "model.layers.{bid}.self_attn.q_proj.weight", lambda d: (_q_rows(d), d.n_embd), lambda d: d.n_head),
    _Row(
        _T.ATTN_K,
        "model.layers.{bid}.self_attn.k_proj.weight",
        lambda d: (_kv_rows(d), d.n_embd),
        lambda d: d.n_head_kv,
    ),
    _Row(_T.ATTN_V, "model.layers.{bid}.self_attn.v_proj.weight", lambda d: (_kv_rows(d), d.n_embd)),
    _Row(_T.ATTN_OUT, "model.layers.{bid}.self_attn.o_proj.weight", lambda d: (d.n_embd, _q_rows(d))),
    _Row(_T.FFN_NORM, "model.layers.{bid}.post_attention_layernorm.weight", lambda d: (d.n_embd,)),
    _Row(_T.FFN_GATE, "model.layers.{bid}.mlp.gate_proj.weight", lambda d: (d.n_ff, d.n_embd)),
    _Row(_T.FFN_UP, "model.layers.{bid}.mlp.up_proj.weight", lambda d: (d.n_ff, d.n_embd)),
    _Row(_T.FFN_DOWN, "model.layers.{bid}.mlp.down_proj.weight", lambda d: (d.n_embd, d.n_ff)),
)
"""MobileLLM v1's block as llama.cpp's `llama` graph reads it: q/k rows permuted from HF's half-split
RoPE to llama's interleaved form, no q/k norm, the MLP under `mlp.`."""
_AFTER_BLOCKS = (_Row(_T.OUTPUT_NORM, "model.norm.weight", lambda d: (d.n_embd,)),)
TIED_OUTPUT_HF_NAME = "lm_head.weight"
"""The HF output matrix, absent from the GGUF when the embedding is tied."""
_UNTIED_OUTPUT = _Row(_T.OUTPUT, TIED_OUTPUT_HF_NAME, lambda d: (d.n_vocab, d.n_embd))


@dataclass(frozen=True)
class MappedTensor:
    """One GGUF tensor of the mapping, with its source."""

    gguf_name: str
    hf_name: str | None
    shape: tuple[int, ...]
    """(rows, cols) as stored in the checkpoint and as numpy writes it."""
    permuted_heads: int
    """Number of heads whose rows are reordered interleaved -> half-split; 0 for none."""

    @property
    def unit_norm(self) -> bool:
        """True for the q/k norm weights of ones the converter adds (no HF source)."""
        return self.hf_name is None

    @property
    def ggml_shape(self) -> tuple[int, ...]:
        """The shape as a GGUF header lists it (ggml order: fastest dimension first)."""
        return tuple(reversed(self.shape))


def _mapped(row: _Row, dims: Dims, bid: int | None = None) -> MappedTensor:
    fill = {} if bid is None else {"bid": bid}
    return MappedTensor(
        gguf_name=gguf.TENSOR_NAMES[row.kind].format(**fill) + ".weight",
        hf_name=row.hf_name.format(**fill) if row.hf_name else None,
        shape=row.shape(dims),
        permuted_heads=row.permuted_heads(dims) if row.permuted_heads else 0,
    )


def _mapped_block(row: _Row, dims: Dims, bid: int, source_bid: int) -> MappedTensor:
    mapped = _mapped(row, dims, bid)
    if row.hf_name is None or source_bid == bid:
        return mapped
    return MappedTensor(mapped.gguf_name, row.hf_name.format(bid=source_bid), mapped.shape, mapped.permuted_heads)


def tensor_layout(
    dims: Dims, *, tied: bool, architecture: str = GGUF_ARCHITECTURE, repeat: int = 1
) -> list[MappedTensor]:
    """Every tensor of the converted file, in file order.

    `architecture` picks the row set (qwen3: MobileLLM-R1; llama: MobileLLM v1). With `repeat` 2 (v1's
    layer sharing) GGUF block N reads checkpoint block N // 2, so each shared block runs twice.
    """
    block = _V1_BLOCK if architecture == V1_GGUF_ARCHITECTURE else _BLOCK
    layout = [_mapped(row, dims) for row in _BEFORE_BLOCKS]
    for bid in range(dims.n_layer):
        layout += [_mapped_block(row, dims, bid, bid // repeat) for row in block]
    layout += [_mapped(row, dims) for row in _AFTER_BLOCKS]
    if not tied:
        layout.append(_mapped(_UNTIED_OUTPUT, dims))
    return layout


def match_layout(
    header: GGUFHeader, dims: Dims, *, with_norms: bool = True
) -> list[tuple[MappedTensor, TensorEntry | None]]:
    """Each tensor of the layout (tied when the file has no output matrix) with the file's tensor of that name.

    InputError for a tensor that is missing or has another shape. `with_norms=False` (a llama4 file)
    expects no unit q/k norms: they are paired with None.
    """
    stored = {t.name: t for t in header.tensors}
    tied = _mapped(_UNTIED_OUTPUT, dims).gguf_name not in stored
    layout = tensor_layout(dims, tied=tied, architecture=header.architecture)
    matched: list[tuple[MappedTensor, TensorEntry | None]] = []
    for mapped in layout:
        if mapped.unit_norm and not with_norms:
            matched.append((mapped, None))
            continue
        entry = stored.get(mapped.gguf_name)
        if entry is None:
            raise InputError(f"{header.path}: tensor {mapped.gguf_name} is missing")
        if entry.shape != mapped.ggml_shape:
            raise InputError(
                f"{header.path}: tensor {entry.name} has shape {list(entry.shape)}, expected {list(mapped.ggml_shape)}"
            )
        matched.append((mapped, entry))
    return matched


def hf_tensor_shapes(
    dims: Dims, *, tied: bool, architecture: str = GGUF_ARCHITECTURE, repeat: int = 1
) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of the HF checkpoint (R1 or v1), in checkpoint order, each once."""
    layout = tensor_layout(dims, tied=tied, architecture=architecture, repeat=repeat)
    return {t.hf_name: t.shape for t in layout if t.hf_name is not None}
