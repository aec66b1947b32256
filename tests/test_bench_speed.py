"""pp/tg/TTFT with llama.cpp's low-level API: exact token counts, llama-bench's statistics."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from mllm_cpu.bench.compare_llama_bench import cli_command, llama_bench_command
from mllm_cpu.bench.llama_session import (
    RUNTIME_FLASH_ATTN,
    ContextSettings,
    LoadedModel,
    loaded_model,
    open_context,
    parse_flash_attn,
)
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
from mllm_cpu.bench.streaming_overhead import measure_streaming_overhead
from mllm_cpu.commands.streaming_overhead import text_display
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
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


@pytest.mark.parametrize("test", [SpeedTest(0, 6, 1, n_depth=24), SpeedTest(12, 0, 1, n_batch=5, n_depth=24)])
def test_a_depth_fills_the_cache_untimed_before_each_repetition(tiny_model: LoadedModel, test: SpeedTest) -> None:
    samples = run_speed_test(tiny_model, test, repetitions=2)
    assert samples.counted_tokens == [test.n_tokens] * 2, "llama.cpp counts only the timed tokens"
    assert test.name == f"{test.kind}{test.n_tokens} @ d24"


def test_flash_attention_reaches_llama_cpp(tiny_model: LoadedModel) -> None:
    """llama.cpp sizes its compute buffer by the attention kernel: "auto" picks flash attention on CPU."""
    compute = {}
    for value in ("off", "on", "auto"):
        with open_context(tiny_model, ContextSettings(512, 1, flash_attn=value)) as context:
            compute[value] = context.buffers.total_mib("compute")
    assert compute["off"] != compute["on"] == compute["auto"]


def test_flash_attention_values_are_llama_benchs() -> None:
    assert [parse_flash_attn(v) for v in ("on", "OFF", "auto", "1", "0")] == ["on", "off", "auto", "on", "off"]
    with pytest.raises(InputError, match="on, off or auto"):
        parse_flash_attn("yes")


def test_chat_and_solve_run_as_bench_says(synthetic_tiny_gguf: Path) -> None:
    engine = Engine(synthetic_tiny_gguf, n_ctx=128, threads=1)
    assert RUNTIME_FLASH_ATTN == "off"
    assert engine.llama.context_params.flash_attn_type == 0, "llama.cpp's LLAMA_FLASH_ATTN_TYPE_DISABLED"


def test_depth_and_flash_attention_vary_in_llama_benchs_order() -> None:
    tests = list(speed_tests([16], [4], [1], [2048], [512], depths=[0, 32], flash_attn=["on", "off"]))
    assert [(t.flash_attn, t.name) for t in tests] == [
        ("on", "pp16"),
        ("on", "tg4"),
        ("on", "pp16 @ d32"),
        ("on", "tg4 @ d32"),
        ("off", "pp16"),
        ("off", "tg4"),
        ("off", "pp16 @ d32"),
        ("off", "tg4 @ d32"),
    ]


@pytest.mark.parametrize("arguments", [(0, 0, 1), (8, 8, 1), (8, 0, 0), (0, 8, 1, 0), (0, 8, 1, 2048, 512, -1)])
def test_impossible_tests_are_input_errors(arguments: tuple[int, ...]) -> None:
    with pytest.raises(InputError):
        SpeedTest(*arguments)


def test_streaming_is_compared_with_bench_at_the_prompts_depth(
    synthetic_tiny_gguf: Path, tiny_model: LoadedModel
) -> None:
    engine = Engine(synthetic_tiny_gguf, n_ctx=256, threads=1)
    prompt = engine.render_chat(problem_messages("What is 2 + 3?", get_preset("math")))
    console = Console(file=io.StringIO(), force_terminal=True)
    options = SamplingOptions(temperature=0.0, max_tokens=8, logit_bias=dict.fromkeys(engine.stop_ids, -100.0))
    display = text_display(console, options.max_tokens)
    result = measure_streaming_overhead(engine, prompt, options, display, runs=1, bench_model=tiny_model)
    assert result.depth == len(engine.tokenize(prompt)) > 20
    assert result.plain_tokens_per_second > 0 and result.streamed_tokens_per_second > 0
    assert result.versus_bench is not None and result.versus_bench > 0
    assert console.file.getvalue(), "the streamed run printed to the console"


def test_llama_bench_and_ours_get_the_same_settings(synthetic_tiny_gguf: Path) -> None:
    tests = [SpeedTest(64, 0, 2, n_depth=512, flash_attn="off"), SpeedTest(0, 16, 2, n_depth=512, flash_attn="off")]
    theirs = llama_bench_command(Path("llama-bench"), synthetic_tiny_gguf, tests, 3)
    ours = cli_command(synthetic_tiny_gguf, tests, 3)
    settings = ["-t", "2", "-p", "64", "-n", "16", "-d", "512", "-fa", "off"]
    for command in (theirs, ours):
        start = command.index("-t")
        assert command[start : start + len(settings)] == settings
