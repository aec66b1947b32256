"""pp/tg/TTFT with llama.cpp's low-level API: exact token counts, llama-bench's statistics."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from mllm_cpu.bench.llama_session import LoadedModel, loaded_model
from mllm_cpu.bench.speed import (
    CHAT_PROBLEM,
    SpeedSamples,
    SpeedTest,
    chat_prompt_text,
    prompt_format,
    run_speed_test,
    speed_tests,
    time_to_first_token,
)
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.solver import problem_messages
from mllm_cpu.tasks import get_preset


@pytest.fixture(scope="module")
def tiny_model(synthetic_tiny_gguf: Path) -> Iterator[LoadedModel]:
    with loaded_model(synthetic_tiny_gguf) as model:
        yield model


@pytest.mark.parametrize("n_batch", [2048, 7])
def test_pp_processes_exactly_n_prompt_tokens(tiny_model: LoadedModel, n_batch: int) -> None:
    samples = run_speed_test(tiny_model, SpeedTest(20, 0, 1, n_batch=n_batch), repetitions=3)
    assert samples.counted_tokens == [20, 20, 20]
    assert len(samples.samples_ns) == 3 and all(ns > 0 for ns in samples.samples_ns)
    assert samples.test.name == "pp20"
    assert samples.mean_ts > 0


def test_tg_generates_exactly_n_tokens(tiny_model: LoadedModel) -> None:
    runs: list[None] = []
    samples = run_speed_test(tiny_model, SpeedTest(0, 6, 2), repetitions=2, on_run=lambda: runs.append(None))
    assert samples.counted_tokens == [6, 6]
    assert samples.test.name == "tg6"
    assert len(runs) == 3, "the warm-up and both repetitions report progress"


def test_statistics_are_llama_benchs() -> None:
    samples = SpeedSamples(SpeedTest(0, 10, 1), samples_ns=[1_000_000_000, 2_000_000_000])
    assert samples.tokens_per_second == [10.0, 5.0]
    assert samples.mean_ts == 7.5
    assert math.isclose(samples.stdev_ts, math.sqrt(12.5))
    assert SpeedSamples(SpeedTest(8, 0, 1), samples_ns=[1_000_000]).stdev_ts == 0.0


def test_time_to_first_token_uses_the_chat_template(tiny_model: LoadedModel) -> None:
    prompts = prompt_format(tiny_model)
    text = chat_prompt_text(prompts)
    assert "reason step by step" in text and "<|start_header_id|>" in text
    first = time_to_first_token(tiny_model, threads=1, n_ctx=256, repetitions=2)
    tokens = prompts.tokenize(text)
    assert first.prompt_tokens == len(tokens) > 20
    assert len(first.samples_ns) == 2 and min(first.samples_ns) > 0
    assert tokens.count(tiny_model.bos) == 1 and tokens[0] == tiny_model.bos


def test_time_to_first_token_tokenizes_as_the_engine(synthetic_tiny_gguf: Path, tiny_model: LoadedModel) -> None:
    prompts = prompt_format(tiny_model)
    text = chat_prompt_text(prompts)
    engine = Engine(synthetic_tiny_gguf, n_ctx=256, threads=1)
    messages = problem_messages(CHAT_PROBLEM, get_preset("math"))
    assert engine.render_chat(messages) == text
    assert engine.tokenize(text) == prompts.tokenize(text)


def test_speed_tests_follow_llama_benchs_order() -> None:
    names = [(t.name, t.threads, t.n_batch) for t in speed_tests([16, 32], [4], [1, 2], [2048, 64], [512])]
    assert names == [
        ("pp16", 1, 2048),
        ("pp32", 1, 2048),
        ("pp16", 1, 64),
        ("pp32", 1, 64),
        ("tg4", 1, 2048),
        ("pp16", 2, 2048),
        ("pp32", 2, 2048),
        ("pp16", 2, 64),
        ("pp32", 2, 64),
        ("tg4", 2, 2048),
    ]


@pytest.mark.parametrize("arguments", [(0, 0, 1), (8, 8, 1), (8, 0, 0), (0, 8, 1, 0)])
def test_impossible_tests_are_input_errors(arguments: tuple[int, ...]) -> None:
    with pytest.raises(InputError):
        SpeedTest(*arguments)
