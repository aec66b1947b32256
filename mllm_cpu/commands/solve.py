"""`mllm-cpu solve`: one problem streamed to the terminal, or a JSONL file of problems in a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax

from mllm_cpu.batch import BatchProgress, read_results, run_batch, summarize
from mllm_cpu.commands.options import Flags, with_options
from mllm_cpu.console import err, out, print_json, table
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, SamplingOptions
from mllm_cpu.problems import Problem, load_problems
from mllm_cpu.sandbox import SandboxResult
from mllm_cpu.solver import AUTO_TASK, Solution, choose_task, is_correct, run_solution
from mllm_cpu.solver import solve as solve_problem
from mllm_cpu.stream_display import TerminalStream, printable
from mllm_cpu.tasks import get_preset

EXIT_WRONG = 1
EXIT_INTERRUPTED = 130


@with_options()
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
    timeout: Annotated[float, typer.Option(help="Seconds the sandboxed code may run.")] = 10.0,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Batch results (JSONL, appended; finished problems are skipped on a rerun). "
            "Default: PROBLEMS-results.jsonl beside the problems file.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Batch: solve only the first N problems.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object, no streaming.")] = False,
    *,
    flags: Flags,
) -> None:
    """Solve a math, coding or science problem: stream the reasoning, then show the final answer.

    Exit status: 0 when solved; 1 when --check or --tests found the answer wrong or missing;
    130 after Ctrl-C (a batch keeps every finished problem and resumes on a rerun).
    """
    is_batch = file is not None and file.suffix.lower() == ".jsonl"
    if (problem is None) == (file is None):
        raise InputError("give a PROBLEM or --file FILE (one of them)")
    if is_batch and (check is not None or run or tests is not None):
        raise InputError("--check, --run and --tests are for one problem; a batch grades by its records")
    if not is_batch and (out_path is not None or limit is not None):
        raise InputError("--out and --limit are for a .jsonl batch (--file PROBLEMS.jsonl)")
    if tests is not None and not tests.is_file():
        raise InputError(f"{tests}: no such file")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if is_batch:
        assert file is not None
        batch_task = task if task.strip().lower() == AUTO_TASK else get_preset(task).name
        problems = load_problems(file)[:limit]
        engine = flags.load_engine()
        options = flags.sampling(engine)
        target = out_path or file.with_name(f"{file.stem}-results.jsonl")
        _solve_batch(engine, problems, target, batch_task, options, json_output)
        return
    text = problem if problem is not None else _read_problem(file)
    if not text.strip():
        raise InputError("the problem is empty")
    preset = choose_task(task, text)
    if (run or tests is not None) and preset.language != "python":
        raise InputError(f"--run and --tests run Python answers; this is a {preset.name} problem (try --task python)")
    if check is not None and preset.answer_kind != "boxed":
        raise InputError(f"--check compares boxed answers; the {preset.name} task answers with code")
    engine = flags.load_engine()
    options = flags.sampling(engine)
    _solve_one(
        engine,
        text,
        preset.name,
        options,
        check,
        run or tests is not None,
        tests.read_text(encoding="utf-8") if tests else None,
        timeout,
        json_output,
    )


def _read_problem(file: Path | None) -> str:
    assert file is not None
    try:
        return file.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"{file}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{file}: not UTF-8 text") from None


def _solve_one(
    engine: Engine,
    text: str,
    task: str,
    options: SamplingOptions,
    expected: str | None,
    run: bool,
    tests: str | None,
    timeout: float,
    json_output: bool,
) -> None:
    if json_output:
        with err.status("solving"):
            solution = solve_problem(engine, text, task, options)
    else:
        err.print(
            f"[dim]{escape(engine.model.name)} · task {task} · up to {options.max_tokens} tokens[/dim]", highlight=False
        )
        stream = TerminalStream(out, style="dim")
        solution = solve_problem(engine, text, task, options, stream)
        stream.finish()
    correct = is_correct(solution, expected) if expected is not None else None
    result = run_solution(solution, tests, timeout) if run else None
    if json_output:
        print_json(_solution_json(solution, expected, correct, result))
    else:
        _show_answer(solution, expected, correct, result, options)
    if solution.stop_reason == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)
    if correct is False or (tests is not None and result is not None and not result.ok):
        raise typer.Exit(EXIT_WRONG)


def _solution_json(
    solution: Solution, expected: str | None, correct: bool | None, result: SandboxResult | None
) -> dict[str, Any]:
    data = solution.to_dict()
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
    if solution.stop_reason == "interrupted":
        err.print("[yellow]stopped by Ctrl-C[/yellow]", highlight=False)
    elif solution.stop_reason in ("length", "context"):
        limit = f"--max-tokens {options.max_tokens}" if solution.stop_reason == "length" else "the context (--ctx)"
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
        out.print(Panel(escape(printable(solution.answer)), title="answer", border_style="green", expand=False))
    if correct is not None:
        verdict = "[bold green]correct[/bold green]" if correct else "[bold red]incorrect[/bold red]"
        out.print(f"{verdict} (expected {escape(str(expected))})", highlight=False)
    if result is not None:
        _show_run(result)
    err.print(
        f"[dim]{solution.tokens} tokens · {solution.tokens_per_second:.1f} tokens/s · "
        f"{solution.seconds:.1f} s · task {solution.task}[/dim]",
        highlight=False,
    )


def _show_run(result: SandboxResult) -> None:
    if result.stdout:
        out.print(Panel(escape(result.stdout.rstrip()), title="stdout", expand=False))
    if result.stderr and not result.ok:
        err.print(Panel(escape(result.stderr.rstrip()), title="stderr", expand=False))
    if result.ok:
        out.print("[bold green]ran without errors[/bold green]", highlight=False)
    else:
        out.print(f"[bold red]failed:[/bold red] {escape(result.error)}", highlight=False)


def _solve_batch(
    engine: Engine, problems: list[Problem], target: Path, task: str, options: SamplingOptions, json_output: bool
) -> None:
    ids = {problem.id for problem in problems}
    already = [record for record in read_results(target) if str(record["id"]) in ids]
    graded = [record for record in already if record.get("correct") is not None]
    accuracy_text = _accuracy_text(sum(r["correct"] is True for r in graded), len(graded))
    if already and not json_output:
        err.print(
            f"resuming: {len(already)} of {len(problems)} problems already in {escape(str(target))}",
            soft_wrap=True,
            highlight=False,
        )
    columns = (
        TextColumn("solving"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[accuracy]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    interrupted = False
    with Progress(*columns, console=err, transient=json_output) as progress:
        bar = progress.add_task("solving", total=len(problems), completed=len(already), accuracy=accuracy_text)

        def advance(state: BatchProgress) -> None:
            progress.update(bar, completed=state.done, accuracy=_accuracy_text(state.correct, state.graded))

        try:
            records = run_batch(engine, problems, target, task=task, options=options, on_record=advance)
        except KeyboardInterrupt:
            interrupted = True
            records = [record for record in read_results(target) if str(record["id"]) in ids]
    summaries = summarize(records)
    if json_output:
        print_json(
            {
                "results": str(target),
                "problems": len(problems),
                "finished": len(records),
                "interrupted": interrupted,
                "summary": [{**vars(s), "accuracy": s.accuracy} for s in summaries],
            }
        )
    else:
        out.print(
            table(
                escape(f"{len(records)} of {len(problems)} problems · {target}"),
                ["kind", "problems", "graded", "correct", "accuracy", "mean tokens", "tokens/s"],
                [
                    [
                        s.kind,
                        s.problems,
                        s.graded,
                        s.correct,
                        "-" if s.accuracy is None else f"{100 * s.accuracy:.1f}%",
                        f"{s.mean_tokens:.0f}",
                        f"{s.tokens_per_second:.1f}",
                    ]
                    for s in summaries
                ],
            )
        )
    if interrupted:
        err.print(
            "every finished problem is saved; run the same command again to resume", soft_wrap=True, highlight=False
        )
        raise typer.Exit(EXIT_INTERRUPTED)


def _accuracy_text(correct: int, graded: int) -> str:
    return f"accuracy {correct}/{graded} ({100 * correct / graded:.0f}%)" if graded else "accuracy -"
