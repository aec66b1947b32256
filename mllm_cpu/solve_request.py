"""What `mllm-cpu solve` was asked for, checked before any file is read, and one function per mode:
one problem (`solve_one`), a .jsonl batch on each --model (`solve_batches`) and a budget sweep
(`solve_sweep`). The caller loads models through a `ModelSource` and shows the work through a
`SolveDisplay`; nothing here prints."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from mllm_cpu.backend import Backend, BatchedBackend
from mllm_cpu.batch import (
    DEFAULT_TIMEOUT,
    BatchProgress,
    BatchRecord,
    BatchStart,
    ModelSummary,
    check_results_path,
    is_stream,
    model_summary,
    read_results,
    run_batch,
)
from mllm_cpu.convert.atomic_file import ensure_writable_file
from mllm_cpu.convert.gguf_summary import summarize_header
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.problems import Problem, load_problems, read_problem, read_tests
from mllm_cpu.prompt_format import unicode_text
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.sandbox import SandboxResult
from mllm_cpu.solver import AUTO_TASK, Solution, choose_task, is_correct, run_solution, solve
from mllm_cpu.sweep import BudgetPoint, budget_point, budget_results_path
from mllm_cpu.tasks import get_preset

SolveMode = Literal["one", "batch", "sweep"]


@dataclass(frozen=True)
class SolveRequest:
    """What `mllm-cpu solve` was asked for; `models` and `budgets` hold every --model and --budget value."""

    problem: str | None = None
    file: Path | None = None
    task: str = AUTO_TASK
    check: str | None = None
    run: bool = False
    tests: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    out_path: Path | None = None
    force: bool = False
    limit: int | None = None
    models: tuple[str, ...] = ()
    budgets: tuple[int, ...] = ()
    answer_tokens: int | None = None
    parallel: int | None = None

    @property
    def is_batch(self) -> bool:
        """A .jsonl --file: a batch of problems."""
        return self.file is not None and self.file.suffix.lower() == ".jsonl"

    @property
    def mode(self) -> SolveMode:
        """One problem, a batch (on each --model), or a sweep (a batch per --budget)."""
        if not self.is_batch:
            return "one"
        return "sweep" if len(self.budgets) > 1 else "batch"

    @property
    def model(self) -> str | None:
        """The first --model, None for the store's default."""
        return self.models[0] if self.models else None

    @property
    def runs_code(self) -> bool:
        """--run or --tests: the Python answer runs in the sandbox."""
        return self.run or self.tests is not None

    @property
    def batch_task(self) -> str:
        """The task every problem of a batch is solved as: a preset's name, or "auto" for each problem's own."""
        return self.task if self.task.strip().lower() == AUTO_TASK else get_preset(self.task).name

    def validate(self) -> None:
        """InputError for flags that do not go together, an empty --check, a --limit below 1 or an unknown
        --task, before any file is read."""
        if (self.problem is None) == (self.file is None):
            raise InputError("give a PROBLEM or --file FILE (one of them)")
        if self.is_batch and (self.check is not None or self.runs_code):
            raise InputError("--check, --run and --tests are for one problem; a batch grades by its records")
        if not self.is_batch and (self.out_path is not None or self.limit is not None):
            raise InputError("--out and --limit are for a .jsonl batch (--file PROBLEMS.jsonl)")
        if not self.is_batch and (self.force or len(self.models) > 1):
            raise InputError("--force and several --model are for a .jsonl batch (--file PROBLEMS.jsonl)")
        if len(set(self.models)) < len(self.models):
            raise InputError("the same --model is given twice")
        if self.check is not None and not self.check.strip():
            raise InputError("--check is empty: give the expected answer, e.g. --check 42")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        if self.task.strip().lower() != AUTO_TASK:
            get_preset(self.task)
        if len(self.budgets) > 1 and not self.is_batch:
            raise InputError("a budget sweep (several --budget values) needs a .jsonl --file of problems")
        if len(self.budgets) > 1 and len(self.models) > 1:
            raise InputError("a budget sweep runs one --model; sweep the models one at a time")


class ModelSource(Protocol):
    """Loads the models a request names and gives their sampling options (the CLI's shared flags)."""

    def load(self, model: str | None) -> Backend:
        """The model `model` names (None: the store's default), or the endpoints serving it."""

    def sampling(self, backend: Backend) -> SamplingOptions:
        """The sampling options to solve with on `backend`."""


class BatchListener(Protocol):
    """Hears how one model's batch goes."""

    def started(self, start: BatchStart) -> None:
        """The results file was read: the records already there, and where --force set other results aside."""

    def recorded(self, state: BatchProgress) -> None:
        """A record was written."""

    def skipped(self, problem: Problem, error: Exception) -> None:
        """A problem was left out (its endpoint failed); a rerun solves it."""


class SolveDisplay(Protocol):
    """Shows a solve while it runs."""

    def solving(
        self, model: ModelIdentity, task: str, options: SamplingOptions, budget: int | None
    ) -> AbstractContextManager[Callable[[str], None]]:
        """One problem is solved within the context; its value receives the streamed text."""

    def batch(self, model: ModelIdentity, target: Path, problems: int) -> AbstractContextManager[BatchListener]:
        """One model's batch of `problems` into `target` runs within the context; its value hears how it goes."""

    def sweep_budget(self, budget: int) -> None:
        """A sweep goes on with the batch of this budget."""


@dataclass(frozen=True)
class SolvedProblem:
    """One problem solved: the solution, the model and sampling that made it, and its grade or run."""

    solution: Solution
    model: ModelIdentity
    options: SamplingOptions
    expected: str | None
    correct: bool | None
    result: SandboxResult | None


def solve_one(request: SolveRequest, models: ModelSource, display: SolveDisplay) -> SolvedProblem:
    """Read the problem of a validated request, check it suits --run, --tests and --check, solve it, then
    grade (--check) or run (--run, --tests) the answer."""
    tests = read_tests(request.tests) if request.tests is not None else None
    if request.problem is not None:
        text = unicode_text(request.problem, "the PROBLEM argument")
    else:
        assert request.file is not None
        text = read_problem(request.file)
    if not text.strip():
        raise InputError("the problem is empty")
    preset = choose_task(request.task, text)
    if request.runs_code and preset.language != "python":
        raise InputError(f"--run and --tests run Python answers; this is a {preset.name} problem (try --task python)")
    if request.check is not None and preset.answer_kind != "boxed":
        raise InputError(f"--check compares boxed answers; the {preset.name} task answers with code")
    backend = models.load(request.model)
    options = models.sampling(backend)
    identity = backend.identity()
    budget = request.budgets[0] if request.budgets else None
    try:
        with display.solving(identity, preset.name, options, budget) as on_text:
            solution = solve(
                backend, text, preset.name, options, on_text, budget=budget, answer_tokens=request.answer_tokens
            )
    finally:
        _release(backend)
    correct = is_correct(solution, request.check) if request.check is not None else None
    result = run_solution(solution, tests, request.timeout) if request.runs_code else None
    return SolvedProblem(solution, identity, options, request.check, correct, result)


@dataclass(frozen=True)
class BatchesOutcome:
    """The batches of one `solve --file PROBLEMS.jsonl`: a summary per model solved, and whether Ctrl-C
    stopped them."""

    problems: int
    summaries: list[ModelSummary]
    interrupted: bool

    def check_solved(self) -> None:
        """InputError when problems were left unsolved (their endpoint failed) and Ctrl-C did not stop the run."""
        unsolved = sum(summary.problems - summary.total.problems for summary in self.summaries)
        if unsolved and not self.interrupted:
            raise InputError(
                f"{unsolved} of {self.problems * len(self.summaries)} problems not solved (see above); "
                "every finished problem is saved: run the same command again to solve the rest"
            )


def solve_batches(request: SolveRequest, models: ModelSource, display: SolveDisplay) -> BatchesOutcome:
    """Solve the problems of a validated batch request on each --model in turn (the store's default when
    none), each into its own results file unless --out is a stream; stops after Ctrl-C."""
    problems = _batch_problems(request)
    specs = request.models or (None,)
    budget = request.budgets[0] if request.budgets else None
    summaries: list[ModelSummary] = []
    interrupted = False
    for spec in specs:
        backend = models.load(spec)
        identity = backend.identity()
        target = _results_path(request, identity, several=len(specs) > 1)
        if budget is not None and request.out_path is None:
            target = budget_results_path(target, budget)
        if any(summary.results == target for summary in summaries) and not is_stream(target):
            raise InputError(f"two models would write to {target}; give them files with different names")
        try:
            summary, _, interrupted = _model_batch(
                request, problems, models, backend, target, budget, display, parallel=request.parallel or 1
            )
        finally:
            _release(backend)
        summaries.append(summary)
        del backend
        if interrupted:
            break
    return BatchesOutcome(len(problems), summaries, interrupted)


@dataclass(frozen=True)
class SweepOutcome:
    """A budget sweep: the model, one point per budget solved, and whether Ctrl-C stopped it."""

    model: ModelIdentity
    points: list[BudgetPoint]
    interrupted: bool


def solve_sweep(request: SolveRequest, models: ModelSource, display: SolveDisplay) -> SweepOutcome:
    """Solve the problems of a validated sweep request once per --budget, each in its own resumable file."""
    problems = _batch_problems(request)
    backend = models.load(request.model)
    identity = backend.identity()
    base = _results_path(request, identity, several=False)
    points: list[BudgetPoint] = []
    interrupted = False
    try:
        for budget in request.budgets:
            display.sweep_budget(budget)
            target = base if is_stream(base) else budget_results_path(base, budget)
            _, records, interrupted = _model_batch(
                request, problems, models, backend, target, budget, display, parallel=request.parallel or 1
            )
            points.append(budget_point(budget, target, len(problems), records))
            if interrupted:
                break
    finally:
        _release(backend)
    return SweepOutcome(identity, points, interrupted)


def _release(backend: Backend) -> None:
    """Stop a local model's runner process (the other backends hold no process)."""
    if isinstance(backend, BatchedBackend):
        backend.close()


def _batch_problems(request: SolveRequest) -> list[Problem]:
    """The first --limit problems of the request's file, once --out is known to take the results."""
    assert request.file is not None
    problems = load_problems(request.file)[: request.limit]
    if request.out_path is not None:
        check_results_path(request.out_path)
        if not is_stream(request.out_path):
            ensure_writable_file(request.out_path, "--out")
    return problems


def _results_path(request: SolveRequest, model: ModelIdentity, several: bool) -> Path:
    """--out for one model (a stream takes every model's records); else a file per model named after it
    (beside --out or the problems file)."""
    out_path = request.out_path
    if out_path is not None and (not several or is_stream(out_path)):
        return out_path
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.model.removesuffix(".gguf")).strip("-.") or "model"
    if out_path is not None:
        return out_path.with_name(f"{out_path.stem}-{name}{out_path.suffix or '.jsonl'}")
    assert request.file is not None
    return request.file.with_name(f"{request.file.stem}-results-{name}.jsonl")


def _model_batch(
    request: SolveRequest,
    problems: list[Problem],
    models: ModelSource,
    backend: Backend,
    target: Path,
    budget: int | None,
    display: SolveDisplay,
    parallel: int = 1,
) -> tuple[ModelSummary, list[BatchRecord], bool]:
    """Run (or resume) one model's batch into `target`: its summary, its finished records, and whether
    Ctrl-C stopped it."""
    options = models.sampling(backend)
    identity = backend.identity()
    already: list[BatchRecord] = []
    written: list[BatchRecord] = []
    interrupted = False
    with display.batch(identity, target, len(problems)) as listener:

        def started(start: BatchStart) -> None:
            already.extend(start.already)
            listener.started(start)

        def recorded(state: BatchProgress) -> None:
            written.append(state.record)
            listener.recorded(state)

        try:
            records = run_batch(
                backend,
                problems,
                target,
                task=request.batch_task,
                options=options,
                model=identity,
                timeout=request.timeout,
                parallel=parallel,
                budget=budget,
                answer_tokens=request.answer_tokens,
                force=request.force,
                on_start=started,
                on_record=recorded,
                on_failure=listener.skipped,
            )
        except KeyboardInterrupt:  # the file is what was saved (Ctrl-C may come between a write and its note)
            interrupted = True
            ids = {problem.id for problem in problems}
            records = already + written if is_stream(target) else [r for r in read_results(target) if r.id in ids]
    local = backend if isinstance(backend, (Engine, BatchedBackend)) else None
    quant = summarize_header(local.model.header).file_type if local is not None else None
    return model_summary(identity, quant, target, len(problems), records), records, interrupted
