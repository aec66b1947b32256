"""`mllm-cpu solve`: one problem streamed to the terminal, or a JSONL file of problems in a batch."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from mllm_cpu.backend import Backend
from mllm_cpu.batch import DEFAULT_TIMEOUT, BatchProgress, BatchStart, ModelSummary, is_stdout
from mllm_cpu.commands.console import err, out, print_json, print_table, table, terminal_safe
from mllm_cpu.commands.live_progress import LiveProgress
from mllm_cpu.commands.options import Flags, OptionSpec, with_options
from mllm_cpu.commands.stream_display import printable
from mllm_cpu.core.errors import EXIT_INTERRUPTED, EXIT_WRONG
from mllm_cpu.core.values import human_bytes
from mllm_cpu.engine import StopReason
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.problems import Problem
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.sandbox import SandboxResult
from mllm_cpu.solve_request import BatchListener, SolveRequest, solve_batches, solve_one, solve_sweep
from mllm_cpu.solver import AUTO_TASK, Solution
from mllm_cpu.sweep import BudgetPoint, accuracy_chart
from mllm_cpu.tasks import get_preset

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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
    request = SolveRequest(
        problem=problem,
        file=file,
        task=task,
        check=check,
        run=run,
        tests=tests,
        timeout=timeout,
        out_path=out_path,
        force=force,
        limit=limit,
        models=flags.models,
        budgets=tuple(flags.budgets()),
        answer_tokens=flags.answer_tokens,
        parallel=flags.parallel,
    )
    request.validate()
    models, display = _FlagModels(flags), _Display(json_output, flags.answer_tokens)
    if request.mode == "one":
        solved = solve_one(request, models, display)
        if json_output:
            print_json(_solution_json(solved.solution, solved.model, solved.expected, solved.correct, solved.result))
        else:
            _show_answer(solved.solution, solved.expected, solved.correct, solved.result, solved.options)
        code = exit_code(solved.solution, solved.correct, solved.result)
        if code:
            raise typer.Exit(code)
        return
    if request.mode == "sweep":
        sweep = solve_sweep(request, models, display)
        with _summary_output(out_path):
            _show_sweep(sweep.model, sweep.points, sweep.interrupted, json_output)
        if sweep.interrupted:
            _exit_interrupted()
        return
    batches = solve_batches(request, models, display)
    with _summary_output(out_path):
        if len(request.models) <= 1:
            _show_batch(batches.summaries[0], batches.interrupted, json_output)
        else:
            _show_comparison(batches.summaries, batches.problems, batches.interrupted, json_output)
    batches.check_solved()
    if batches.interrupted:
        _exit_interrupted()


@dataclass(frozen=True)
class _FlagModels:
    """The models --model and --endpoint name, loaded with a spinner and sampled as the flags say."""

    flags: Flags

    def load(self, model: str | None) -> Backend:
        """Load `model` (None: the store's default), or connect to the --endpoint servers."""
        return replace(self.flags, model=model).load_backend()

    def sampling(self, backend: Backend) -> SamplingOptions:
        """The model's defaults with the sampling flags given applied on top."""
        return self.flags.sampling(backend)


@dataclass(frozen=True)
class _Display:
    """How solve shows its work: the model line and a live status while a problem streams (JSON: status
    only), a progress bar per batch, a heading per budget of a sweep."""

    json_output: bool
    answer_tokens: int | None

    @contextmanager
    def solving(
        self, model: ModelIdentity, task: str, options: SamplingOptions, budget: int | None
    ) -> Iterator[Callable[[str], None]]:
        """The model line, then the streamed text and the status line."""
        if not self.json_output:
            budget_text = f" · budget {budget} tokens" if budget is not None else ""
            err.print(
                f"[dim]{escape(terminal_safe(model.label))} · task {task} · "
                f"up to {options.max_tokens} tokens{budget_text}[/dim]",
                highlight=False,
            )
        text_console = None if self.json_output else out
        with _live_progress(text_console, task, options, budget, self.answer_tokens) as live:
            yield live.on_text

    @contextmanager
    def batch(self, model: ModelIdentity, target: Path, problems: int) -> Iterator[BatchListener]:
        """A progress bar with the accuracy so far (transient with --json)."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from mllm_cpu.commands.bars import progress_bars  # rich.progress: for batches only

        columns = (
            TextColumn("solving"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[accuracy]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with progress_bars(*columns, transient=self.json_output) as progress:
            yield _BatchBar(progress, model, target, problems, self.json_output)

    def sweep_budget(self, budget: int) -> None:
        """The heading of one budget's batch."""
        if not self.json_output:
            err.print(f"[bold]budget {budget} tokens[/bold]", highlight=False)


class _BatchBar:
    """One model's batch on a progress bar, with a note where results were set aside, a problem failed or
    was left out."""

    def __init__(
        self, progress: Progress, model: ModelIdentity, target: Path, problems: int, json_output: bool
    ) -> None:
        self.progress = progress
        self.model = model
        self.target = target
        self.problems = problems
        self.json_output = json_output
        self.bar: TaskID | None = None  # shown once the results file is read, so a refused file leaves no bar

    def note(self, message: str) -> None:
        """A line above the bar."""
        self.progress.console.print(message, soft_wrap=True, highlight=False)

    def started(self, start: BatchStart) -> None:
        """Say where the results go and what is resumed, then show the bar."""
        already = start.already
        if start.aside is not None:
            aside, anew = escape(str(start.aside)), escape(str(self.target))
            self.note(f"--force: the earlier results are now in {aside}; starting {anew} anew")
        if not self.json_output:
            failed = sum(record.failure is not None for record in already)
            resumed = f" · resuming: {len(already)} of {self.problems} problems already there" if already else ""
            resumed += f" ({failed} recorded as failed)" if failed else ""
            model, target = escape(terminal_safe(self.model.label)), escape(str(self.target))
            self.note(f"[dim]{model} · results in {target}{resumed}[/dim]")
        graded = [record for record in already if record.correct is not None]
        accuracy = _accuracy_text(sum(r.correct is True for r in graded), len(graded))
        self.bar = self.progress.add_task("solving", total=self.problems, completed=len(already), accuracy=accuracy)

    def recorded(self, state: BatchProgress) -> None:
        """Advance the bar; a failed record gets a note."""
        failure = state.record.failure
        if failure is not None:
            self.note(f"[yellow]{escape(state.record.id)}: failed: {escape(failure)} (recorded; going on)[/yellow]")
        assert self.bar is not None
        self.progress.update(self.bar, completed=state.done, accuracy=_accuracy_text(state.correct, state.graded))

    def skipped(self, problem: Problem, error: Exception) -> None:
        """A note for a problem left out."""
        self.note(f"[yellow]{escape(problem.id)}: not solved: {escape(str(error))}[/yellow]")


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
        from rich.syntax import Syntax  # pygments: for code answers only

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


def _summary_output(out_path: Path | None) -> AbstractContextManager[object]:
    """Where a batch's summary goes: stderr when the records stream to stdout (--out /dev/stdout), else stdout."""
    return redirect_stdout(sys.stderr) if out_path is not None and is_stdout(out_path) else nullcontext()


def _exit_interrupted() -> NoReturn:
    """After Ctrl-C stopped a batch: say that its finished problems are kept, and exit 130."""
    err.print("every finished problem is saved; run the same command again to resume", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_INTERRUPTED)


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
    columns = [
        *("model", "family", "quant", "size", "problems", "accuracy"),
        *("mean tokens", "s/problem", "tokens/s", "results"),
    ]
    rows = [
        [
            escape(s.model.model),
            escape(s.model.family or "-"),
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
