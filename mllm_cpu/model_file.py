"""Check a GGUF file before llama.cpp sees it, so a bad file is an error line, not an abort.

Any architecture llama.cpp knows is accepted once the file is sound: the header and every
tensor's data lie inside the file (checked by the header reader), a tokenizer is present and
the basic hyperparameters are readable. MobileLLM-R1 files written by this package (they carry
`mllm_cpu.source_architecture`) also get every tensor of the qwen3 layout checked by shape.
The two kinds of MobileLLM-R1 file that llama.cpp cannot run correctly are named with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from mllm_cpu.convert.gguf_header import GGUFHeader, read_gguf_header
from mllm_cpu.convert.layout import gguf_tensor_shapes
from mllm_cpu.convert.repair import RELABELLED_EXPLANATION, is_relabelled_mobilellm, is_zero_expert_llama4
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError

NOT_LANGUAGE_MODELS = frozenset(
    gguf.MODEL_ARCH_NAMES[a] for a in (gguf.MODEL_ARCH.MMPROJ, gguf.MODEL_ARCH.WAVTOKENIZER_DEC)
)
"""Architectures llama.cpp knows that are not text generators (a vision projector, an audio decoder)."""
KNOWN_ARCHITECTURES = frozenset(gguf.MODEL_ARCH_NAMES.values()) - NOT_LANGUAGE_MODELS
"""The model architectures of the gguf-py that matches the installed llama.cpp."""


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file that passed validation, with the facts the runtime needs.

    Head counts are 0 for architectures without attention heads (e.g. mamba, rwkv).
    """

    path: Path
    header: GGUFHeader
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx_train: int

    @property
    def description(self) -> str:
        """E.g. "MobileLLM-R1 (Llama4 dense), run as qwen3", or just the architecture."""
        source = self.header.get(gguf_keys.SOURCE_LABEL)
        return f"{source}, run as {self.header.architecture}" if source else self.header.architecture

    @property
    def name(self) -> str:
        """general.name, or the file name."""
        return str(self.header.get("general.name") or self.path.stem)

    @property
    def is_mobilellm_r1(self) -> bool:
        """True for a MobileLLM-R1 file written (converted or repaired) by this package."""
        return self.header.get(gguf_keys.SOURCE_ARCHITECTURE) is not None


def validate_model_file(path: Path) -> ModelFile:
    """Parse and check a GGUF: readable, an architecture llama.cpp runs, a tokenizer, sound tensors."""
    return validate_header(read_gguf_header(Path(path)))


def validate_header(header: GGUFHeader) -> ModelFile:
    """Check an already parsed GGUF header (see validate_model_file)."""
    path = header.path
    arch = header.architecture
    if is_zero_expert_llama4(header):
        raise InputError(
            f"{path}: a llama4 file with zero experts (llama.cpp's own MobileLLM-R1 conversion), which llama.cpp "
            f"cannot load; repair it with `mllm-cpu repair {path}` (or convert the checkpoint with `mllm-cpu convert`)"
        )
    if is_relabelled_mobilellm(header):
        raise InputError(f"{path}: {RELABELLED_EXPLANATION}")
    if arch in NOT_LANGUAGE_MODELS:
        raise InputError(f"{path}: a {arch} file (a vision projector or audio decoder), not a language model")
    if arch not in KNOWN_ARCHITECTURES:
        raise InputError(f"{path}: unknown architecture {arch!r}, not one the installed llama.cpp knows")
    if header.get(gguf_keys.TOKENIZER_MODEL) is None or not header.array_lengths.get(gguf_keys.TOKENS):
        raise InputError(f"{path}: the file has no tokenizer (tokenizer.ggml.model and tokens)")
    if not header.tensors:
        raise InputError(f"{path}: the file has no tensors (a vocabulary-only file)")
    try:
        n_layer = int(header.metadata[f"{arch}.block_count"])
        n_embd = int(header.metadata[f"{arch}.embedding_length"])
        n_ctx_train = int(header.metadata[f"{arch}.context_length"])
        n_head = _largest(header.get(f"{arch}.attention.head_count", 0))
        n_head_kv = _largest(header.get(f"{arch}.attention.head_count_kv", n_head))
        head_dim = int(header.get(f"{arch}.attention.key_length", n_embd // n_head if n_head else 0))
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: missing or invalid hyperparameter {err}") from None
    n_vocab = header.array_lengths[gguf_keys.TOKENS]
    model = ModelFile(path, header, n_layer, n_embd, n_head, n_head_kv, head_dim, n_vocab, n_ctx_train)
    if model.is_mobilellm_r1:
        _check_mobilellm_tensors(model)
    return model


def _largest(value: Any) -> int:
    """A head count: per-layer lists (some architectures) count by their largest entry."""
    return max((int(v) for v in value), default=0) if isinstance(value, list) else int(value)


def _check_mobilellm_tensors(model: ModelFile) -> None:
    """Every tensor the qwen3 graph reads must exist with the shape (ggml order) of the MobileLLM-R1 layout."""
    header, path = model.header, model.path
    try:
        n_ff = int(header.metadata[f"{header.architecture}.feed_forward_length"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: missing or invalid hyperparameter {err}") from None
    shapes = {t.name: t.shape for t in header.tensors}
    expected = gguf_tensor_shapes(
        model.n_layer,
        model.n_embd,
        model.n_head,
        model.n_head_kv,
        model.head_dim,
        n_ff,
        model.n_vocab,
        tied="output.weight" not in shapes,
    )
    for name, shape in expected.items():
        if name not in shapes:
            raise InputError(f"{path}: tensor {name} is missing")
        if shapes[name] != shape:
            raise InputError(f"{path}: tensor {name} has shape {list(shapes[name])}, expected {list(shape)}")
