import dataclasses

import pytest

from mllm_cpu.core.errors import InputError
from mllm_cpu.tasks import TASK_NAMES, TaskPreset, detect_task, get_preset

PYTHON_PROMPT = (
    "You are a helpful and harmless assistant. You should think step-by-step before "
    "responding. Please use python programming language only. You must use ```python for "
    "just the final solution code block with the format:\n```python\n# Your code here\n```\n"
)


def test_task_names() -> None:
    assert TASK_NAMES == ("math", "python", "cpp", "science")


def test_math_preset_uses_the_model_card_prompt() -> None:
    preset = get_preset("math")
    assert preset.system_prompt == ("Please reason step by step, and put your final answer within \\boxed{}.")
    assert preset.answer_kind == "boxed"
    assert preset.language is None


def test_python_preset_uses_the_model_card_prompt() -> None:
    preset = get_preset("python")
    assert preset.system_prompt == PYTHON_PROMPT
    assert (preset.answer_kind, preset.language) == ("code", "python")


def test_cpp_preset_is_the_python_prompt_for_cpp() -> None:
    preset = get_preset("cpp")
    expected = PYTHON_PROMPT.replace("use python programming", "use c++ programming").replace("```python", "```cpp")
    assert preset.system_prompt == expected
    assert (preset.answer_kind, preset.language) == ("code", "cpp")


def test_science_preset_asks_for_a_boxed_answer() -> None:
    preset = get_preset("science")
    assert preset.answer_kind == "boxed"
    assert "step by step" in preset.system_prompt
    assert "\\boxed{}" in preset.system_prompt


def test_presets_are_frozen() -> None:
    preset = get_preset("math")
    assert isinstance(preset, TaskPreset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.name = "other"  # type: ignore[misc]


def test_get_preset_is_case_insensitive() -> None:
    assert get_preset(" Python ") is get_preset("python")


@pytest.mark.parametrize("name", ["auto", "java", ""])
def test_get_preset_unknown_name(name: str) -> None:
    with pytest.raises(InputError) as error:
        get_preset(name)
    message = str(error.value)
    assert "\n" not in message
    assert "math, python, cpp, science" in message


DETECT_CASES = [
    ("Write a Python function to reverse a string.", "python"),
    ("Implement a function that returns the n-th Fibonacci number.", "python"),
    ("Write a function that returns the sum of a list of integers.", "python"),
    ("Given a string s, write a program that counts its vowels. Read s from standard input.", "python"),
    ('def add(a, b):\n    """Return a + b.\n    >>> add(1, 2)\n    3\n    """\n', "python"),
    ("from typing import List\n\ndef mean(xs: List[float]) -> float:\n", "python"),
    ("Write a C++ program that reads n and prints the sum of 1..n.", "cpp"),
    ("#include <vector>\nFix the bug in this code.", "cpp"),
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "math",
    ),
    ("Let $f$ be a function such that $f(x+y) = f(x)f(y)$ and $f(1)=2$. Find $f(3)$.", "math"),
    ("Find all functions f from the reals to the reals such that f(x+y)=f(x)+f(y).", "math"),
    ("Write a linear function that models the cost, where f(x) = 3x + 2.", "math"),
    ("Find the minimum of the function f(x) = x^2 - 4x + 5.", "math"),
    ("From a standard deck of 52 cards, two cards are drawn. Find P(both aces).", "math"),
    ("A pet store has 3 species of fish and 4 of each. How many fish are there?", "math"),
    ("The temperature dropped 5 degrees each hour for 3 hours. How much did it drop?", "math"),
    ("What is the pH of a 0.01 M solution of HCl?", "science"),
    ("A 2 kg ball moves with a velocity of 3 m/s. What is its kinetic energy?", "science"),
    ("Which organelle is the site of photosynthesis in plant cells?", "science"),
    ("In physics, what quantity does the newton measure?", "science"),
]


@pytest.mark.parametrize(("problem", "task"), DETECT_CASES)
def test_detect_task(problem: str, task: str) -> None:
    assert detect_task(problem) == task
