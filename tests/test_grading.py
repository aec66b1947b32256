"""Grading answers the way the standard harnesses do, in the real sandbox, and `--timeout` bounds."""

from __future__ import annotations

import math
import time

import pytest

from helpers.cli_runner import run_cli
from mllm_cpu.batch import grade, humaneval_program
from mllm_cpu.commands.solve import EXIT_WRONG, TIMEOUT, exit_code
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import StopReason
from mllm_cpu.problems import Problem
from mllm_cpu.sandbox import run_python
from mllm_cpu.solver import Solution

# HumanEval/0 and HumanEval/38 as the data set has them: the answers need the prompt's
# `from typing import List` and its helper `encode_cyclic`.
HAS_CLOSE_ELEMENTS = Problem(
    id="HumanEval/0",
    text="from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
    "    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n"
    '    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    """\n',
    task="python",
    expected=None,
    tests="\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
    "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
    "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
    "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n"
    "    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n"
    "    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n"
    "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n"
    "    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n\n",
    entry_point="has_close_elements",
    kind="humaneval",
)
DECODE_CYCLIC = Problem(
    id="HumanEval/38",
    text='\n\ndef encode_cyclic(s: str):\n    """\n    returns encoded string by cycling groups of three characters.\n'
    '    """\n    # split string to groups. Each of length 3.\n'
    "    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]\n"
    "    # cycle elements in each group. Unless group has fewer elements than 3.\n"
    "    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]\n"
    '    return "".join(groups)\n\n\ndef decode_cyclic(s: str):\n    """\n'
    '    takes as input string encoded with encode_cyclic function. Returns decoded string.\n    """\n',
    task="python",
    expected=None,
    tests="\n\nMETADATA = {}\n\n\ndef check(candidate):\n    from random import randint, choice\n"
    "    import copy\n    import string\n\n    letters = string.ascii_lowercase\n    for _ in range(100):\n"
    "        str = ''.join(choice(letters) for i in range(randint(10, 20)))\n"
    "        encoded_str = encode_cyclic(str)\n        assert candidate(copy.deepcopy(encoded_str)) == str\n\n",
    entry_point="decode_cyclic",
    kind="humaneval",
)
WHOLE_FUNCTION = """def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if abs(a - b) < threshold:
                return True
    return False
"""
BODY_ONLY = """    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if abs(a - b) < threshold:
                return True
    return False
"""
WRONG = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n    return False\n"


def _python_solution(answer: str | None) -> Solution:
    return Solution(
        problem="",
        task="python",
        answer=answer,
        answer_kind="code",
        language="python",
        output=f"```python\n{answer}```" if answer else "",
        prompt_tokens=1,
        tokens=1,
        tokens_per_second=0.0,
        prompt_seconds=0.0,
        generation_seconds=0.0,
        stop_reason=StopReason.EOS,
    )


@pytest.mark.parametrize(
    ("problem", "answer", "correct"),
    [
        (HAS_CLOSE_ELEMENTS, WHOLE_FUNCTION, True),
        (HAS_CLOSE_ELEMENTS, BODY_ONLY, True),
        (HAS_CLOSE_ELEMENTS, WRONG, False),
        (DECODE_CYCLIC, "def decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n", True),
        (DECODE_CYCLIC, "def decode_cyclic(s: str):\n    return encode_cyclic(s)\n", False),
    ],
)
def test_humaneval_answers_are_graded_as_the_standard_harness_does(
    problem: Problem, answer: str, correct: bool
) -> None:
    is_right, error = grade(problem, _python_solution(answer))
    assert is_right is correct, error
    assert (error is None) is correct


def test_humaneval_program_keeps_the_prompt_before_a_whole_function_and_continues_it_with_a_body() -> None:
    prompt = HAS_CLOSE_ELEMENTS.text
    assert humaneval_program(prompt, WHOLE_FUNCTION, "has_close_elements") == f"{prompt}\n\n{WHOLE_FUNCTION}"
    assert humaneval_program(prompt, BODY_ONLY, "has_close_elements") == prompt + BODY_ONLY


def test_humaneval_grading_honours_the_timeout() -> None:
    looping = "def has_close_elements(numbers, threshold):\n    while True:\n        pass\n"
    started = time.monotonic()
    is_right, error = grade(HAS_CLOSE_ELEMENTS, _python_solution(looping), timeout=0.5)
    assert is_right is False and error == "timed out after 0.5 s"
    assert time.monotonic() - started < 8


def test_a_run_that_failed_or_timed_out_exits_1() -> None:
    timed_out = run_python("while True:\n    pass\n", timeout_s=0.3)
    assert timed_out.timed_out
    solution = _python_solution("while True:\n    pass\n")
    assert exit_code(solution, None, timed_out) == EXIT_WRONG
    assert exit_code(solution, None, run_python("raise SystemExit(3)")) == EXIT_WRONG
    assert exit_code(solution, None, run_python("print('fine')")) == 0
    assert exit_code(solution, None, None) == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [(0.0, "more than 0"), (-1.0, "more than 0"), (math.nan, "finite"), (math.inf, "finite"), (1e300, "at most")],
)
def test_timeout_bounds(value: float, reason: str) -> None:
    with pytest.raises(InputError, match=f"--timeout must be .*{reason}"):
        TIMEOUT.check(value)
    TIMEOUT.check(0.5)


@pytest.mark.parametrize(("value", "reason"), [("0", "more than 0"), ("nan", "finite")])
def test_a_bad_timeout_is_one_error_line(value: str, reason: str) -> None:
    result = run_cli("solve", "Write a Python function f.", "--run", "--timeout", value)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and result.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: --timeout must be") and reason in lines[0]
