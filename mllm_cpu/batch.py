"""Solve a file of problems into a JSONL results file that survives interruption and resumes."""

from __future__ import annotations

import ast
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mllm_cpu.backend import Backend
from mllm_cpu.core.errors import InputError, naming_path
from mllm_cpu.engine import SamplingOptions, StopReason
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.parallel import solve_each
from mllm_cpu.problems import Problem
from mllm_cpu.sandbox import humaneval_test_code
from mllm_cpu.solver import AUTO_TASK, Solution, is_correct, run_solution, solve

TIMING_FIELDS = ("tokens_per_second", "prompt_seconds", "generation_seconds", "seconds")
TOTAL_ROW = "all"
DEFAULT_TIMEOUT = 10.0


class NotResumable(InputError):
    """A results file that cannot be resumed: another model's or settings' records, or lines that are not records."""


@dataclass(frozen=True)
class BatchSettings:
    """The settings that change a batch's answers; records made under other settings are never mixed.

    `task` is the batch's task override ("auto": each problem's own); `budget` is the thinking
    budget in tokens, None when there is none; `answer_tokens` bounds a forced answer (None:
    each task's default).
    """

    task: str
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None
    max_tokens: int
    budget: int | None = None
    answer_tokens: int | None = None

    @classmethod
    def of(
        cls, task: str, options: SamplingOptions, budget: int | None = None, answer_tokens: int | None = None
    ) -> BatchSettings:
        """The settings of a batch run with `task` and `options` (the sampling fields both records have)."""
        sampling = {f.name: getattr(options, f.name) for f in fields(options) if f.name in _SETTING_NAMES}
        return cls(task=task, **sampling, budget=budget, answer_tokens=answer_tokens if budget is not None else None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSettings:
        """The settings of a record; KeyError or TypeError when fields are missing."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING})

    def differences(self, now: BatchSettings) -> list[str]:
        """What differs from the settings `now`, as "--flag THESE there, THOSE now" phrases."""
        return [
            f"--{field.name.replace('_', '-')} {getattr(self, field.name)} there, {getattr(now, field.name)} now"
            for field in fields(self)
            if getattr(self, field.name) != getattr(now, field.name)
        ]


_SETTING_NAMES = frozenset(f.name for f in fields(BatchSettings))


@dataclass(frozen=True)
class BatchRecord:
    """One solved problem as written to the results file: the answer, its grade, and what produced it."""

    id: str
    kind: str
    task: str
    problem: str
    expected: str | None
    answer: str | None
    correct: bool | None
    error: str | None
    stop_reason: str
    prompt_tokens: int
    tokens: int
    tokens_per_second: float
    prompt_seconds: float
    generation_seconds: float
    seconds: float
    output: str
    model: ModelIdentity
    settings: BatchSettings
    forced: bool = False
    """The thinking budget ran out and the answer was forced."""
    reasoning_tokens: int = 0
    answer_tokens: int = 0

    @classmethod
    def of(
        cls,
        problem: Problem,
        solution: Solution,
        graded: tuple[bool | None, str | None],
        model: ModelIdentity,
        settings: BatchSettings,
    ) -> BatchRecord:
        """The record of `solution` to `problem`, graded (correct, error)."""
        data = solution.to_dict()
        return cls(
            id=problem.id,
            kind=problem.kind,
            task=solution.task,
            problem=problem.text,
            expected=problem.expected,
            answer=solution.answer,
            correct=graded[0],
            error=graded[1],
            stop_reason=str(solution.stop_reason),
            prompt_tokens=solution.prompt_tokens,
            tokens=solution.tokens,
            **{name: data[name] for name in TIMING_FIELDS},
            output=solution.output,
            model=model,
            settings=settings,
            forced=solution.forced,
            reasoning_tokens=solution.reasoning_tokens,
            answer_tokens=solution.answer_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; `model` and `settings` are nested objects."""
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data.update(model=self.model.to_dict(), settings=self.settings.to_dict())
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRecord:
        """A record read back; KeyError, TypeError or ValueError when it is not one."""
        model: dict[str, Any] = data["model"]
        if not isinstance(model.get("model"), str):
            raise ValueError("no model name")
        values = {
            field.name: data[field.name] for field in fields(cls) if field.name in data or field.default is MISSING
        }
        values["id"] = str(values["id"])
        values["model"] = ModelIdentity(**{f.name: model[f.name] for f in fields(ModelIdentity) if f.name in model})
        values["settings"] = BatchSettings.from_dict(data["settings"])
        return cls(**values)


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch stands after a record was written."""

    done: int
    total: int
    graded: int
    correct: int
    record: BatchRecord

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
    mean_seconds: float
    tokens_per_second: float

    @property
    def accuracy(self) -> float | None:
        """Correct / graded, None when nothing could be graded."""
        return self.correct / self.graded if self.graded else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, accuracy included."""
        return {**asdict(self), "accuracy": self.accuracy}


@dataclass(frozen=True)
class ModelSummary:
    """One model's batch: which model, where its records are, and its totals (`total`) and per kind."""

    model: ModelIdentity
    quant: str | None
    results: Path
    problems: int
    total: KindSummary
    kinds: list[KindSummary]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "model": self.model.to_dict(),
            "quant": self.quant,
            "results": str(self.results),
            "problems": self.problems,
            "finished": self.total.problems,
            **{key: value for key, value in self.total.to_dict().items() if key not in ("kind", "problems")},
            "summary": [kind.to_dict() for kind in self.kinds],
        }


def model_summary(
    model: ModelIdentity, quant: str | None, results: Path, problems: int, records: list[BatchRecord]
) -> ModelSummary:
    """The summary of one model's finished `records` out of `problems`."""
    return ModelSummary(model, quant, results, problems, summary_of(TOTAL_ROW, records), summarize(records))


def problem_prompt(problem: Problem) -> str:
    """The user message for a problem; a HumanEval stub is asked to be completed."""
    if problem.kind == "humaneval":
        return f"Complete the following Python function.\n\n```python\n{problem.text.rstrip()}\n```"
    return problem.text


def problem_seed(base_seed: int, problem_id: str) -> int:
    """A seed for one problem, derived from the batch seed and the problem id (not its position)."""
    return (base_seed + zlib.crc32(problem_id.encode("utf-8"))) % 2**31


def humaneval_program(prompt: str, answer: str, entry_point: str) -> str:
    """The code HumanEval's harness runs before the tests: the prompt, then the answer.

    A completion (the function's body) continues the prompt as in the standard harness. A
    whole function, as chat models answer, is appended after the prompt: the prompt's stub
    (a function whose body is its docstring) is redefined, and the prompt's imports and
    helper functions stay in scope.
    """
    separator = "\n\n" if _defines_function(answer, entry_point) else ""
    return f"{prompt}{separator}{answer}"


def _defines_function(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name for node in tree.body)


def grade(problem: Problem, solution: Solution, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool | None, str | None]:
    """(correct, error) for a solution: math by equivalence, HumanEval by its tests; None when ungradable.

    A HumanEval answer runs as the standard harness's program (see humaneval_program), with
    `timeout` seconds for the program and its tests.
    """
    if problem.kind == "humaneval" and problem.tests and problem.entry_point:
        if solution.answer is not None:
            solution = replace(solution, answer=humaneval_program(problem.text, solution.answer, problem.entry_point))
        result = run_solution(solution, humaneval_test_code(problem.tests, problem.entry_point), timeout)
        return result.ok, result.error or None
    if problem.expected is not None and solution.answer_kind == "boxed":
        return is_correct(solution, problem.expected), None
    return None, None


def read_results(path: Path) -> list[BatchRecord]:
    """The records of a results file; a half-written last line (from a kill) is cut off the file.

    A line that is not a record of this format raises NotResumable naming the file and line.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with path.open("r+b") as file:
            file.truncate(complete)
            file.flush()
            os.fsync(file.fileno())
    records: list[BatchRecord] = []
    for number, line in enumerate(data[:complete].decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(BatchRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise NotResumable(
                f"{path}:{number}: not a results record of this mllm-cpu (no model or settings); "
                "choose another --out, or --force to set the file aside and start anew"
            ) from None
    return records


def check_resumable(path: Path, records: list[BatchRecord], model: ModelIdentity, settings: BatchSettings) -> None:
    """Raise NotResumable naming what differs when `records` were made by another model or with other settings."""
    for record in records:
        differences = _model_differences(record.model, model) + record.settings.differences(settings)
        if differences:
            raise NotResumable(
                f"{path} holds other results ({'; '.join(differences)}); "
                "choose another --out, or add --force to set the file aside and start anew"
            )


def _model_differences(there: ModelIdentity, now: ModelIdentity) -> list[str]:
    """Why records of `there` cannot join records of `now`; a served model may move to other endpoints."""
    if there == now or (there.endpoint and now.endpoint and there.model == now.model):
        return []
    if (there.model, there.endpoint) != (now.model, now.endpoint):
        names = [f"{m.model} at {m.endpoint}" if m.endpoint else m.model for m in (there, now)]
        return [f"model {names[0]} there, {names[1]} now"]
    return [f"model {now.model} with other contents (fingerprint {there.fingerprint} there, {now.fingerprint} now)"]


def set_aside(path: Path) -> Path:
    """Rename a results file to the first free NAME.N.jsonl beside it; returns the new path."""
    number = 1
    while (aside := path.with_name(f"{path.stem}.{number}{path.suffix}")).exists():
        number += 1
    path.rename(aside)
    return aside


def _append(path: Path, record: BatchRecord) -> None:
    line = (json.dumps(record.to_dict(), ensure_ascii=False) + "\n").encode()
    with naming_path(path), path.open("ab", buffering=0) as file:
        end = file.tell()
        try:
            rest = memoryview(line)
            while rest:
                rest = rest[file.write(rest) or 0 :]
            os.fsync(file.fileno())
        except OSError:  # a full disk: no half-written record is left behind
            file.truncate(end)
            raise


def _check_unique_ids(problems: list[Problem]) -> None:
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise InputError(f"problem id {problem.id!r} appears twice; ids must be unique to resume a batch")
        seen.add(problem.id)


def finished_records(
    path: Path, problems: list[Problem], model: ModelIdentity, settings: BatchSettings
) -> list[BatchRecord]:
    """The records already in `path` for `problems`, in file order.

    NotResumable when any record of the file was made by another model or with other
    settings (see check_resumable), or when a line is not a record.
    """
    records = read_results(path)
    check_resumable(path, records, model, settings)
    wanted = {problem.id for problem in problems}
    return [record for record in records if record.id in wanted]


def run_batch(
    engine: Backend,
    problems: list[Problem],
    out_path: Path,
    *,
    task: str = AUTO_TASK,
    options: SamplingOptions | None = None,
    model: ModelIdentity | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    parallel: int = 1,
    budget: int | None = None,
    answer_tokens: int | None = None,
    on_record: Callable[[BatchProgress], None] | None = None,
    on_failure: Callable[[Problem, Exception], None] | None = None,
) -> list[BatchRecord]:
    """Solve every problem not yet in `out_path`, appending one fsynced record each; returns all records.

    `task` other than "auto" overrides the problems' own tasks. With a seed in `options`, each
    problem gets a seed derived from it and the problem's id, and its prompt is evaluated afresh,
    so an interrupted and resumed run writes the same records as an uninterrupted one. Ctrl-C
    during a problem raises KeyboardInterrupt without writing that problem. Every record names
    `model` (default: the engine's file) and the settings; a file holding another model's or
    settings' records raises NotResumable before anything is solved. `timeout` bounds each
    HumanEval answer's run. With `parallel` > 1 that many problems are solved at once (for
    endpoints) and records are written as they finish. With `on_failure`, a problem whose
    endpoint failed is reported to it and left out (a rerun solves it); without, the error is raised.
    `budget` and `answer_tokens` set a thinking budget (see mllm_cpu/budget.py).
    """
    _check_unique_ids(problems)
    options = options or engine.default_options()
    model = model or engine.identity()
    settings = BatchSettings.of(task, options, budget, answer_tokens)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    finished = {record.id: record for record in finished_records(out_path, problems, model, settings)}
    graded = sum(record.correct is not None for record in finished.values())
    correct = sum(record.correct is True for record in finished.values())

    def solve_problem(problem: Problem) -> BatchRecord:
        seeded = options if options.seed is None else replace(options, seed=problem_seed(options.seed, problem.id))
        problem_task = task if task != AUTO_TASK else (problem.task or AUTO_TASK)
        solution = solve(
            engine,
            problem_prompt(problem),
            problem_task,
            seeded,
            reuse_prefix=False,
            budget=budget,
            answer_tokens=answer_tokens,
        )
        if solution.stop_reason == StopReason.INTERRUPTED:
            raise KeyboardInterrupt
        return BatchRecord.of(problem, solution, grade(problem, solution, timeout), model, settings)

    pending = [problem for problem in problems if problem.id not in finished]
    for problem, record in solve_each(solve_problem, pending, parallel, on_failure):
        _append(out_path, record)
        finished[problem.id] = record
        graded += record.correct is not None
        correct += record.correct is True
        if on_record:
            on_record(BatchProgress(len(finished), len(problems), graded, correct, record))
    return [finished[problem.id] for problem in problems if problem.id in finished]


def summarize(records: list[BatchRecord]) -> list[KindSummary]:
    """One summary per problem kind, then one over all records (kind "all") when there are several."""
    kinds = sorted({record.kind for record in records})
    groups = [(kind, [r for r in records if r.kind == kind]) for kind in kinds]
    if len(groups) != 1:
        groups.append((TOTAL_ROW, records))
    return [summary_of(kind, group) for kind, group in groups]


def summary_of(kind: str, records: list[BatchRecord]) -> KindSummary:
    """Totals over `records`, labelled `kind`."""
    tokens = sum(r.tokens for r in records)
    seconds = sum(r.generation_seconds for r in records)
    return KindSummary(
        kind=kind,
        problems=len(records),
        graded=sum(r.correct is not None for r in records),
        correct=sum(r.correct is True for r in records),
        mean_tokens=tokens / len(records) if records else 0.0,
        mean_seconds=sum(r.seconds for r in records) / len(records) if records else 0.0,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
    )
