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

import gguf

from mllm_cpu.convert.gguf_header import GGUFHeader, read_gguf_header
from mllm_cpu.convert.layout import ModelDims, match_layout
from mllm_cpu.convert.repair import is_zero_expert_llama4, refuse_relabelled
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.prompt_format import check_chat_templates

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
        return str(self.header.get(gguf_keys.NAME) or self.path.stem)

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
    refuse_relabelled(header)
    if arch in NOT_LANGUAGE_MODELS:
        raise InputError(f"{path}: a {arch} file (a vision projector or audio decoder), not a language model")
    if arch not in KNOWN_ARCHITECTURES:
        raise InputError(f"{path}: unknown architecture {arch!r}, not one the installed llama.cpp knows")
    if header.get(gguf_keys.TOKENIZER_MODEL) is None or not header.array_lengths.get(gguf_keys.TOKENS):
        raise InputError(f"{path}: the file has no tokenizer (tokenizer.ggml.model and tokens)")
    check_chat_templates(header)
    if not header.tensors:
        raise InputError(f"{path}: the file has no tensors (a vocabulary-only file)")
    dims = ModelDims.from_header(header, complete=False)
    n_ctx_train = header.hyperparameter(gguf_keys.arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, arch))
    model = ModelFile(
        path, header, dims.n_layer, dims.n_embd, dims.n_head, dims.n_head_kv, dims.head_dim, dims.n_vocab, n_ctx_train
    )
    if model.is_mobilellm_r1:
        # every tensor the qwen3 graph reads must exist with the shape of the MobileLLM-R1 layout
        match_layout(header, ModelDims.from_header(header))
    return model
