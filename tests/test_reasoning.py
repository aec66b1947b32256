"""The reasoning/answer split of replies: the same however the text is cut into pieces."""

from __future__ import annotations

import pytest

from mllm_cpu.reasoning import ReasoningSplitter, split_reply
from mllm_cpu.tasks import get_preset

MATH = get_preset("math")
PYTHON = get_preset("python")

CASES = [
    ("1 + 2 = 3\n\nFinal answer: \\boxed{3}", MATH, ("1 + 2 = 3\n\nFinal answer: ", "\\boxed{3}")),
    ("<think>\nadd them</think>\nThe sum is \\boxed{3}.", MATH, ("add them", "The sum is \\boxed{3}.")),
    ("Use a loop.\n```python\nprint(1)\n```", PYTHON, ("Use a loop.\n", "```python\nprint(1)\n```")),
    ("no answer yet \\box", MATH, ("no answer yet \\box", "")),
    ("<think>\nlet me think</think>Hello!", None, ("let me think", "Hello!")),
    ("  <think>still thinking", None, ("still thinking", "")),
    ("Hello, \\boxed{x} is LaTeX.", None, ("", "Hello, \\boxed{x} is LaTeX.")),
    ("<thin", None, ("", "<thin")),
    ("<thin", MATH, ("<thin", "")),
    ("", MATH, ("", "")),
]


@pytest.mark.parametrize(("text", "preset", "expected"), CASES)
def test_a_whole_reply_splits_at_the_first_mark(text: str, preset: object, expected: tuple[str, str]) -> None:
    assert split_reply(text, preset) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "preset", "expected"), CASES)
def test_every_way_of_cutting_the_stream_gives_the_same_split(
    text: str, preset: object, expected: tuple[str, str]
) -> None:
    for cut in range(len(text) + 1):
        for second in range(cut, len(text) + 1):
            splitter = ReasoningSplitter(preset)  # type: ignore[arg-type]
            parts = [
                *splitter.feed(text[:cut]),
                *splitter.feed(text[cut:second]),
                *splitter.feed(text[second:]),
                *splitter.finish(),
            ]
            reasoning = "".join(p.text for p in parts if p.reasoning)
            answer = "".join(p.text for p in parts if not p.reasoning)
            assert (reasoning, answer) == expected, (cut, second)
            kinds = [p.reasoning for p in parts]
            assert kinds == sorted(kinds, reverse=True)  # reasoning never comes after the answer


def test_a_piece_that_cannot_start_a_mark_is_passed_on_at_once() -> None:
    splitter = ReasoningSplitter(MATH)
    assert [p.text for p in splitter.feed("1 + 2 = 3\n")] == ["1 + 2 = 3\n"]
    assert [p.text for p in splitter.feed("Final answer: \\bo")] == ["Final answer: "]  # "\\bo" held
    assert [(p.text, p.reasoning) for p in splitter.feed("xed{3}")] == [("\\boxed{3}", False)]
