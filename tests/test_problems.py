import json
from pathlib import Path
from typing import Any

import pytest

from mllm_cpu.core.errors import InputError
from mllm_cpu.problems import Problem, load_problems


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_gsm8k_layout(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Natalia sold 48 clips ...", "answer": "48+24=<<48+24=72>>72\n#### 72"},
            {"question": "How much in total?", "answer": "It costs 1,000+250.\n#### 1,250"},
        ],
    )
    assert load_problems(path) == [
        Problem("1", "Natalia sold 48 clips ...", "math", "72", None, None, "gsm8k"),
        Problem("2", "How much in total?", "math", "1250", None, None, "gsm8k"),
    ]


def test_math_layout_with_answer_or_solution(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"problem": "Compute $1/2 + 1/4$.", "answer": "\\frac{3}{4}", "id": "algebra-7"},
            {"problem": "What is $2+2$?", "solution": "We add: $2+2=\\boxed{4}$.", "idx": 12},
            {"problem": "Solve $x^2=4$.", "answer": 2},
        ],
    )
    problems = load_problems(path)
    assert [p.id for p in problems] == ["algebra-7", "12", "3"]
    assert [p.expected for p in problems] == ["\\frac{3}{4}", "4", "2"]
    assert {p.kind for p in problems} == {"math"}
    assert {p.task for p in problems} == {"math"}


def test_humaneval_layout(tmp_path: Path) -> None:
    record = {
        "task_id": "HumanEval/0",
        "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
        "entry_point": "add",
    }
    (problem,) = load_problems(write_jsonl(tmp_path / "he.jsonl", [record]))
    assert problem == Problem(
        id="HumanEval/0",
        text=record["prompt"],
        task="python",
        expected=None,
        tests=record["test"],
        entry_point="add",
        kind="humaneval",
    )


def test_plain_layout_and_task_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "plain.jsonl",
        [
            {"question": "Why is the sky blue?"},
            {"problem": "Sum the digits of 2^100."},
            {"question": "Reverse a list.", "task": "python"},
        ],
    )
    problems = load_problems(path)
    assert [(p.kind, p.task, p.expected) for p in problems] == [
        ("plain", None, None),
        ("plain", None, None),
        ("plain", "python", None),
    ]


def test_question_with_direct_answer(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Which option?", "answer": "B"}])
    (problem,) = load_problems(path)
    assert (problem.kind, problem.expected, problem.task) == ("math", "B", None)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text('\n{"question": "a"}\n   \n{"question": "b"}\n\n', encoding="utf-8")
    assert [(p.id, p.text) for p in load_problems(path)] == [("2", "a"), ("4", "b")]


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "a"}\n')
    assert load_problems(path)[0].text == "a"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    assert load_problems(path) == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"question": "a"', "bad JSON"),
        ('["question", "a"]', "expected a JSON object"),
        ('{"text": "a"}', "no recognizable fields"),
        ('{"question": ""}', "non-empty string"),
        ('{"question": 5}', "non-empty string"),
        ('{"question": "a", "answer": "no number\\n#### "}', "####"),
        ('{"problem": "a", "solution": "no box"}', "boxed"),
        ('{"question": "a", "answer": null}', "string or a number"),
        ('{"question": "a", "task": "java"}', "unknown task"),
    ],
)
def test_malformed_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        load_problems(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: ")
    assert reason in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.jsonl: no such file"):
        load_problems(tmp_path / "absent.jsonl")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin1\.jsonl:1: not UTF-8"):
        load_problems(path)
