"""Problems read from JSONL files in the GSM8K, MATH and HumanEval layouts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mllm_cpu.core.errors import InputError

from .answers import extract_boxed, gsm8k_reference
from .tasks import TASK_NAMES

ProblemKind = Literal["gsm8k", "math", "humaneval", "plain"]

_ID_FIELDS = ("id", "task_id", "idx")


@dataclass(frozen=True)
class Problem:
    """One problem: its text, a task hint, and what checks an answer, if anything."""

    id: str
    text: str
    task: str | None
    expected: str | None
    tests: str | None
    entry_point: str | None
    kind: ProblemKind


def _text(record: dict[str, Any], field: str) -> str:
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {field!r} must be a non-empty string")
    return value


def _answer(record: dict[str, Any], field: str) -> str:
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"field {field!r} must be a string or a number")
    text = str(value).strip()
    if not text:
        raise ValueError(f"field {field!r} is empty")
    return text


def _problem(record: dict[str, Any], problem_id: str) -> Problem:
    """The problem of one record; ValueError with a one-line reason if it has none."""
    task = record.get("task")
    if task is not None and task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASK_NAMES)}")
    if {"prompt", "test", "entry_point"} <= record.keys():
        return Problem(
            id=problem_id,
            text=_text(record, "prompt"),
            task=task or "python",
            expected=None,
            tests=_text(record, "test"),
            entry_point=_text(record, "entry_point"),
            kind="humaneval",
        )
    text_field = "question" if "question" in record else "problem"
    if text_field not in record:
        raise ValueError(
            "no recognizable fields (expected question[/answer], problem[/answer or solution] "
            "or prompt/test/entry_point)"
        )
    text = _text(record, text_field)
    expected: str | None = None
    kind: ProblemKind = "plain"
    if "answer" in record:
        expected = _answer(record, "answer")
        kind = "math"
        if text_field == "question" and "####" in expected:
            expected, kind = gsm8k_reference(expected), "gsm8k"
    elif text_field == "problem" and "solution" in record:
        expected = extract_boxed(_text(record, "solution"))
        if expected is None:
            raise ValueError("field 'solution' has no \\boxed{} answer")
        kind = "math"
    math_layout = kind == "gsm8k" or (kind == "math" and text_field == "problem")
    return Problem(
        id=problem_id,
        text=text,
        task=task or ("math" if math_layout else None),
        expected=expected,
        tests=None,
        entry_point=None,
        kind=kind,
    )


def _problem_id(record: dict[str, Any], line_number: int) -> str:
    for field in _ID_FIELDS:
        if field in record and record[field] is not None:
            return str(record[field])
    return str(line_number)


def load_problems(path: Path) -> list[Problem]:
    """The problems of a JSONL file, one JSON object per line; blank lines are skipped.

    A missing file or a malformed line raises InputError naming the file, the line number
    and the problem.
    """
    problems: list[Problem] = []
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with path.open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("expected a JSON object")
                problems.append(_problem(record, _problem_id(record, line_number)))
            except UnicodeDecodeError:
                raise InputError(f"{path}:{line_number}: not UTF-8 text") from None
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: bad JSON: {error.msg}") from None
            except ValueError as error:
                raise InputError(f"{path}:{line_number}: {error}") from None
    return problems
