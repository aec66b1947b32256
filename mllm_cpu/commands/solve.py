"""`mllm-cpu solve`: one problem streamed to the terminal, or a JSONL file of problems in a batch."""

from __future__ import annotations

import re
import sys
from contextlib import AbstractContextManager, nullcontext, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax
from rich.text import Text

from mllm_cpu.backend import Backend
from mllm_cpu.batch import (
    DEFAULT_TIMEOUT,
    BatchProgress,
    BatchRecord,
    BatchStart,
    ModelSummary,
    check_results_path,
    is_stdout,
    is_stream,
    model_summary,
    read_results,
    run_batch,
)
from mllm_cpu.commands.console import err, out, print_json, print_table, progress_bars, table, terminal_safe
from mllm_cpu.commands.live_progress import LiveProgress
from mllm_cpu.commands.options import Flags, OptionSpec, with_options
from mllm_cpu.commands.stream_display import printable
from mllm_cpu.convert.atomic_file import ensure_writable_file
from mllm_cpu.convert.gguf_summary import summarize_header
from mllm_cpu.core.errors import EXIT_INTERRUPTED, EXIT_WRONG, InputError
from mllm_cpu.core.values import human_bytes
from mllm_cpu.engine import Engine, SamplingOptions, StopReason
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.problems import Problem, load_problems, read_problem, read_tests
from mllm_cpu.prompt_format import unicode_text
from mllm_cpu.sandbox import SandboxResult
from mllm_cpu.solver import AUTO_TASK, Solution, choose_task, is_correct, run_solution
from mllm_cpu.solver import solve as solve_problem
from mllm_cpu.sweep import BudgetPoint, accuracy_chart, budget_point, budget_results_path
from mllm_cpu.tasks import get_preset

TIMEOUT = OptionSpec(
    "timeout",
    ("--timeout",),
    float,
    "Seconds the sandboxed code may run (--run, --tests, and each HumanEval answer of a batch).",
    0,
    24 * 3600,
    low_open=True,
)


@with_options(repeat=("model", "endpoint"))
def solve(
    problem: Annotated[str | None, typer.Argument(help="The problem text.", show_default=False)] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="A text file with one problem, or a .jsonl file of problems (GSM8K, MATH or "
            "HumanEval records) to solve in a batch.",
        ),
    ] = None,
    task: Annotated[
        str, typer.Option(help="math, python, cpp, science, or auto (guess from the problem).")
    ] = AUTO_TASK,
    check: Annotated[
        str | None, typer.Option(help="Expected math answer: say whether the boxed answer equals it (exit 1 if not).")
    ] = None,
    run: Annotated[bool, typer.Option("--run", help="Run the extracted Python answer in the sandbox.")] = False,
    tests: Annotated[
        Path | None,
        typer.Option(help="Python file of assertions to run after the answer (implies --run; exit 1 if they fail)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help=TIMEOUT.help)] = DEFAULT_TIMEOUT,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Batch results (JSONL, appended; finished problems are skipped on a rerun). "
            "Default: PROBLEMS-results-MODEL.jsonl beside the problems file; with several --model, "
            "OUT-MODEL.jsonl for each.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Batch: when the results file holds another model's or settings' records, rename it "
            "to NAME.N.jsonl and start anew.",
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Batch: solve only the first N problems.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object, no streaming.")] = False,
    *,
    flags: Flags,
) -> None:
    """Solve a math, coding or science problem: stream the reasoning, then show the final answer.

    A .jsonl --file is solved as a batch; several --model solve it on each model and end with
    one table comparing them. Exit status: 0 when solved; 1 when --check or --tests found the
    answer wrong or missing, or the --run code failed or timed out; 130 after Ctrl-C (a batch
    keeps every finished problem and resumes on a rerun).
    """
    TIMEOUT.check(timeout)
    is_batch = file is not None and file.suffix.lower() == ".jsonl"
    if (problem is None) == (file is None):
        raise InputError("give a PROBLEM or --file FILE (one of them)")
    if is_batch and (check is not None or run or tests is not None):
        raise InputError("--check, --run and --tests are for one problem; a batch grades by its records")
    if not is_batch and (out_path is not None or limit is not None):
        raise InputError("--out and --limit are for a .jsonl batch (--file PROBLEMS.jsonl)")
    if not is_batch and (force or len(flags.models) > 1):
        raise InputError("--force and several --model are for a .jsonl batch (--file PROBLEMS.jsonl)")
    if len(set(flags.models)) < len(flags.models):
        raise InputError("the same --model is given twice")
    if check is not None and not check.strip():
        raise InputError("--check is empty: give the expected answer, e.g. --check 42")
    tests_code = read_tests(tests) if tests is not None else None
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if is_batch:
        assert file is not None
        batch_task = task if task.strip().lower() == AUTO_TASK else get_preset(task).name
        problems = load_problems(file)[:limit]
        if out_path is not None:
            check_results_path(out_path)
            if not is_stream(out_path):
                ensure_writable_file(out_path, "--out")
        job = _BatchJob(flags, problems, file, out_path, batch_task, timeout, force, json_output)
        if len(flags.budgets()) > 1:
            _solve_sweep(job)
        else:
            _solve_batches(job)
        return
    text = unicode_text(problem, "the PROBLEM argument") if problem is not None else read_problem(file) if file else ""
    if not text.strip():
        raise InputError("the problem is empty")
    preset = choose_task(task, text)
    if (run or tests is not None) and preset.language != "python":
        raise InputError(f"--run and --tests run Python answers; this is a {preset.name} problem (try --task python)")
    if check is not None and preset.answer_kind != "boxed":
        raise InputError(f"--check compares boxed answers; the {preset.name} task answers with code")
    budgets = flags.budgets()
    if len(budgets) > 1:
        raise InputError("a budget sweep (several --budget values) needs a .jsonl --file of problems")
    engine = flags.load_backend()
    options = flags.sampling(engine)
    _solve_one(
        engine,
        text,
        preset.name,
        options,
        check,
        run or tests is not None,
        tests_code,
        timeout,
        json_output,
        budgets[0] if budgets else None,
        flags.answer_tokens,
    )


def _solve_one(
    engine: Backend,
    text: str,
    task: str,
    options: SamplingOptions,
    expected: str | None,
    run: bool,
    tests: str | None,
    timeout: float,
    json_output: bool,
    budget: int | None = None,
    answer_tokens: int | None = None,
) -> None:
    if json_output:
        with _live_progress(None, task, options, budget, answer_tokens) as live:
            solution = solve_problem(
                engine, text, task, options, live.on_text, budget=budget, answer_tokens=answer_tokens
            )
    else:
        budget_text = f" · budget {budget} tokens" if budget is not None else ""
        err.print(
            f"[dim]{escape(terminal_safe(_model_label(engine.identity())))} · task {task} · "
            f"up to {options.max_tokens} tokens{budget_text}[/dim]",
            highlight=False,
        )
        with _live_progress(out, task, options, budget, answer_tokens) as live:
            solution = solve_problem(
                engine, text, task, options, live.on_text, budget=budget, answer_tokens=answer_tokens
            )
    correct = is_correct(solution, expected) if expected is not None else None
    result = run_solution(solution, tests, timeout) if run else None
    if json_output:
        print_json(_solution_json(solution, engine.identity(), expected, correct, result))
    else:
        _show_answer(solution, expected, correct, result, options)
    code = exit_code(solution, correct, result)
    if code:
        raise typer.Exit(code)


def _live_progress(
    text_console: Console | None, task: str, options: SamplingOptions, budget: int | None, answer_tokens: int | None
) -> LiveProgress:
    """The status line of one solve: ETA to the budget (or --max-tokens), then to the forced answer's limit."""
    preset = get_preset(task)
    budgeted = budget is not None and budget < options.max_tokens
    return LiveProgress(
        text_console,
        err,
        budget if budget is not None and budgeted else options.max_tokens,
        goal_label="the budget" if budgeted else "--max-tokens",
        style="dim",
        cue=preset.answer_cue if budget is not None else None,
        answer_goal=answer_tokens or preset.answer_tokens,
    )


def exit_code(solution: Solution, correct: bool | None, result: SandboxResult | None) -> int:
    """The exit status of one solved problem: 130 interrupted, 1 wrong (--check) or a failed run, else 0.

    A run fails when the answer has no code, raises, exits non-zero, its --tests fail, or it
    times out.
    """
    if solution.stop_reason == StopReason.INTERRUPTED:
        return EXIT_INTERRUPTED
    if correct is False or (result is not None and not result.ok):
        return EXIT_WRONG
    return 0


def _model_label(model: ModelIdentity) -> str:
    """The model's name, and the server for an endpoint."""
    return f"{model.model} at {model.endpoint}" if model.endpoint else model.model


def _solution_json(
    solution: Solution,
    model: ModelIdentity,
    expected: str | None,
    correct: bool | None,
    result: SandboxResult | None,
) -> dict[str, Any]:
    data = {**solution.to_dict(), "model": model.to_dict()}
    if expected is not None:
        data.update(expected=expected, correct=correct)
    if result is not None:
        data["run"] = {
            "ok": result.ok,
            "returncode": result.returncode,
            "timed_out": result.timed_out,
            "error": result.error,
            "stdout": result.stdout,
            "stderr": result.stderr,
        }
    return data


def _show_answer(
    solution: Solution,
    expected: str | None,
    correct: bool | None,
    result: SandboxResult | None,
    options: SamplingOptions,
) -> None:
    if solution.stop_reason == StopReason.INTERRUPTED:
        err.print("[yellow]stopped by Ctrl-C[/yellow]", highlight=False)
    elif solution.forced and solution.stop_reason == StopReason.LENGTH:
        err.print("[yellow]the forced answer ran out of --answer-tokens[/yellow]", highlight=False)
    elif solution.stop_reason in (StopReason.LENGTH, StopReason.CONTEXT):
        limit = (
            f"--max-tokens {options.max_tokens}" if solution.stop_reason == StopReason.LENGTH else "the context (--ctx)"
        )
        err.print(f"[yellow]stopped at {limit}; the answer may be missing[/yellow]", highlight=False)
    if solution.answer is None:
        missing = (
            f"complete ```{solution.language or ''} code block"
            if solution.answer_kind == "code"
            else "\\boxed{} answer"
        )
        out.print(Panel(f"no final answer: the output has no {escape(missing)}", title="answer", style="yellow"))
    elif solution.answer_kind == "code":
        out.print(
            Panel(
                Syntax(solution.answer, solution.language or "text", theme="ansi_dark"),
                title=f"answer ({solution.language})",
                border_style="green",
            )
        )
    else:
        title = "answer (forced at the budget)" if solution.forced else "answer"
        out.print(Panel(escape(printable(solution.answer)), title=title, border_style="green", expand=False))
    if correct is not None:
        verdict = "[bold green]correct[/bold green]" if correct else "[bold red]incorrect[/bold red]"
        out.print(f"{verdict} (expected {escape(str(expected))})", highlight=False)
    if result is not None:
        _show_run(result)
    err.print(f"[dim]{escape(_footer(solution))}[/dim]", highlight=False)


def _footer(solution: Solution) -> str:
    """The line under an answer: tokens (reasoning and answer apart), speed, time, drafting."""
    forced = " (forced)" if solution.forced else ""
    parts = [
        f"{solution.tokens} tokens: {solution.reasoning_tokens} reasoning + {solution.answer_tokens} answer{forced}",
        f"{solution.tokens_per_second:.1f} tokens/s",
        f"{solution.seconds:.1f} s",
        f"task {solution.task}",
    ]
    if solution.acceptance_rate is not None:
        parts.append(f"drafts accepted {100 * solution.acceptance_rate:.0f}%")
    if solution.speedup is not None:
        parts.append(f"speed-up {solution.speedup:.2f}x")
    return " · ".join(parts)


def _show_run(result: SandboxResult) -> None:
    if result.stdout:
        out.print(Panel(escape(result.stdout.rstrip()), title="stdout", expand=False))
    if result.stderr and not result.ok:
        err.print(Panel(escape(result.stderr.rstrip()), title="stderr", expand=False))
    if result.ok:
        out.print("[bold green]ran without errors[/bold green]", highlight=False)
    else:
        out.print(f"[bold red]failed:[/bold red] {escape(result.error)}", highlight=False)


@dataclass(frozen=True)
class _BatchJob:
    """What every batch of one `solve --file PROBLEMS.jsonl` shares: the problems and how to solve and save them."""

    flags: Flags
    problems: list[Problem]
    file: Path
    out_path: Path | None
    task: str
    timeout: float
    force: bool
    json_output: bool


def _solve_batches(job: _BatchJob) -> None:
    """Solve the problems on each --model in turn (the store's default when none), then show the results."""
    flags, problems, out_path, json_output = job.flags, job.problems, job.out_path, job.json_output
    specs = flags.models or (None,)
    budget = next(iter(flags.budgets()), None)
    summaries: list[ModelSummary] = []
    interrupted = False
    for spec in specs:
        engine = replace(flags, model=spec).load_backend()
        identity = engine.identity()
        target = _results_path(job.file, out_path, identity, several=len(specs) > 1)
        if budget is not None and out_path is None:
            target = budget_results_path(target, budget)
        if any(summary.results == target for summary in summaries) and not is_stream(target):
            raise InputError(f"two models would write to {target}; give them files with different names")
        summary, _, interrupted = _solve_batch(job, engine, identity, target, budget, parallel=flags.parallel or 1)
        summaries.append(summary)
        del engine
        if interrupted:
            break
    with _summary_output(out_path):
        if len(specs) == 1:
            _show_batch(summaries[0], interrupted, json_output)
        else:
            _show_comparison(summaries, len(problems), interrupted, json_output)
    unsolved = sum(summary.problems - summary.total.problems for summary in summaries)
    if unsolved and not interrupted:
        raise InputError(
            f"{unsolved} of {len(problems) * len(summaries)} problems not solved (see above); "
            "every finished problem is saved: run the same command again to solve the rest"
        )
    if interrupted:
        _exit_interrupted()


def _summary_output(out_path: Path | None) -> AbstractContextManager[object]:
    """Where a batch's summary goes: stderr when the records stream to stdout (--out /dev/stdout), else stdout."""
    return redirect_stdout(sys.stderr) if out_path is not None and is_stdout(out_path) else nullcontext()


def _exit_interrupted() -> NoReturn:
    """After Ctrl-C stopped a batch: say that its finished problems are kept, and exit 130."""
    err.print("every finished problem is saved; run the same command again to resume", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_INTERRUPTED)


def _solve_sweep(job: _BatchJob) -> None:
    """Solve the problems once per --budget (each in its own resumable file), then show accuracy against budget."""
    flags, problems, json_output = job.flags, job.problems, job.json_output
    if len(flags.models) > 1:
        raise InputError("a budget sweep runs one --model; sweep the models one at a time")
    engine = flags.load_backend()
    identity = engine.identity()
    base = _results_path(job.file, job.out_path, identity, several=False)
    points: list[BudgetPoint] = []
    interrupted = False
    for budget in flags.budgets():
        if not json_output:
            err.print(f"[bold]budget {budget} tokens[/bold]", highlight=False)
        target = base if is_stream(base) else budget_results_path(base, budget)
        _, records, interrupted = _solve_batch(job, engine, identity, target, budget)
        points.append(budget_point(budget, target, len(problems), records))
        if interrupted:
            break
    with _summary_output(job.out_path):
        _show_sweep(identity, points, interrupted, json_output)
    if interrupted:
        _exit_interrupted()


def _show_sweep(model: ModelIdentity, points: list[BudgetPoint], interrupted: bool, json_output: bool) -> None:
    """The accuracy-versus-budget table and chart, or JSON."""
    if json_output:
        print_json({"model": model.to_dict(), "interrupted": interrupted, "sweep": [p.to_dict() for p in points]})
        return
    print_table(
        table(
            escape(f"accuracy against thinking budget · {model.model}"),
            ["budget", "problems", "accuracy", "mean tokens", "s/problem", "forced", "results"],
            [
                [
                    p.budget,
                    f"{p.finished}/{p.problems}",
                    _percent(p.accuracy),
                    f"{p.mean_tokens:.0f}",
                    _seconds(p.mean_seconds),
                    _percent(p.forced_share),
                    escape(p.results.name),
                ]
                for p in points
            ],
        )
    )
    out.print(Text("\n".join(accuracy_chart(points))), highlight=False, soft_wrap=True)


def _results_path(file: Path, out_path: Path | None, model: ModelIdentity, several: bool) -> Path:
    """--out for one model (a stream takes every model's records); else a file per model named after it
    (beside --out or the problems file)."""
    if out_path is not None and (not several or is_stream(out_path)):
        return out_path
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.model.removesuffix(".gguf")).strip("-.") or "model"
    if out_path is not None:
        return out_path.with_name(f"{out_path.stem}-{name}{out_path.suffix or '.jsonl'}")
    return file.with_name(f"{file.stem}-results-{name}.jsonl")


def _solve_batch(
    job: _BatchJob, engine: Backend, identity: ModelIdentity, target: Path, budget: int | None, parallel: int = 1
) -> tuple[ModelSummary, list[BatchRecord], bool]:
    """Run (or resume) one model's batch with a progress bar; returns its summary, its finished records and
    whether Ctrl-C stopped it."""
    problems, task, json_output = job.problems, job.task, job.json_output
    options, answer_tokens = job.flags.sampling(engine), job.flags.answer_tokens
    columns = (
        TextColumn("solving"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[accuracy]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    already: list[BatchRecord] = []
    written: list[BatchRecord] = []
    interrupted = False
    with progress_bars(*columns, transient=json_output) as progress:
        bar: TaskID | None = None  # shown once the results file is read, so a refused file leaves no bar

        def note(message: str) -> None:
            progress.console.print(message, soft_wrap=True, highlight=False)

        def started(start: BatchStart) -> None:
            nonlocal bar
            already.extend(start.already)
            if start.aside is not None:
                aside, anew = escape(str(start.aside)), escape(str(target))
                note(f"--force: the earlier results are now in {aside}; starting {anew} anew")
            if not json_output:
                failed = sum(record.failure is not None for record in already)
                resumed = f" · resuming: {len(already)} of {len(problems)} problems already there" if already else ""
                resumed += f" ({failed} recorded as failed)" if failed else ""
                note(f"[dim]{escape(terminal_safe(identity.model))} · results in {escape(str(target))}{resumed}[/dim]")
            graded = [record for record in already if record.correct is not None]
            accuracy = _accuracy_text(sum(r.correct is True for r in graded), len(graded))
            bar = progress.add_task("solving", total=len(problems), completed=len(already), accuracy=accuracy)

        def advance(state: BatchProgress) -> None:
            written.append(state.record)
            failure = state.record.failure
            if failure is not None:
                note(f"[yellow]{escape(state.record.id)}: failed: {escape(failure)} (recorded; going on)[/yellow]")
            assert bar is not None
            progress.update(bar, completed=state.done, accuracy=_accuracy_text(state.correct, state.graded))

        def skipped(problem: Problem, error: Exception) -> None:
            note(f"[yellow]{escape(problem.id)}: not solved: {escape(str(error))}[/yellow]")

        try:
            records = run_batch(
                engine,
                problems,
                target,
                task=task,
                options=options,
                model=identity,
                timeout=job.timeout,
                parallel=parallel,
                budget=budget,
                answer_tokens=answer_tokens,
                force=job.force,
                on_start=started,
                on_record=advance,
                on_failure=skipped,
            )
        except KeyboardInterrupt:  # the file is what was saved (Ctrl-C may come between a write and its note)
            interrupted = True
            ids = {problem.id for problem in problems}
            records = already + written if is_stream(target) else [r for r in read_results(target) if r.id in ids]
    quant = summarize_header(engine.model.header).file_type if isinstance(engine, Engine) else None
    return model_summary(identity, quant, target, len(problems), records), records, interrupted


def _show_batch(summary: ModelSummary, interrupted: bool, json_output: bool) -> None:
    """One model's results: JSON, or a table by problem kind."""
    if json_output:
        print_json({**summary.to_dict(), "interrupted": interrupted})
        return
    print_table(
        table(
            escape(f"{summary.total.problems} of {summary.problems} problems · {summary.results}"),
            ["kind", "problems", "graded", "correct", "accuracy", "mean tokens", "s/problem", "tokens/s"],
            [
                [
                    s.kind,
                    s.problems,
                    s.graded,
                    s.correct,
                    _percent(s.accuracy),
                    f"{s.mean_tokens:.0f}",
                    _seconds(s.mean_seconds),
                    f"{s.tokens_per_second:.1f}",
                ]
                for s in summary.kinds
            ],
        )
    )


def _show_comparison(summaries: list[ModelSummary], problems: int, interrupted: bool, json_output: bool) -> None:
    """Several models side by side: JSON, or one table with a row per model."""
    if json_output:
        print_json(
            {"problems": problems, "interrupted": interrupted, "models": [summary.to_dict() for summary in summaries]}
        )
        return
    columns = ["model", "quant", "size", "problems", "accuracy", "mean tokens", "s/problem", "tokens/s", "results"]
    rows = [
        [
            escape(s.model.model),
            s.quant or "-",
            human_bytes(s.model.size_bytes) if s.model.size_bytes is not None else "-",
            f"{s.total.problems}/{s.problems}",
            _percent(s.total.accuracy),
            f"{s.total.mean_tokens:.0f}",
            _seconds(s.total.mean_seconds),
            f"{s.total.tokens_per_second:.1f}",
            escape(s.results.name),
        ]
        for s in summaries
    ]
    print_table(table(f"{problems} problems on {len(summaries)} models", columns, rows))


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def _seconds(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


def _accuracy_text(correct: int, graded: int) -> str:
    return f"accuracy {correct}/{graded} ({100 * correct / graded:.0f}%)" if graded else "accuracy -"
