"""Shared fixtures: tiny real checkpoints and the GGUF files converted from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.checkpoints import TINY, build_checkpoint
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.convert.synthetic import write_synthetic_checkpoint
from mllm_cpu.kernels import prepare_kernels


@pytest.fixture(scope="session")
def probe_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of llama.cpp probe verdicts (AMX, first loads) for the session, as a user's machine keeps one."""
    return tmp_path_factory.mktemp("mllm_cache")


@pytest.fixture(scope="session", autouse=True)
def kernel_choice(probe_cache: Path) -> None:
    """The kernel choice every command makes (`mllm_cpu.kernels`), made before any test loads a model.

    Tests that load files with llama_cpp directly would otherwise meet llama.cpp's AMX fault on a
    machine where it faults, depending on which test ran first.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLLM_CPU_CACHE", str(probe_cache))
        patch.delenv("MLLM_CPU_AMX", raising=False)
        prepare_kernels()


@pytest.fixture(autouse=True)
def isolated_store(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, probe_cache: Path
) -> Path:
    """Every test gets an empty model store, never the user's (the probe verdicts are the session's)."""
    home = tmp_path_factory.mktemp("mllm_home")
    monkeypatch.setenv("MLLM_CPU_HOME", str(home))
    monkeypatch.setenv("MLLM_CPU_CACHE", str(probe_cache))
    monkeypatch.delenv("MLLM_CPU_AMX", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama4ForCausalLM checkpoint (F32) built by transformers."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "MobileLLM-R1-tiny", TINY)


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint converted at f32, f16, bf16, q8_0, q4_k_m and q4_0."""
    outdir = tmp_path_factory.mktemp("gguf")
    files = convert_checkpoint(tiny_checkpoint, parse_quant_list("f32,f16,bf16,q8_0,q4_k_m,q4_0"), outdir)
    return {f.level.name: f.summary.path for f in files}


@pytest.fixture(scope="session")
def synthetic_tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` synthetic preset (real Llama-3-sized vocabulary) converted to Q8_0."""
    parent = tmp_path_factory.mktemp("synthetic")
    folder = write_synthetic_checkpoint("tiny", parent)
    return convert_checkpoint(folder, parse_quant_list("q8_0"), parent)[0].summary.path
