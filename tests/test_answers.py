import threading

import pytest

from mllm_cpu.answers import (
    Answer,
    answers_match,
    extract_answer,
    extract_boxed,
    extract_code,
    gsm8k_reference,
)
from mllm_cpu.tasks import get_preset

MATH_OUTPUT = r"""<think>
Natalia sold 48 clips in April and half as many, 24, in May. 48 + 24 = 72.
</think>
She sold $48 + 24 = 72$ clips in total, so the answer is $\boxed{72}$."""

BOXED_CASES = [
    (MATH_OUTPUT, "72"),
    (r"Thus $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"First guess \boxed{3}. Checking again, it is \boxed{4}.", "4"),
    (r"The roots form the set $\boxed{\{1,2\}}$", r"\{1,2\}"),
    (r"So the day is \boxed{\text{Tuesday}}.", r"\text{Tuesday}"),
    (r"\boxed{\sqrt{\frac{a+b}{2}}}", r"\sqrt{\frac{a+b}{2}}"),
    (r"\boxed{\left\{ x : x > 0 \right\}}", r"\left\{ x : x > 0 \right\}"),
    (r"Final answer: \fbox{12}", "12"),
    (r"The answer is $\boxed 5$.", "5"),
    (r"\boxed {42}", "42"),
    (r"It is \boxed{7}. Let me double-check: \boxed{\frac{7}{", "7"),
    (r"I will put the answer within \boxed{}.", None),
    ("The model rambled and never answered.", None),
    (r"\boxedx{3}", None),
    (r"\boxed{1} then \boxed{x \boxed{y", "1"),  # two unclosed boxes after a complete one
    (r"\boxed{2 \boxed{3}", "3"),
    (r"\boxed{4} \boxed{ }", "4"),
]


@pytest.mark.parametrize(("output", "expected"), BOXED_CASES)
def test_extract_boxed(output: str, expected: str | None) -> None:
    assert extract_boxed(output) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{" * 20_000, None),  # each box unclosed: tried one by one, 20,000 scans to the end
        ("\\boxed{1} " + "\\boxed{" * 20_000, "1"),
        ("\\boxed{" + "{" * 100_000, None),
    ],
)
def test_extract_boxed_reads_hostile_text_in_bounded_time(text: str, expected: str | None) -> None:
    """A model (or an endpoint) that writes thousands of unclosed boxes does not stall the grading: the
    scan was quadratic (74 s for the first case); it must now finish well inside the bound."""
    found: list[str | None] = []
    worker = threading.Thread(target=lambda: found.append(extract_boxed(text)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "extract_boxed did not finish in 10 s"
    assert found == [expected]


PYTHON_OUTPUT = """<think>
A first idea:
```python
def add(a, b):
    return a - b
```
That is wrong, subtraction. Fixed below.
</think>
```python
def add(a, b):
    return a + b
```
This adds the numbers."""

CPP_OUTPUT = """Reading n numbers and summing them:
```cpp
#include <iostream>
int main() {
    long long n, x, s = 0;
    std::cin >> n;
    while (n-- && std::cin >> x) s += x;
    std::cout << s << "\\n";
}
```
Example output:
```
6
```"""


def test_extract_code_last_python_block_wins() -> None:
    assert extract_code(PYTHON_OUTPUT, "python") == "def add(a, b):\n    return a + b"


def test_extract_code_prefers_requested_language_over_later_bare_block() -> None:
    code = extract_code(CPP_OUTPUT, "cpp")
    assert code is not None
    assert code.startswith("#include <iostream>")
    assert code.rstrip().endswith("}")


def test_extract_code_without_language_takes_last_block() -> None:
    assert extract_code(CPP_OUTPUT, None) == "6"


def test_extract_code_aliases() -> None:
    assert extract_code("```py\nprint(1)\n```", "python") == "print(1)"
    assert extract_code("```c++\nint x;\n```", "cpp") == "int x;"
    assert extract_code("```Python\nx = 1\n```", "python") == "x = 1"


def test_extract_code_falls_back_to_bare_block() -> None:
    assert extract_code("Here:\n```\nprint('hi')\n```\n", "python") == "print('hi')"


def test_extract_code_ignores_other_languages() -> None:
    assert extract_code("```cpp\nint main() {}\n```", "python") is None
    assert extract_code("```bash\nls\n```", "python") is None


def test_extract_code_unclosed_fence_falls_back_to_previous_block() -> None:
    output = "```python\ndef f():\n    return 1\n```\nLet me improve it:\n```python\ndef f():\n    return sum(range("
    assert extract_code(output, "python") == "def f():\n    return 1"
    assert extract_code("```python\nprint(1", "python") is None


def test_extract_code_none_when_no_block() -> None:
    assert extract_code("def f(): return 1", "python") is None
    assert extract_code("```python\n```", "python") is None


def test_extract_answer_dispatches_on_preset() -> None:
    assert extract_answer(MATH_OUTPUT, get_preset("math")) == Answer("boxed", "72", None)
    assert extract_answer(PYTHON_OUTPUT, get_preset("python")) == Answer(
        "code", "def add(a, b):\n    return a + b", "python"
    )
    assert extract_answer("no code here", get_preset("cpp")) == Answer("code", None, "cpp")
    assert extract_answer(r"\boxed{B}", get_preset("science")).text == "B"


def test_gsm8k_reference() -> None:
    field = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert gsm8k_reference(field) == "72"
    assert gsm8k_reference("costs 1,000 in all\n#### 1,250") == "1250"
    assert gsm8k_reference("#### -3") == "-3"
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("The answer is 72.")


MATCHING = [
    ("1/2", r"\frac{1}{2}"),
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac{1}{2}", "0.5"),
    ("-50", "-50.0"),
    (r"\{1,2\}", r"\{2,1\}"),
    ("x=3", "3"),
    ("1,000", "1000"),
    ("1000", "1,000"),
    (r"\sqrt{2}", "2^{1/2}"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\text{Tuesday}", r"\text{Tuesday}"),
    (r"\$18", "18"),
    ("12,345.5", "12345.5"),
]

NOT_MATCHING = [
    ("2", "3"),
    (r"\frac{1}{3}", "0.33"),
    ("5", "5.0001"),
    (r"\{1,2\}", r"\{1,3\}"),
    (r"\text{Monday}", r"\text{Tuesday}"),
    (r"\pi", "3.14159"),
    ("", "5"),
    ("5", ""),
    ("garbage ]]]{{", "5"),
    (r"\frac{1}{", "1"),
    ("}}}{{{", "}}}{{{x"),
]


@pytest.mark.parametrize(("predicted", "expected"), MATCHING)
def test_answers_match(predicted: str, expected: str) -> None:
    assert answers_match(predicted, expected) is True


@pytest.mark.parametrize(("predicted", "expected"), NOT_MATCHING)
def test_answers_do_not_match(predicted: str, expected: str) -> None:
    assert answers_match(predicted, expected) is False


def test_answers_match_accepts_a_boxed_prediction() -> None:
    assert answers_match(r"\boxed{72}", "72") is True


def test_answers_match_outside_the_main_thread() -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.extend([answers_match("1/2", "0.5"), answers_match("2", "3")]))
    worker.start()
    worker.join()
    assert results == [True, False]
