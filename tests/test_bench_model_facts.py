"""Synthetic models have MobileLLM-R1's exact shapes; the fit check's KV bytes are llama.cpp's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mllm_cpu.bench.boards import BOARDS, Board, fit_check, kv_cache_bytes, padded_context, parse_board
from mllm_cpu.bench.llama_session import ContextSettings, loaded_model, open_context
from mllm_cpu.bench.memory import measure_memory
from mllm_cpu.bench.roofline import bytes_per_token
from mllm_cpu.convert.gguf_header import read_gguf_header
from mllm_cpu.convert.layout import ModelDims, hf_tensor_shapes, tensor_layout
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.convert.synthetic import synthetic_spec, write_synthetic_checkpoint
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import MIB
from mllm_cpu.hardware import physical_cores
from mllm_cpu.model_file import validate_model_file

TABLE = {  # the published model cards: layers, heads, KV heads, dim, FFN, exact parameters
    "140m": (15, 9, 3, 576, 2048, 140_250_432),
    "360m": (15, 16, 4, 1024, 4096, 359_433_088),
    "950m": (22, 24, 6, 1536, 6144, 949_688_576),
}
VOCAB, HEAD_DIM = 128_256, 64


@pytest.fixture(scope="module")
def gguf_140m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("synthetic140m")
    folder = write_synthetic_checkpoint("140m", parent)
    return convert_checkpoint(folder, parse_quant_list("q8_0"), parent)[0].summary.path


def test_synthetic_140m_gguf_has_the_exact_shapes_and_parameters(gguf_140m: Path) -> None:
    n_layer, n_head, n_head_kv, dim, ffn, parameters = TABLE["140m"]
    header = read_gguf_header(gguf_140m)
    dims = ModelDims(n_layer, dim, n_head, n_head_kv, HEAD_DIM, ffn, VOCAB)
    expected = {t.gguf_name: t.ggml_shape for t in tensor_layout(dims, tied=True)}
    assert {t.name: t.shape for t in header.tensors} == expected
    assert sum(t.n_elements for t in header.tensors) == parameters
    with loaded_model(gguf_140m) as model:
        assert model.n_params == parameters
        assert model.tensor_bytes == sum(t.n_bytes for t in header.tensors) == bytes_per_token(header)
        assert model.n_vocab == VOCAB


@pytest.mark.parametrize("size", ["140m", "360m", "950m"])
def test_synthetic_specs_match_the_table(size: str) -> None:
    n_layer, n_head, n_head_kv, dim, ffn, parameters = TABLE[size]
    spec = synthetic_spec(size)
    assert (spec.n_layer, spec.n_head, spec.n_head_kv, spec.n_embd, spec.n_ff, spec.head_dim, spec.n_vocab) == (
        n_layer,
        n_head,
        n_head_kv,
        dim,
        ffn,
        HEAD_DIM,
        VOCAB,
    )
    hf_parameters = sum(int(np.prod(shape)) for shape in hf_tensor_shapes(spec, tied=True).values())
    q_k_norm_weights = 2 * HEAD_DIM * n_layer
    assert hf_parameters + q_k_norm_weights == spec.parameter_count == parameters


@pytest.mark.parametrize("n_ctx", [300, 4096])
def test_kv_bytes_equal_what_llama_cpp_allocates(gguf_140m: Path, n_ctx: int) -> None:
    """llama.cpp logs the KV cells exactly and the KV buffer size in MiB to two decimals."""
    model_file = validate_model_file(gguf_140m)
    expected = kv_cache_bytes(model_file.n_layer, model_file.n_head_kv, model_file.head_dim, n_ctx)
    assert expected == 2 * 15 * padded_context(n_ctx) * 3 * 64 * 2
    with loaded_model(gguf_140m) as model, open_context(model, ContextSettings(n_ctx, 1)) as context:
        assert context.n_ctx == context.buffers.kv_cells == padded_context(n_ctx)
        assert f"{context.buffers.total_mib('KV'):.2f}" == f"{expected / MIB:.2f}"


def test_memory_subprocess_reports_llama_cpps_buffers(synthetic_tiny_gguf: Path) -> None:
    report = measure_memory(synthetic_tiny_gguf, 1000, 1, 512)
    model_file = validate_model_file(synthetic_tiny_gguf)
    expected = kv_cache_bytes(model_file.n_layer, model_file.n_head_kv, model_file.head_dim, 1000)
    assert report.n_ctx == report.kv_cells == 1024
    assert abs(report.logged_bytes("KV") - expected) <= 0.005 * MIB
    assert report.logged_bytes("compute") > 0 and report.logged_bytes("model") > 0
    assert report.peak_rss_bytes > report.baseline_rss_bytes > 0


def test_fit_check_and_largest_context() -> None:
    board = Board("test", "a test board", 4, 1 << 30, 200 * MIB)
    fit = fit_check(
        board,
        n_layer=15,
        n_head_kv=3,
        head_dim=64,
        n_ctx_train=32768,
        weight_bytes=100 * MIB,
        compute_bytes=50 * MIB,
        n_ctx=4096,
    )
    per_cell = 2 * 15 * 3 * 64 * 2
    assert fit.kv_bytes == 4096 * per_cell
    assert fit.total_bytes == 150 * MIB + 4096 * per_cell and fit.fits
    assert fit.max_context == (50 * MIB // per_cell) // 256 * 256
    roomy = fit_check(Board("big", "", 4, 1 << 40, 1 << 40), 15, 3, 64, 32768, 100 * MIB, 50 * MIB, 4096)
    assert roomy.max_context == 32768
    tight = fit_check(board, 15, 3, 64, 32768, 190 * MIB, 50 * MIB, 256)
    assert not tight.fits and tight.max_context == 0


def test_boards() -> None:
    assert parse_board("RPi5").threads == 4
    assert BOARDS["pi-zero-2"].memory_bytes == 512 * MIB
    assert all(board.budget_bytes < board.memory_bytes for board in BOARDS.values())
    assert parse_board("laptop").threads == physical_cores()
    with pytest.raises(InputError, match="unknown board"):
        parse_board("rpi3")
