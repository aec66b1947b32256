"""Speculative decoding (--draft, --lookup) and `bench --draft`, on a trained target/draft pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.arithmetic_task import converted_pair, problems, render_prompt
from helpers.cli_runner import error_lines, run_cli
from mllm_cpu.bench.draft import predicted_speedup
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions

GREEDY = SamplingOptions(temperature=0.0, top_k=1, max_tokens=80, seed=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return converted_pair(tmp_path_factory.mktemp("pair"))


def _greedy_tokens(engine: Engine, prompts: list[str]) -> list[list[int]]:
    return [engine.generate(prompt, GREEDY, reuse_prefix=False).token_ids for prompt in prompts]


def test_greedy_output_with_a_draft_or_prompt_lookup_is_token_identical(pair: dict[str, Path]) -> None:
    prompts = [render_prompt(item.question) for item in problems(6, seed=3)]
    plain = _greedy_tokens(Engine(pair["target"], threads=1), prompts)
    assert all(len(tokens) > 10 for tokens in plain)
    drafted = Engine(pair["target"], threads=1, draft=pair["draft"])
    assert _greedy_tokens(drafted, prompts) == plain
    looked_up = Engine(pair["target"], threads=1, lookup=4)
    assert _greedy_tokens(looked_up, prompts) == plain


def test_solve_reports_the_acceptance_rate_of_the_trained_pair(pair: dict[str, Path]) -> None:
    question = problems(1, seed=9, terms=(5, 5))[0].question
    common = ["--model", str(pair["target"]), "--threads", "1", "--temperature", "0", "--task", "math"]
    plain = json.loads(run_cli("solve", question, *common, "--json").stdout)
    result = run_cli("solve", question, *common, "--draft", str(pair["draft"]), "--json")
    assert result.returncode == 0, result.stderr
    drafted = json.loads(result.stdout)
    assert drafted["output"] == plain["output"]
    assert plain["acceptance_rate"] is None and plain["speedup"] is None
    assert 0 < drafted["acceptance_rate"] <= 1
    assert drafted["speedup"] > 0
    shown = run_cli("solve", question, *common, "--lookup", "3")
    assert shown.returncode == 0, shown.stderr
    assert "drafts accepted" in shown.stderr and "speed-up" in shown.stderr


def test_a_draft_with_another_tokenizer_is_one_error_line(pair: dict[str, Path], synthetic_tiny_gguf: Path) -> None:
    result = run_cli("solve", "What is 1 + 2?", "--model", str(pair["target"]), "--draft", str(synthetic_tiny_gguf))
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: draft ") and "another tokenizer" in lines[0]
    both = run_cli("solve", "x", "--model", str(pair["target"]), "--draft", str(pair["draft"]), "--lookup", "2")
    assert both.returncode == 2 and error_lines(both) == [
        "error: --draft and --lookup are two ways of drafting; give one of them"
    ]


def test_predicted_speedup_follows_the_standard_formula() -> None:
    assert predicted_speedup(0.0, 4, 1.0, 2.0, 2.0) == pytest.approx(1 / 3)
    assert predicted_speedup(1.0, 4, 0.0, 2.0, 2.0) == pytest.approx(5.0)
    assert predicted_speedup(0.5, 2, 1.0, 3.0, 4.0) == pytest.approx(1.75 / 1.25)


def test_bench_draft_measures_costs_and_the_real_speedup(pair: dict[str, Path]) -> None:
    result = run_cli(
        "bench", "--draft", str(pair["draft"]), str(pair["target"]), "-t", "1", "-r", "2", "-n", "48", "--json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["draft_tokens_per_second"] > 0
    assert set(data["verify_ratio"]) == {"1", "2", "4", "8"}
    assert set(data["predicted"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert 0 < data["measured"]["acceptance_rate"] <= 1
    assert data["measured"]["speedup"] > 0
    table = run_cli("bench", "--draft", str(pair["draft"]), str(pair["target"]), "-t", "1", "-r", "1", "-n", "16")
    assert table.returncode == 0, table.stderr
    assert "Predicted speed-up" in table.stdout and "k=4" in table.stdout and "acceptance" in table.stdout
