"""The declared MobileLLM-R1 -> qwen3 layout is what the converter writes and what llama.cpp's qwen3 reads."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from checkpoints import TINY_UNTIED, build_checkpoint
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.layout import GGUF_ARCHITECTURE, ModelDims, gguf_tensor_shapes, tensor_layout
from mllm_cpu.convert.model_spec import spec_from_config
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list


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
    expected = gguf_tensor_shapes(
        spec.n_layer, spec.n_embd, spec.n_head, spec.n_head_kv, spec.head_dim, spec.n_ff, spec.n_vocab, tied=False
    )
    assert [t.name for t in header.tensors] == list(expected)
    assert {t.name: t.shape for t in header.tensors} == expected
