"""Converted files, run by real llama.cpp, compute what transformers computes.

Tiny random Llama4ForCausalLM checkpoints (built by transformers) at several shapes and
storage dtypes are converted; llama.cpp's logits are compared with transformers' float32
reference on one prompt of 60+ tokens.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from helpers.checkpoints import (
    TINY,
    TINY_GQA2,
    TINY_MHA,
    TINY_UNTIED,
    TinyShape,
    build_checkpoint,
    reference_greedy,
    reference_logits,
)
from helpers.logits import ERROR_BUDGET, F32_KV, UNIT_ROUNDOFF, assert_clear_top1_kept, llama_logits, prompt_ids
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list

# (preset, stored dtype, shards, config.json layout): GQA ratios 3, 2, 2 and 1; 2, 3 and 5
# layers; tied and untied; the hub's config layout and the one transformers 5 writes.
CASES = {
    "gqa3-f32": (TINY, "float32", 1, "hub"),
    "gqa2-bf16": (TINY_GQA2, "bfloat16", 1, "hub"),
    "untied-5layers-3shards": (TINY_UNTIED, "float32", 3, "hub"),
    "mha-f16-transformers-config": (TINY_MHA, "float16", 1, "transformers"),
}
LEVELS = "f32,f16,bf16,q8_0,q4_k_m,q4_0"


@pytest.fixture(scope="module", params=list(CASES))
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    shape, dtype, shards, config_style = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = build_checkpoint(root / "checkpoint", shape, dtype=dtype, shards=shards, config_style=config_style)
    files = convert_checkpoint(folder, parse_quant_list(LEVELS), root / "gguf")
    return folder, {f.level.name: f.summary.path for f in files}


def test_f32_logits_equal_transformers(converted: tuple[Path, dict[str, Path]]) -> None:
    folder, files = converted
    ids = prompt_ids(folder, 60)
    reference = reference_logits(folder, ids)
    got = llama_logits(files["f32"], ids, **F32_KV)
    assert np.abs(got - reference).max() < 1e-4


@pytest.mark.parametrize("level", ["f16", "bf16", "q8_0"])
def test_reduced_precision_logits_within_derived_tolerance(converted: tuple[Path, dict[str, Path]], level: str) -> None:
    folder, files = converted
    ids = prompt_ids(folder, 60)
    reference = reference_logits(folder, ids)
    got = llama_logits(files[level], ids, **F32_KV)
    tolerance = ERROR_BUDGET * UNIT_ROUNDOFF[level] * np.abs(reference).max()
    assert np.abs(got - reference).max() < tolerance
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("level", ["q4_k_m", "q4_0"])
def test_4bit_files_keep_clear_top1_decisions(converted: tuple[Path, dict[str, Path]], level: str) -> None:
    """4-bit noise on tiny random weights (rms 0.6-1.1 logits) exceeds many top-1 margins, so the
    top-1 token must agree where the reference decides clearly (lead of 2+ logits) and the
    logits must stay correlated (measured r 0.89-0.99; a broken conversion gives r near 0)."""
    folder, files = converted
    ids = prompt_ids(folder, 200)
    reference = reference_logits(folder, ids)
    assert_clear_top1_kept(llama_logits(files[level], ids), reference)


def test_default_f16_kv_cache_stays_close(converted: tuple[Path, dict[str, Path]]) -> None:
    folder, files = converted
    ids = prompt_ids(folder, 60)
    got = llama_logits(files["f32"], ids)
    assert np.abs(got - reference_logits(folder, ids)).max() < 0.05


def test_greedy_tokens_equal_transformers(converted: tuple[Path, dict[str, Path]]) -> None:
    folder, files = converted
    prompt = prompt_ids(folder, 12)
    expected = reference_greedy(folder, prompt, 32)
    model = llama_cpp.Llama(str(files["f32"]), n_ctx=256, verbose=False, **F32_KV)
    tokens = []
    for token in model.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
        tokens.append(token)
        if len(tokens) == 32:
            break
    assert tokens == expected


def test_a_wrong_rope_order_would_be_caught(tmp_path: Path) -> None:
    """The comparison is sharp: without the q/k row permutation the logits differ by far more than 1e-4."""
    from mllm_cpu.convert import tensor_plan

    shape: TinyShape = TINY
    folder = build_checkpoint(tmp_path / "checkpoint", shape)
    ids = prompt_ids(folder, 60)
    original = tensor_plan.interleaved_to_half_split
    try:
        tensor_plan.interleaved_to_half_split = lambda head_dim: np.arange(head_dim)
        path = convert_checkpoint(folder, parse_quant_list("f32"), tmp_path / "gguf")[0].summary.path
    finally:
        tensor_plan.interleaved_to_half_split = original
    assert np.abs(llama_logits(path, ids, **F32_KV) - reference_logits(folder, ids)).max() > 1e-2
