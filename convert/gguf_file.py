"""Write the qwen3-layout GGUF file from a checkpoint, streaming one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import gguf
import numpy as np

from mllm_cpu.core import gguf_keys
from mllm_cpu.core.origin import Origin

from .model_spec import ModelSpec
from .safetensors_reader import to_f32
from .sentencepiece_vocab import SentencePieceSpec
from .tensor_plan import PlannedTensor
from .tokenizer_spec import TokenizerSpec

CHUNK_ELEMENTS = 1 << 24

_T = gguf.GGMLQuantizationType


def output_type(tensor: PlannedTensor, matrix_type: _T) -> _T:
    """The GGUF type a tensor is stored as when the file's matrices are `matrix_type`."""
    if not tensor.is_matrix:
        return _T.F32
    block = gguf.GGML_QUANT_SIZES[matrix_type][0]
    return matrix_type if tensor.shape[-1] % block == 0 else _T.F16


class _StreamedTensor:
    """An ndarray stand-in that GGUFWriter.write_tensor_data writes chunk by chunk.

    The writer only asks a tensor for `nbytes` and `tofile`, so a whole converted tensor
    (the 950M's embedding is 0.8 GB in F32) never has to sit in memory at once.
    """

    def __init__(self, tensor: PlannedTensor, qtype: _T) -> None:
        self.tensor = tensor
        self.qtype = qtype
        self.nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(tensor.shape, qtype)))

    def tofile(self, handle: BinaryIO) -> None:
        step = max(1, CHUNK_ELEMENTS // (self.tensor.shape[-1] if self.tensor.is_matrix else 1))
        for start in range(0, self.tensor.rows, step):
            raw = self.tensor.read_rows(start, min(start + step, self.tensor.rows))
            handle.write(self._convert(raw).tobytes())

    def _convert(self, raw: np.ndarray) -> np.ndarray:
        if self.qtype == _T.BF16 and self.tensor.stored_dtype == "BF16":
            return np.ascontiguousarray(raw)
        values = to_f32(self.tensor.stored_dtype, raw)
        if self.qtype == _T.F32:
            return values
        if self.qtype == _T.F16:
            return values.astype(np.float16)
        return gguf.quants.quantize(np.ascontiguousarray(values), self.qtype)


def write_gguf(
    path: Path,
    spec: ModelSpec,
    tokenizer: TokenizerSpec | SentencePieceSpec,
    general: gguf.Metadata,
    tensors: list[PlannedTensor],
    file_type: gguf.LlamaFileType,
    matrix_type: _T,
    on_tensor: Callable[[str], None] = lambda name: None,
    origin: Origin | None = None,
) -> None:
    """Write a complete GGUF file at `path` (the caller makes the write atomic)."""
    writer = gguf.GGUFWriter(path, spec.gguf_architecture)
    _add_metadata(writer, spec, tokenizer, general, file_type, origin)
    streamed = []
    for tensor in tensors:
        qtype = output_type(tensor, matrix_type)
        stream = _StreamedTensor(tensor, qtype)
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), stream.nbytes, raw_dtype=qtype)
        streamed.append(stream)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for stream in streamed:
        writer.write_tensor_data(stream)  # type: ignore[arg-type]
        on_tensor(stream.tensor.name)
    writer.close()


def _add_metadata(
    writer: gguf.GGUFWriter,
    spec: ModelSpec,
    tokenizer: TokenizerSpec | SentencePieceSpec,
    general: gguf.Metadata,
    file_type: gguf.LlamaFileType,
    origin: Origin | None,
) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    general.set_gguf_meta_model(writer)
    writer.add_string(gguf_keys.SOURCE_ARCHITECTURE, spec.architecture)
    writer.add_string(gguf_keys.SOURCE_LABEL, spec.source_label)
    if spec.layer_repeat > 1:
        writer.add_uint32(gguf_keys.LAYER_REPEAT, spec.layer_repeat)
    if origin is not None:
        origin.add_to(writer)

    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    writer.add_vocab_size(spec.n_vocab)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer.add_to(writer)
