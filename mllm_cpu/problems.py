"""Problems read from JSONL files in the GSM8K, MATH and HumanEval layouts, or from a text file."""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Literal

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import check_size, decode_utf8, limited_lines, open_regular, read_text
from mllm_cpu.core.values import MIB

from .answers import extract_boxed, gsm8k_reference
from .tasks import TASK_NAMES

ProblemKind = Literal["gsm8k", "math", "humaneval", "plain"]

_ID_FIELDS = ("id", "task_id", "idx")

PROBLEM_LIMIT = 1 * MIB
"""The longest problem: a line of a problems file, or a problem text file. MobileLLM-R1's
context of 32k tokens holds about 128 KiB of text, so a longer problem could not be solved."""
PROBLEMS_FILE_LIMIT = 256 * MIB
"""The largest problems file (every problem is held while its batch runs)."""
MAX_PROBLEMS = 100_000
"""The most problems in one file: weeks of solving on a CPU; a bigger set is split into files."""
TESTS_LIMIT = 1 * MIB
"""The largest --tests file of assertions (HumanEval's tests are a few KiB)."""


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


def _check_unicode(problem: Problem) -> None:
    """ValueError when a text of `problem` holds a lone surrogate (JSON's "\\ud800"), which is not text."""
    for value in astuple(problem):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                code = ord(value[error.start])
                raise ValueError(f"a lone surrogate \\u{code:04x} in the text: not Unicode text") from None


def load_problems(path: Path) -> list[Problem]:
    """The problems of a JSONL file, one JSON object per line; blank lines are skipped.

    A missing file, something else than a regular file, or a malformed line (bad JSON, not
    UTF-8, a lone surrogate, nesting too deep for JSON's parser) raises InputError naming the
    file, the line number and the problem; so does a file past PROBLEMS_FILE_LIMIT, a line
    past PROBLEM_LIMIT or more than MAX_PROBLEMS problems, before more than the limit is read.
    """
    problems: list[Problem] = []
    with open_regular(path) as file:
        check_size(file, path, PROBLEMS_FILE_LIMIT, "a problems file")
        for line_number, raw in limited_lines(file, path, PROBLEM_LIMIT, "one problem"):
            line = decode_utf8(raw, path, line_number)
            if not line.strip():
                continue
            if len(problems) == MAX_PROBLEMS:
                raise InputError(f"{path}: more than {MAX_PROBLEMS:,} problems, the limit of one file; split it")
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("expected a JSON object")
                problem = _problem(record, _problem_id(record, line_number))
                _check_unicode(problem)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{line_number}: bad JSON: {error.msg}") from None
            except RecursionError:
                raise InputError(f"{path}:{line_number}: bad JSON: nested too deeply") from None
            except ValueError as error:
                raise InputError(f"{path}:{line_number}: {error}") from None
            problems.append(problem)
    return problems


def read_problem(path: Path) -> str:
    """The text of a problem file (UTF-8, at most PROBLEM_LIMIT bytes); one InputError line otherwise."""
    return read_text(path, PROBLEM_LIMIT, "one problem")


def read_tests(path: Path) -> str:
    """The assertions of a --tests file (UTF-8, at most TESTS_LIMIT bytes); one InputError line otherwise."""
    return read_text(path, TESTS_LIMIT, "a --tests file")
