"""The declared MobileLLM-R1 -> qwen3 layout is what the converter writes and what llama.cpp's qwen3 reads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gguf
import pytest

from helpers.checkpoints import TINY_UNTIED, build_checkpoint
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.layout import GGUF_ARCHITECTURE, ModelDims, match_layout, tensor_layout
from mllm_cpu.convert.model_spec import spec_from_config
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.errors import InputError


@pytest.mark.parametrize("tied", [True, False])
def test_every_gguf_name_is_a_qwen3_tensor_of_gguf_py(tied: bool) -> None:
    qwen3 = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3]
    assert qwen3 == GGUF_ARCHITECTURE
    known = {
        gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"
        for kind in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.QWEN3]
        for bid in range(3)
    }
    layout = tensor_layout(ModelDims(3, 64, 4, 2, 16, 96, 100), tied=tied)
    assert {t.gguf_name for t in layout} <= known
    assert ("output.weight" in {t.gguf_name for t in layout}) is not tied
    assert len({t.gguf_name for t in layout}) == len(layout)


def test_only_q_and_k_are_permuted_and_only_their_norms_are_added() -> None:
    layout = tensor_layout(ModelDims(1, 64, 4, 2, 16, 96, 100), tied=True)
    permuted = {t.gguf_name: t.permuted_heads for t in layout if t.permuted_heads}
    assert permuted == {"blk.0.attn_q.weight": 4, "blk.0.attn_k.weight": 2}
    added = {t.gguf_name: t.shape for t in layout if t.unit_norm}
    assert added == {"blk.0.attn_q_norm.weight": (16,), "blk.0.attn_k_norm.weight": (16,)}


def test_an_untied_conversion_has_exactly_the_layouts_tensors(tmp_path: Path) -> None:
    folder = build_checkpoint(tmp_path / "MobileLLM-R1-untied", TINY_UNTIED)
    spec = spec_from_config(json.loads((folder / "config.json").read_text()))
    path = convert_checkpoint(folder, parse_quant_list("f32"), tmp_path / "out")[0].summary.path
    header = read_gguf_header(path)
    expected = {t.gguf_name: t.ggml_shape for t in tensor_layout(spec, tied=False)}
    assert [t.name for t in header.tensors] == list(expected)
    assert {t.name: t.shape for t in header.tensors} == expected
    dims = ModelDims.from_header(header)
    assert dims == ModelDims(
        spec.n_layer, spec.n_embd, spec.n_head, spec.n_head_kv, spec.head_dim, spec.n_ff, spec.n_vocab
    )
    assert [(mapped.gguf_name, entry) for mapped, entry in match_layout(header, dims)] == [
        (t.name, t) for t in header.tensors
    ]


def test_a_file_that_differs_from_the_layout_is_named(tiny_ggufs: dict[str, Path]) -> None:
    header = read_gguf_header(tiny_ggufs["f32"])
    dims = ModelDims.from_header(header)
    with pytest.raises(InputError, match=f"tensor blk.{dims.n_layer}.attn_norm.weight is missing"):
        match_layout(header, replace(dims, n_layer=dims.n_layer + 1))
    with pytest.raises(
        InputError,
        match=rf"tensor blk.0.ffn_gate.weight has shape \[{dims.n_embd}, {dims.n_ff}\], "
        rf"expected \[{dims.n_embd}, {2 * dims.n_ff}\]",
    ):
        match_layout(header, replace(dims, n_ff=2 * dims.n_ff))


def test_header_dimensions_as_llama_cpp_reads_them(tmp_path: Path) -> None:
    """Per-layer head counts count by their largest entry; a file of another architecture may lack
    heads and the feed-forward width, a file of the layout may not."""
    path = tmp_path / "per-layer.gguf"
    writer = gguf.GGUFWriter(path, "openelm")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count([2, 4])
    writer.add_token_list(["a", "b", "c"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    header = read_gguf_header(path)
    assert ModelDims.from_header(header, complete=False) == ModelDims(2, 64, 4, 4, 16, 0, 3)
    with pytest.raises(InputError, match="missing or invalid hyperparameter 'openelm.feed_forward_length'"):
        ModelDims.from_header(header)
