"""`mllm-cpu solve` for one problem, run as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.cli_runner import run_cli


def _solve(model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mllm-cpu solve ARGS --model MODEL` on one thread."""
    return run_cli("solve", *args, "--model", str(model), "--threads", "1")


SOLUTION_FIELDS = {
    "problem",
    "task",
    "answer",
    "output",
    "tokens",
    "tokens_per_second",
    "seconds",
    "stop_reason",
    "prompt_tokens",
    "answer_kind",
    "language",
}


def test_json_output_is_one_object_with_every_field(synthetic_tiny_gguf: Path) -> None:
    result = _solve(synthetic_tiny_gguf, "Compute: 1-2+3-4+...+99-100", "--max-tokens", "16", "--seed", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= SOLUTION_FIELDS
    assert data["problem"] == "Compute: 1-2+3-4+...+99-100"
    assert data["task"] == "math" and data["tokens"] == 16 and data["stop_reason"] == "length"
    assert data["answer"] is None and data["tokens_per_second"] > 0 and data["seconds"] > 0
    again = json.loads(
        _solve(synthetic_tiny_gguf, "Compute: 1-2+3-4+...+99-100", "--max-tokens", "16", "--seed", "1", "--json").stdout
    )
    assert again["output"] == data["output"]


def test_streams_then_shows_the_answer(synthetic_tiny_gguf: Path, isolated_store: Path) -> None:
    (isolated_store / "models").mkdir()
    shutil.copy(synthetic_tiny_gguf, isolated_store / "models")
    result = run_cli("solve", "What is 2 + 2?", "--threads", "1", "--max-tokens", "8", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "answer" in result.stdout and "no final answer" in result.stdout
    assert "stopped at --max-tokens 8" in result.stderr
    assert "8 tokens" in result.stderr and "task math" in result.stderr


def test_check_reports_incorrect_with_exit_1(synthetic_tiny_gguf: Path) -> None:
    result = _solve(synthetic_tiny_gguf, "What is 2 + 2?", "--max-tokens", "4", "--check", "4")
    assert result.returncode == 1
    assert "incorrect (expected 4)" in result.stdout
    checked = _solve(synthetic_tiny_gguf, "What is 2 + 2?", "--max-tokens", "4", "--check", "4", "--json")
    data = json.loads(checked.stdout)
    assert data["expected"] == "4" and data["correct"] is False


def test_run_and_tests_on_a_python_problem(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests.py"
    tests.write_text("assert add(1, 2) == 3\n")
    problem = "Write a Python function add(a, b)."
    result = _solve(synthetic_tiny_gguf, problem, "--max-tokens", "4", "--tests", str(tests), "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["task"] == "python" and data["run"]["ok"] is False
    assert "code block" in data["run"]["error"]


def test_problem_from_a_text_file(synthetic_tiny_gguf: Path, tmp_path: Path) -> None:
    problem = tmp_path / "problem.txt"
    problem.write_text("What is 10 / 4?\n")
    result = _solve(synthetic_tiny_gguf, "--file", str(problem), "--max-tokens", "4", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["problem"] == "What is 10 / 4?\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give a PROBLEM or --file FILE"),
        (("x", "--task", "java"), "unknown task 'java'; choose one of: math, python, cpp, science"),
        (("What is 2+2?", "--run"), "--run and --tests run Python answers; this is a math problem"),
        (("Write a Python function f.", "--check", "3"), "--check compares boxed answers"),
        (("x", "--out", "r.jsonl"), "--out and --limit are for a .jsonl batch"),
        (("--file", "missing.jsonl"), "missing.jsonl: no such file"),
        (("x", "--ctx", "100000", "--model", "MODEL"), "is more than the model's 4096"),
        (("x",), "no model found. Download one"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(synthetic_tiny_gguf: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("solve", *(str(synthetic_tiny_gguf) if arg == "MODEL" else arg for arg in args))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert result.stdout == ""
