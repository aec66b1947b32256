"""Solving one problem with a real tiny model: prompts, extraction, checking, running code."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from helpers.forcing import forcing_options
from mllm_cpu.answers import extract_answer
from mllm_cpu.commands.stream_display import TerminalStream, printable
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import Solution, choose_task, is_correct, problem_messages, run_solution, solve
from mllm_cpu.tasks import get_preset


@pytest.fixture(scope="module")
def engine(synthetic_tiny_gguf: Path) -> Engine:
    """One thread: the tiny model gains nothing from more, and stays fast when another job holds the cores."""
    return Engine(synthetic_tiny_gguf, threads=1)


def test_choose_task() -> None:
    assert choose_task("auto", "Write a Python function that reverses a list.").name == "python"
    assert choose_task("auto", "What is 3 + 4?").name == "math"
    assert choose_task("CPP", "anything").name == "cpp"
    with pytest.raises(InputError, match="unknown task 'java'"):
        choose_task("java", "x")


def test_prompt_uses_the_task_system_prompt(engine: Engine) -> None:
    messages = problem_messages("What is 3 + 4?", get_preset("math"))
    prompt = engine.render_chat(messages)
    assert "put your final answer within \\boxed{}" in prompt
    assert prompt.endswith("What is 3 + 4?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_boxed_answer_is_extracted_and_checked(engine: Engine) -> None:
    output = "Sum: \\boxed{-50}"
    solution = solve(engine, "Compute 1-2+3-4+...+99-100.", "auto", forcing_options(engine, output))
    assert solution.output == output
    assert solution.task == "math"
    assert solution.answer == "-50"
    assert solution.stop_reason == "eos"
    assert is_correct(solution, "-50")
    assert not is_correct(solution, "50")


def test_equivalent_forms_are_correct(engine: Engine) -> None:
    solution = solve(engine, "What is 1/2 + 0?", "math", forcing_options(engine, "\\boxed{0.5}"))
    assert solution.answer == "0.5"
    assert is_correct(solution, "\\frac{1}{2}")
    assert is_correct(solution, "1/2")


def test_random_output_has_no_answer(engine: Engine) -> None:
    solution = solve(engine, "What is 3 + 4?", "math", SamplingOptions(seed=1, max_tokens=16))
    assert solution.tokens == 16
    assert solution.stop_reason == "length"
    assert solution.answer is None
    assert not is_correct(solution, "7")
    data = solution.to_dict()
    assert set(data) >= {"problem", "task", "answer", "output", "tokens", "tokens_per_second", "seconds"}


def test_code_task_without_a_block_cannot_run(engine: Engine) -> None:
    solution = solve(engine, "Write a Python function add(a, b).", "auto", SamplingOptions(seed=1, max_tokens=8))
    assert solution.task == "python"
    assert solution.answer_kind == "code"
    result = run_solution(solution)
    assert not result.ok
    assert "no complete ```python code block" in result.error
    with pytest.raises(InputError, match="boxed answers"):
        is_correct(solution, "3")


def _code_solution(output: str, task: str = "python") -> Solution:
    answer = extract_answer(output, get_preset(task))
    return Solution(
        problem="p",
        task=task,
        answer=answer.text,
        answer_kind=answer.kind,
        language=answer.language,
        output=output,
        prompt_tokens=1,
        tokens=1,
        tokens_per_second=0.0,
        prompt_seconds=0.0,
        generation_seconds=0.0,
        stop_reason="eos",
    )


def test_python_answer_runs_with_tests_in_the_sandbox() -> None:
    solution = _code_solution("Think...\n```python\ndef add(a, b):\n    return a + b\nprint(add(2, 3))\n```\n")
    result = run_solution(solution)
    assert result.ok and result.stdout == "5\n"
    assert run_solution(solution, "assert add(1, 1) == 2").ok
    failed = run_solution(solution, "assert add(1, 1) == 3")
    assert not failed.ok and "AssertionError" in failed.error


def test_only_python_answers_run() -> None:
    with pytest.raises(InputError, match="only Python answers"):
        run_solution(_code_solution("```cpp\nint main() {}\n```", "cpp"))


def test_empty_problem_is_an_input_error(engine: Engine) -> None:
    with pytest.raises(InputError, match="empty"):
        solve(engine, "  ", "math")


def test_terminal_stream_batches_writes_and_strips_control_characters() -> None:
    console = Console(record=True, width=80, force_terminal=False)
    stream = TerminalStream(console, interval_s=3600)
    for piece in ["a\x00b", "\x1b[31mc", "\n", "d"]:
        stream(piece)
    stream.finish()
    assert console.export_text() == "ab[31mc\nd\n"
    assert printable("x\ty\r\n") == "x\ty\n"
