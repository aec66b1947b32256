"""Quantize a high-precision GGUF with llama.cpp's own quantizer (llama_model_quantize)."""

from __future__ import annotations

import os
from pathlib import Path

import gguf

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error

from .quant_types import QuantLevel


def quantize_with_llama_cpp(
    source: Path,
    target: Path,
    level: QuantLevel,
    embedding_type: gguf.GGMLQuantizationType | None = None,
    threads: int | None = None,
) -> None:
    """Run llama.cpp's quantizer from `source` (F32/F16/BF16 GGUF) to `target`.

    `embedding_type` fixes the type of the token embedding matrix, which with tied
    embeddings is also the output projection.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(level.file_type)
    params.nthread = threads or os.cpu_count() or 1
    if embedding_type is not None:
        params.token_embedding_type = int(embedding_type)
        params.output_tensor_type = int(embedding_type)
    with captured_llama_log() as log:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise InputError(f"llama.cpp could not quantize to {level.label}: {last_error(log)}")
