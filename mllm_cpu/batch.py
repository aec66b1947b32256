"""Solve a file of problems into a JSONL results file that survives interruption and resumes."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, SamplingOptions
from mllm_cpu.problems import Problem
from mllm_cpu.sandbox import humaneval_test_code
from mllm_cpu.solver import AUTO_TASK, Solution, is_correct, run_solution, solve

TIMING_FIELDS = ("tokens_per_second", "prompt_seconds", "generation_seconds", "seconds")
TOTAL_ROW = "all"


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch stands after a record was written."""

    done: int
    total: int
    graded: int
    correct: int
    record: dict[str, Any]

    @property
    def accuracy(self) -> float | None:
        """Correct / graded so far, None before anything was graded."""
        return self.correct / self.graded if self.graded else None


@dataclass(frozen=True)
class KindSummary:
    """Totals over the finished records of one problem kind (or all of them)."""

    kind: str
    problems: int
    graded: int
    correct: int
    mean_tokens: float
    tokens_per_second: float

    @property
    def accuracy(self) -> float | None:
        """Correct / graded, None when nothing could be graded."""
        return self.correct / self.graded if self.graded else None


def problem_prompt(problem: Problem) -> str:
    """The user message for a problem; a HumanEval stub is asked to be completed."""
    if problem.kind == "humaneval":
        return f"Complete the following Python function.\n\n```python\n{problem.text.rstrip()}\n```"
    return problem.text


def problem_seed(base_seed: int, problem_id: str) -> int:
    """A seed for one problem, derived from the batch seed and the problem id (not its position)."""
    return (base_seed + zlib.crc32(problem_id.encode("utf-8"))) % 2**31


def grade(problem: Problem, solution: Solution) -> tuple[bool | None, str | None]:
    """(correct, error) for a solution: math by equivalence, HumanEval by its tests; None when ungradable."""
    if problem.kind == "humaneval" and problem.tests and problem.entry_point:
        result = run_solution(solution, humaneval_test_code(problem.tests, problem.entry_point))
        return result.ok, result.error or None
    if problem.expected is not None and solution.answer_kind == "boxed":
        return is_correct(solution, problem.expected), None
    return None, None


def result_record(problem: Problem, solution: Solution, correct: bool | None, error: str | None) -> dict[str, Any]:
    """The JSON record written for one solved problem."""
    data = solution.to_dict()
    return {
        "id": problem.id,
        "kind": problem.kind,
        "task": solution.task,
        "problem": problem.text,
        "expected": problem.expected,
        "answer": solution.answer,
        "correct": correct,
        "error": error,
        "stop_reason": solution.stop_reason,
        "prompt_tokens": solution.prompt_tokens,
        "tokens": solution.tokens,
        **{name: data[name] for name in TIMING_FIELDS},
        "output": solution.output,
    }


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of a results file; a half-written last line (from a kill) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with path.open("r+b") as file:
            file.truncate(complete)
            file.flush()
            os.fsync(file.fileno())
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data[:complete].decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "id" not in record:
            raise InputError(f"{path}:{number}: not a results record; remove the line or choose another --out")
        records.append(record)
    return records


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _check_unique_ids(problems: list[Problem]) -> None:
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise InputError(f"problem id {problem.id!r} appears twice; ids must be unique to resume a batch")
        seen.add(problem.id)


def run_batch(
    engine: Engine,
    problems: list[Problem],
    out_path: Path,
    *,
    task: str = AUTO_TASK,
    options: SamplingOptions | None = None,
    on_record: Callable[[BatchProgress], None] | None = None,
) -> list[dict[str, Any]]:
    """Solve every problem not yet in `out_path`, appending one fsynced record each; returns all records.

    `task` other than "auto" overrides the problems' own tasks. With a seed in `options`, each
    problem gets a seed derived from it and the problem's id, and its prompt is evaluated afresh,
    so an interrupted and resumed run writes the same records as an uninterrupted one. Ctrl-C
    during a problem raises KeyboardInterrupt without writing that problem.
    """
    _check_unique_ids(problems)
    options = options or engine.default_options()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wanted = {problem.id for problem in problems}
    finished = {str(record["id"]): record for record in read_results(out_path) if str(record["id"]) in wanted}
    graded = sum(record.get("correct") is not None for record in finished.values())
    correct = sum(record.get("correct") is True for record in finished.values())
    for problem in problems:
        if problem.id in finished:
            continue
        seeded = options if options.seed is None else replace(options, seed=problem_seed(options.seed, problem.id))
        problem_task = task if task != AUTO_TASK else (problem.task or AUTO_TASK)
        solution = solve(engine, problem_prompt(problem), problem_task, seeded, reuse_prefix=False)
        if solution.stop_reason == "interrupted":
            raise KeyboardInterrupt
        is_right, error = grade(problem, solution)
        record = result_record(problem, solution, is_right, error)
        _append(out_path, record)
        finished[problem.id] = record
        graded += is_right is not None
        correct += is_right is True
        if on_record:
            on_record(BatchProgress(len(finished), len(problems), graded, correct, record))
    return [finished[problem.id] for problem in problems if problem.id in finished]


def summarize(records: list[dict[str, Any]]) -> list[KindSummary]:
    """One summary per problem kind, then one over all records (kind "all") when there are several."""
    kinds = sorted({str(record.get("kind")) for record in records})
    groups = [(kind, [r for r in records if str(r.get("kind")) == kind]) for kind in kinds]
    if len(groups) != 1:
        groups.append((TOTAL_ROW, records))
    return [_summary(kind, group) for kind, group in groups]


def _summary(kind: str, records: list[dict[str, Any]]) -> KindSummary:
    tokens = sum(int(r.get("tokens", 0)) for r in records)
    seconds = sum(float(r.get("generation_seconds", 0.0)) for r in records)
    return KindSummary(
        kind=kind,
        problems=len(records),
        graded=sum(r.get("correct") is not None for r in records),
        correct=sum(r.get("correct") is True for r in records),
        mean_tokens=tokens / len(records) if records else 0.0,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
    )
