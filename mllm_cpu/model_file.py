"""Check a GGUF file before llama.cpp sees it, so a bad file is an error line, not an abort.

Any architecture llama.cpp knows is accepted once the file is sound: the header and every
tensor's data lie inside the file, the block count and the special token ids agree with the
tensors and the vocabulary (checked by the header reader), a tokenizer llama.cpp can use is
present, and the hyperparameters llama.cpp asserts on (block and expert counts, RoPE scaling)
are within its limits and agree with the tensors. MobileLLM files written by this package
(they carry `mllm_cpu.source_architecture`) also get every tensor of their layout (qwen3 for R1,
llama for v1) checked by shape. The kinds of MobileLLM file that llama.cpp cannot run correctly
are named with the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mllm_cpu.convert.gguf_header import EXPERT_TENSOR_KINDS, VOCABULARY_KEYS, GGUFHeader, read_gguf_header
from mllm_cpu.convert.gguf_summary import source_description
from mllm_cpu.convert.layout import LLAMA4_GGUF_ARCHITECTURE, V1_GGUF_ARCHITECTURE, ModelDims, match_layout
from mllm_cpu.core import gguf_keys
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy
from mllm_cpu.file_facts import FileFacts, file_key
from mllm_cpu.identity import ModelIdentity, file_identity
from mllm_cpu.prompt_format import check_chat_templates

NOT_LANGUAGE_MODELS = frozenset(
    gguf.MODEL_ARCH_NAMES[a] for a in (gguf.MODEL_ARCH.MMPROJ, gguf.MODEL_ARCH.WAVTOKENIZER_DEC)
)
"""Architectures llama.cpp knows that are not text generators (a vision projector, an audio decoder)."""
KNOWN_ARCHITECTURES = frozenset(gguf.MODEL_ARCH_NAMES.values()) - NOT_LANGUAGE_MODELS
"""The model architectures of the gguf-py that matches the installed llama.cpp."""
LLAMA_MAX_LAYERS = 512
"""llama.cpp's largest block count (LLAMA_MAX_LAYERS in llama-hparams.h); it aborts on a count of 0 or above."""
LLAMA_MAX_EXPERTS = 1024
"""llama.cpp's largest expert count (LLAMA_MAX_EXPERTS in llama-hparams.h)."""
TOKENIZER_MODELS = frozenset(
    {"llama", "bert", "gpt2", "hybriddna", "whitespace", "t5", "rwkv", "test", "plamo2", "gemma4"}
)
"""The `tokenizer.ggml.model` values whose vocabulary llama.cpp can tokenize with (llama-vocab.cpp).

It also loads "none" and "no_vocab" (no vocabulary), then aborts at the first tokenization."""
NO_TOKENIZER_MODELS = frozenset({"none", "no_vocab"})
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
"""The `{arch}.rope.scaling.type` values llama.cpp knows (LLAMA_ROPE_SCALING_TYPES in llama-model.cpp)."""
_ONE_EXPERT_IS_DENSE = frozenset(
    gguf.MODEL_ARCH_NAMES[a] for a in (gguf.MODEL_ARCH.HUNYUAN_DENSE, gguf.MODEL_ARCH.HUNYUAN_VL)
)
"""Architectures whose expert count llama.cpp reads as 0 when it is 1 (their converters write 1)."""


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
        """E.g. "MobileLLM-R1 (Llama4 dense), run as qwen3" or "MobileLLM v1, run as llama"; else the architecture."""
        return source_description(self.header.metadata, self.header.architecture)

    @cached_property
    def identity(self) -> ModelIdentity:
        """The file's name, size and content fingerprint, with its family (computed once)."""
        return file_identity(self.path, self.description)

    @property
    def name(self) -> str:
        """general.name, or the file name."""
        return str(self.header.get(gguf_keys.NAME) or self.path.stem)

    @property
    def is_mobilellm(self) -> bool:
        """True for a MobileLLM file (R1 or v1) written (converted or repaired) by this package."""
        return self.header.get(gguf_keys.SOURCE_ARCHITECTURE) is not None


HEADER_CACHE = "headers.json"
"""The `FileFacts` that keep where each model file's vocabulary arrays lie (`read_model_header`)."""


def validate_model_file(path: Path) -> ModelFile:
    """Parse and check a GGUF: readable, an architecture llama.cpp runs, a tokenizer, sound tensors."""
    return validate_header(read_model_header(Path(path)))


def read_model_header(path: Path) -> GGUFHeader:
    """A model file's header, its vocabulary jumped over where an earlier read of the unchanged file found it.

    Everything else is read and checked as always; only the 128k-odd strings are not stepped through
    again (about 20 ms here, several times that on a board, at every start of `solve`, `chat`, `serve`)."""
    try:
        key = file_key(path)
    except OSError:
        return read_gguf_header(path)  # which names the problem
    facts = FileFacts(HEADER_CACHE)
    header = read_gguf_header(path, vocabulary_spans=_spans(facts.get(path, key)))
    facts.keep_only({kept for kept in facts.entries if os.path.exists(kept)})
    facts.put(
        path, key, {name: list(header.value_spans[name]) for name in VOCABULARY_KEYS if name in header.value_spans}
    )
    facts.save()
    return header


def _spans(data: Any) -> dict[str, tuple[int, int]] | None:
    """Vocabulary spans read back from the cache; None for anything that is not spans."""
    if not isinstance(data, dict):
        return None
    spans = {}
    for name, span in data.items():
        if not (isinstance(span, list) and len(span) == 2 and all(type(value) is int for value in span)):
            return None
        spans[str(name)] = (span[0], span[1])
    return spans


def validate_header(header: GGUFHeader) -> ModelFile:
    """Check an already parsed GGUF header (see validate_model_file)."""
    path = header.path
    arch = header.architecture
    if arch in (LLAMA4_GGUF_ARCHITECTURE, V1_GGUF_ARCHITECTURE):
        _refuse_unrepaired(header)
    if arch in NOT_LANGUAGE_MODELS:
        raise InputError(f"{path}: a {arch} file (a vision projector or audio decoder), not a language model")
    if arch not in KNOWN_ARCHITECTURES:
        raise InputError(f"{path}: unknown architecture {arch!r}, not one the installed llama.cpp knows")
    _check_tokenizer(header)
    check_chat_templates(header)
    if not header.tensors:
        raise InputError(f"{path}: the file has no tensors (a vocabulary-only file)")
    dims = ModelDims.from_header(header, complete=False)
    _check_hyperparameters(header, dims.n_layer)
    n_ctx_train = header.hyperparameter(gguf_keys.arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, arch))
    model = ModelFile(
        path, header, dims.n_layer, dims.n_embd, dims.n_head, dims.n_head_kv, dims.head_dim, dims.n_vocab, n_ctx_train
    )
    if model.is_mobilellm:
        # every tensor the graph reads must exist with the shape of the family's layout (R1: qwen3, v1: llama)
        match_layout(header, ModelDims.from_header(header))
    return model


def _refuse_unrepaired(header: GGUFHeader) -> None:
    """InputError for a llama4 file that needs `mllm-cpu repair`, or a relabelled `llama` file."""
    from mllm_cpu.convert.repair import llama4_expert_count, refuse_relabelled  # numpy: only for these two labels

    path = header.path
    repair_hint = f"repair it with `mllm-cpu repair {path}` (or convert the checkpoint with `mllm-cpu convert`)"
    llama4_experts = llama4_expert_count(header)
    if llama4_experts == 0:
        raise InputError(
            f"{path}: a llama4 file with zero experts (llama.cpp's own MobileLLM-R1 conversion), which llama.cpp "
            f"cannot load; {repair_hint}"
        )
    if llama4_experts == 1:
        raise InputError(
            f"{path}: a llama4 file with one expert and no expert tensors (a mislabelled MobileLLM-R1 conversion), "
            f"on which llama.cpp aborts; {repair_hint}"
        )
    refuse_relabelled(header)


def _check_tokenizer(header: GGUFHeader) -> None:
    """InputError unless the file has a vocabulary and a tokenizer llama.cpp can tokenize with."""
    path, model = header.path, header.get(gguf_keys.TOKENIZER_MODEL)
    if model is None or not header.array_lengths.get(gguf_keys.TOKENS):
        raise InputError(f"{path}: the file has no tokenizer (tokenizer.ggml.model and tokens)")
    if model in NO_TOKENIZER_MODELS:
        raise InputError(f"{path}: the file has no tokenizer ({gguf_keys.TOKENIZER_MODEL} is {model!r})")
    if model not in TOKENIZER_MODELS:
        raise InputError(
            f"{path}: {gguf_keys.TOKENIZER_MODEL} is {model!r}, not a tokenizer llama.cpp knows "
            f"({', '.join(sorted(TOKENIZER_MODELS))})"
        )


def _check_hyperparameters(header: GGUFHeader, n_layer: int) -> None:
    """InputError for a block count, expert count or RoPE scaling that llama.cpp asserts on."""
    path, arch = header.path, header.architecture

    def key(template: str) -> str:
        return gguf_keys.arch_key(template, arch)

    if not 1 <= n_layer <= LLAMA_MAX_LAYERS:
        raise InputError(
            f"{path}: {key(gguf.Keys.LLM.BLOCK_COUNT)} is {n_layer}; llama.cpp runs 1 to {LLAMA_MAX_LAYERS} blocks"
        )
    nextn = header.hyperparameter(key(gguf.Keys.LLM.NEXTN_PREDICT_LAYERS), 0)
    if not 0 <= nextn <= n_layer:
        raise InputError(f"{path}: {key(gguf.Keys.LLM.NEXTN_PREDICT_LAYERS)} is {nextn}, not 0 to the {n_layer} blocks")
    _check_experts(header)
    scaling = header.get(key(gguf.Keys.Rope.SCALING_TYPE))
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise InputError(
            f"{path}: {key(gguf.Keys.Rope.SCALING_TYPE)} is {scaling!r}, not one llama.cpp knows "
            f"({', '.join(ROPE_SCALING_TYPES)})"
        )


def _check_experts(header: GGUFHeader) -> None:
    """InputError for expert counts llama.cpp asserts on, or that the expert tensors do not bear out."""
    path, arch = header.path, header.architecture
    count_key, used_key, groups_key, groups_used_key = (
        gguf_keys.arch_key(template, arch)
        for template in (
            gguf.Keys.LLM.EXPERT_COUNT,
            gguf.Keys.LLM.EXPERT_USED_COUNT,
            gguf.Keys.LLM.EXPERT_GROUP_COUNT,
            gguf.Keys.LLM.EXPERT_GROUP_USED_COUNT,
        )
    )
    count = header.hyperparameter(count_key, 0)
    if arch in _ONE_EXPERT_IS_DENSE and count == 1:
        count = 0
    used = header.hyperparameter(used_key, 0, per_layer=True)
    groups = header.hyperparameter(groups_key, 0)
    groups_used = header.hyperparameter(groups_used_key, 0)
    tensors = header.expert_tensors()
    problem = None
    if count and not _has_experts(arch):
        problem = f"{count_key} is {count}, but {arch} has no experts (llama.cpp's {arch} graph is dense)"
    elif not 0 <= count <= LLAMA_MAX_EXPERTS:
        problem = f"{count_key} is {count}; llama.cpp allows 0 to {LLAMA_MAX_EXPERTS} experts"
    elif count and not tensors:
        problem = f"{count_key} is {count}, but the file holds no expert tensors"
    elif tensors and not count:
        problem = f"the file holds expert tensors ({tensors[0].name}) but {count_key} is 0 or missing"
    elif mismatched := [t for t in tensors if t.shape[-1] != count]:
        problem = f"tensor {mismatched[0].name} holds {mismatched[0].shape[-1]} experts, but {count_key} is {count}"
    elif count and not 0 < used <= count:
        problem = f"{used_key} is {used}; with {count} experts llama.cpp needs 1 to {count}"
    elif not count and used:
        problem = f"{used_key} is {used}, but the model has no experts"
    elif (count and groups >= count) or (not count and groups) or groups < 0:
        problem = f"{groups_key} is {groups} with {count} experts"
    elif groups > 1 and (count % groups or not 0 < groups_used < groups):
        problem = f"{groups_key} is {groups} and {groups_used_key} {groups_used}, with {count} experts"
    if problem is not None:
        raise InputError(f"{path}: {problem}")


def _has_experts(arch: str) -> bool:
    """True when llama.cpp's graph for `arch` may have expert layers (gguf-py lists expert tensors for it)."""
    kinds = next((tensors for a, tensors in gguf.MODEL_TENSORS.items() if gguf.MODEL_ARCH_NAMES[a] == arch), [])
    return any(kind in EXPERT_TENSOR_KINDS for kind in kinds)
