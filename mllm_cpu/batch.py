"""Solve a file of problems into a JSONL results file that survives interruption and resumes."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from mllm_cpu.backend import Backend
from mllm_cpu.core.errors import InputError, naming_path
from mllm_cpu.core.user_files import TooLarge, kind_of, limited_lines, not_regular, size_text
from mllm_cpu.core.values import GIB, MIB
from mllm_cpu.engine import PromptTooLong, StopReason
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.parallel import solve_each
from mllm_cpu.problems import Problem
from mllm_cpu.sampling import SCALAR_FIELDS, SamplingOptions
from mllm_cpu.sandbox import humaneval_test_code
from mllm_cpu.solver import AUTO_TASK, Solution, choose_task, is_correct, run_solution, solve

TIMING_FIELDS = ("tokens_per_second", "prompt_seconds", "generation_seconds", "seconds")
TOTAL_ROW = "all"
DEFAULT_TIMEOUT = 10.0
_T = TypeVar("_T")


class NotResumable(InputError):
    """A results file that cannot be resumed: another model's or settings' records, or lines that are not records."""


def _with_sampling_fields(cls: type[_T]) -> type[_T]:
    """Give a class, before @dataclass makes it one, the SCALAR_FIELDS of SamplingOptions (with their
    types, in their order) right after its first field."""
    first, *rest = cls.__annotations__.items()
    sampling = [(f.name, f.type) for f in fields(SamplingOptions) if f.name in SCALAR_FIELDS]
    cls.__annotations__ = dict([first, *sampling, *rest])
    return cls


@dataclass(frozen=True)
@_with_sampling_fields
class BatchSettings:
    """The settings that change a batch's answers; records made under other settings are never mixed.

    `task` is the batch's task override ("auto": each problem's own); then SamplingOptions'
    SCALAR_FIELDS (every sampling setting but the logit bias); `budget` is the thinking budget in
    tokens, None when there is none; `answer_tokens` bounds a forced answer (None: each task's default).
    """

    task: str
    budget: int | None = None
    answer_tokens: int | None = None

    @classmethod
    def of(
        cls, task: str, options: SamplingOptions, budget: int | None = None, answer_tokens: int | None = None
    ) -> BatchSettings:
        """The settings of a batch run with `task` and `options` (the sampling fields both records have)."""
        sampling = {name: getattr(options, name) for name in SCALAR_FIELDS}
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
    failure: str | None = None
    """Why the problem could not be tried (its prompt does not fit the context); such a record is
    finished, so a rerun goes on with the other problems instead of stopping at it again."""

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

    @classmethod
    def failed(
        cls, problem: Problem, task: str, failure: str, model: ModelIdentity, settings: BatchSettings
    ) -> BatchRecord:
        """The record of a problem that could not be tried: no answer, wrong when it could be graded."""
        gradable = problem.expected is not None or bool(problem.tests)
        return cls(
            id=problem.id,
            kind=problem.kind,
            task=task,
            problem=problem.text,
            expected=problem.expected,
            answer=None,
            correct=False if gradable else None,
            error=None,
            stop_reason=str(StopReason.CONTEXT),
            prompt_tokens=0,
            tokens=0,
            tokens_per_second=0.0,
            prompt_seconds=0.0,
            generation_seconds=0.0,
            seconds=0.0,
            output="",
            model=model,
            settings=settings,
            failure=failure,
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


RESULTS_FILE_LIMIT = 1 * GIB
"""The largest results file read back to resume: MAX_PROBLEMS records of about 10 KiB."""
RECORD_LIMIT = 16 * MIB
"""The longest line of a results file read back: one record, whose output fills a long context."""
_SCAN_CHUNK = 1 * MIB


def is_stream(path: Path) -> bool:
    """True when `path` takes records without being read back: this process's stdout or stderr, or /dev/null.

    False for a regular file or a path not there yet; InputError (one line) for anything else:
    a FIFO, another device, a folder or a socket. Those are no results file to append to and
    resume from (a FIFO would hang, /dev/zero and /dev/full would be read forever).
    """
    try:
        status = os.stat(path)
    except OSError:
        return False  # missing (created on the first record), or an error the open will name
    if _standard_stream(status) is not None or _is_null_device(status):
        return True
    if not stat.S_ISREG(status.st_mode):
        raise InputError(
            f"{path}: is {kind_of(status.st_mode)}, not a regular file: results are appended to a regular "
            "file and resumed from it (/dev/stdout or /dev/null take them without resuming)"
        )
    return False


def check_results_path(path: Path) -> None:
    """Before any work: InputError when `path` can be no results file (see is_stream) or another run holds it."""
    if is_stream(path) or not path.exists():
        return
    with hold_results(path):
        pass


def is_stdout(path: Path) -> bool:
    """True when `path` is this process's stdout: /dev/stdout, /proc/self/fd/1, or the file stdout goes to."""
    try:
        return _standard_stream(os.stat(path)) == 1
    except OSError:
        return False


def _standard_stream(status: os.stat_result) -> int | None:
    """1 or 2 when `status` is this process's stdout or stderr (/dev/stdout, /proc/self/fd/2, the terminal)."""
    for descriptor in (1, 2):
        try:
            if os.path.samestat(status, os.fstat(descriptor)):
                return descriptor
        except OSError:
            continue
    return None


def _is_null_device(status: os.stat_result) -> bool:
    null = os.stat(os.devnull)
    return stat.S_ISCHR(status.st_mode) and status.st_rdev == null.st_rdev


def _open_held(path: Path, *, exclusive: bool = False) -> int:
    """A descriptor of the regular file `path` (created if missing) holding its lock; InputError if another run does."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    descriptor = os.open(path, flags, 0o644)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(descriptor)
            pid = f" (pid {holder})" if holder is not None else ""
            raise InputError(
                f"{path}: in use by another run{pid}; wait for it to end, or choose another --out"
            ) from None
        return descriptor
    except BaseException:
        os.close(descriptor)
        raise


def _lock_holder(descriptor: int) -> int | None:
    """The process holding the flock of the open file `descriptor`, from Linux's /proc/locks; None if unknown."""
    status = os.fstat(descriptor)
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                # "3: FLOCK  ADVISORY  WRITE 4242 fd:01:1310834 0 EOF"
                parts = line.split()
                if len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                major, minor, inode = parts[5].split(":")
                if int(inode) == status.st_ino and os.makedev(int(major, 16), int(minor, 16)) == status.st_dev:
                    return int(parts[4])
    except (OSError, ValueError):
        return None
    return None


class ResultsFile:
    """The records of one run, held while it runs (see hold_results): a locked regular file, or a stream."""

    def __init__(self, path: Path, descriptor: int, *, stream: bool, created: bool = False) -> None:
        self.path = path
        self.stream = stream
        """Records are written and never read back: stdout, stderr or /dev/null."""
        self._descriptor = descriptor
        self._created = created

    def read(self) -> list[BatchRecord]:
        """The records in the file (none for a stream); a half-written last line (from a kill) is cut off.

        A line that is not a record of this format raises NotResumable naming the file and line
        (before anything is cut, so another kind of file is left as it was); so does a file past
        RESULTS_FILE_LIMIT or a line past RECORD_LIMIT (nothing more is read).
        """
        if self.stream:
            return []
        size = self._check_size()
        complete = _end_of_last_line(self._descriptor, size)
        records: list[BatchRecord] = []
        offset = 0
        os.lseek(self._descriptor, 0, os.SEEK_SET)
        with open(self._descriptor, "rb", closefd=False) as file:
            lines = limited_lines(file, self.path, RECORD_LIMIT, "a results record")
            try:
                while offset < complete:  # past `complete` is a half-written last line, never read
                    number, line = next(lines, (0, b""))
                    if not line:
                        break
                    offset += len(line)
                    if line.strip():
                        records.append(self._record(number, line))
            except TooLarge as error:
                raise NotResumable(f"{error}; choose another --out, or --force to set the file aside") from None
        if complete < size:
            os.ftruncate(self._descriptor, complete)
            os.fsync(self._descriptor)
        return records

    def _check_size(self) -> int:
        """The file's size; NotResumable past RESULTS_FILE_LIMIT."""
        size = os.fstat(self._descriptor).st_size
        if size > RESULTS_FILE_LIMIT:
            raise NotResumable(
                f"{self.path}: larger than {size_text(RESULTS_FILE_LIMIT)}, the limit for a results file to resume; "
                "choose another --out, or --force to set the file aside"
            )
        return size

    def _record(self, number: int, line: bytes) -> BatchRecord:
        try:
            return BatchRecord.from_dict(json.loads(line.decode("utf-8", errors="replace")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, RecursionError):
            raise NotResumable(
                f"{self.path}:{number}: not a results record of this mllm-cpu (no model or settings); "
                "choose another --out, or --force to set the file aside and start anew"
            ) from None

    def append(self, record: BatchRecord) -> None:
        """Write one record as a line; in a file, fsynced, and a failed write (a full disk) leaves no part of it."""
        line = (json.dumps(record.to_dict(), ensure_ascii=False) + "\n").encode()
        with naming_path(self.path):
            if self.stream:
                _write_all(self._descriptor, line)
                return
            end = os.fstat(self._descriptor).st_size
            try:
                _write_all(self._descriptor, line)
                os.fsync(self._descriptor)
            except OSError:
                os.ftruncate(self._descriptor, end)
                raise

    def set_aside(self) -> Path:
        """Rename the file to the first free NAME.N.jsonl beside it and hold a new, empty one; returns the new name."""
        number = 1
        while (aside := self.path.with_name(f"{self.path.stem}.{number}{self.path.suffix}")).exists():
            number += 1
        self.path.rename(aside)
        descriptor = _open_held(self.path, exclusive=True)
        os.close(self._descriptor)
        self._descriptor, self._created = descriptor, True
        return aside

    def close(self) -> None:
        """Let go of the file (its lock ends); a file this run created and left empty is removed."""
        if self.stream:
            return
        status = os.fstat(self._descriptor)
        if self._created and status.st_size == 0 and _names(self.path, status):
            self.path.unlink()
        os.close(self._descriptor)


@contextmanager
def hold_results(path: Path) -> Iterator[ResultsFile]:
    """The results file `path` for one run: a regular file locked against other runs until the block ends
    (created when missing, removed again if it stays empty), or a stream (see is_stream).

    InputError when another run holds the file, naming that run's process where Linux tells it.
    """
    if is_stream(path):
        standard = _standard_stream(os.stat(path))
        descriptor = standard if standard is not None else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            yield ResultsFile(path, descriptor, stream=True)
        finally:
            if standard is None:
                os.close(descriptor)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not os.path.lexists(path)
    results = ResultsFile(path, _open_held(path), stream=False, created=created)
    try:
        yield results
    finally:
        results.close()


def _names(path: Path, status: os.stat_result) -> bool:
    """True when `path` still names the file of `status`."""
    try:
        return os.path.samestat(status, os.stat(path))
    except OSError:
        return False


def _end_of_last_line(descriptor: int, size: int) -> int:
    """The offset just past the file's last newline (0 when it has none), read backwards in chunks."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN_CHUNK)
        chunk = os.pread(descriptor, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _write_all(descriptor: int, data: bytes) -> None:
    rest = memoryview(data)
    while rest:
        rest = rest[os.write(descriptor, rest) :]


def read_results(path: Path) -> list[BatchRecord]:
    """The records of a results file (none when it is missing), held against other runs while it is read
    (see ResultsFile.read)."""
    if not os.path.lexists(path):
        return []
    with hold_results(path) as results:
        return results.read()


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
        return [f"model {there.source} there, {now.source} now"]
    return [f"model {now.model} with other contents (fingerprint {there.fingerprint} there, {now.fingerprint} now)"]


def _check_unique_ids(problems: list[Problem]) -> None:
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise InputError(f"problem id {problem.id!r} appears twice; ids must be unique to resume a batch")
        seen.add(problem.id)


def _resumed(
    results: ResultsFile, model: ModelIdentity, settings: BatchSettings, force: bool
) -> tuple[list[BatchRecord], Path | None]:
    """The records to resume from, and where `force` set the file aside when it held other results."""
    try:
        records = results.read()
        check_resumable(results.path, records, model, settings)
    except NotResumable:
        if not force:
            raise
        return [], results.set_aside()
    return records, None


@dataclass(frozen=True)
class BatchStart:
    """What a batch found before solving: the records already there, and where --force moved other results."""

    already: list[BatchRecord]
    aside: Path | None


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
    force: bool = False,
    on_start: Callable[[BatchStart], None] | None = None,
    on_record: Callable[[BatchProgress], None] | None = None,
    on_failure: Callable[[Problem, Exception], None] | None = None,
) -> list[BatchRecord]:
    """Solve every problem not yet in `out_path`, appending one fsynced record each; returns all records.

    `task` other than "auto" overrides the problems' own tasks. With a seed in `options`, each
    problem gets a seed derived from it and the problem's id, and its prompt is evaluated afresh,
    so an interrupted and resumed run writes the same records as an uninterrupted one. Ctrl-C
    during a problem raises KeyboardInterrupt without writing that problem. Every record names
    `model` (default: the engine's file) and the settings; a file holding another model's or
    settings' records raises NotResumable before anything is solved, unless `force` sets it
    aside (renamed, see ResultsFile.set_aside). The file is locked for the whole run (a second
    run on it fails at once); a stream `out_path` (stdout, /dev/null) is written, never read.
    `on_start` hears what was found before solving. `timeout` bounds each HumanEval answer's
    run. With `parallel` > 1 that many problems are solved at once (over endpoints, or decoded
    together by a local model's runner) and records are written as they finish. A problem whose
    prompt does not fit the context is recorded as failed (`failure`) and never tried again on this
    file. With `on_failure`, a problem whose reply failed (an endpoint's error, a runner's crash) is
    reported to it and left out (a rerun solves it); without, the error is raised.
    `budget` and `answer_tokens` set a thinking budget (see mllm_cpu/budget.py).
    """
    _check_unique_ids(problems)
    options = options or engine.default_options()
    model = model or engine.identity()
    settings = BatchSettings.of(task, options, budget, answer_tokens)

    def solve_problem(problem: Problem) -> Solution | BatchRecord:
        """The problem's solution (graded by the caller's thread, where math-verify's time limit works), or
        the failed record of a prompt too long for the context."""
        seeded = options if options.seed is None else replace(options, seed=problem_seed(options.seed, problem.id))
        problem_task = task if task != AUTO_TASK else (problem.task or AUTO_TASK)
        prompt = problem_prompt(problem)
        try:
            solution = solve(
                engine,
                prompt,
                problem_task,
                seeded,
                reuse_prefix=False,
                budget=budget,
                answer_tokens=answer_tokens,
            )
        except PromptTooLong as error:
            return BatchRecord.failed(problem, choose_task(problem_task, prompt).name, str(error), model, settings)
        if solution.stop_reason == StopReason.INTERRUPTED:
            raise KeyboardInterrupt
        return solution

    wanted = {problem.id for problem in problems}
    with hold_results(out_path) as results:
        records, aside = _resumed(results, model, settings, force)
        finished = {record.id: record for record in records if record.id in wanted}
        if on_start:
            on_start(BatchStart(list(finished.values()), aside))
        graded = sum(record.correct is not None for record in finished.values())
        correct = sum(record.correct is True for record in finished.values())
        pending = [problem for problem in problems if problem.id not in finished]
        for problem, outcome in solve_each(solve_problem, pending, parallel, on_failure):
            record = (
                outcome
                if isinstance(outcome, BatchRecord)
                else BatchRecord.of(problem, outcome, grade(problem, outcome, timeout), model, settings)
            )
            results.append(record)
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
