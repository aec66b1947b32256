"""`mllm-cpu bench`: llama-bench-style speed, memory and fit for GGUF files or synthetic models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mllm_cpu.bench.draft import DraftBench, cost_rows, measured_note, prediction_rows
from mllm_cpu.bench.endpoint import EndpointRun, endpoint_caption, endpoint_rows, render_endpoint
from mllm_cpu.bench.llama_session import DEFAULT_FLASH_ATTN, RUNTIME_FLASH_ATTN
from mllm_cpu.bench.parallel import fit_rows as parallel_fit_rows
from mllm_cpu.bench.report import caption, fit_caption, fit_rows, render, right_aligned, speed_table, write_report
from mllm_cpu.bench.request import BenchRequest, bench_draft, bench_endpoints, bench_local, bench_parallel
from mllm_cpu.bench.results import BenchRun
from mllm_cpu.bench.runner import BENCH_CONTEXT, BenchProgress
from mllm_cpu.commands.bars import RichConvertProgress, progress_bars
from mllm_cpu.commands.console import conversion_bars, err, print_json, print_table, table
from mllm_cpu.commands.options import Flags, with_options
from mllm_cpu.convert.synthetic import SYNTHETIC_SPECS
from mllm_cpu.store import DEFAULT_QUANT


class RichBenchProgress(RichConvertProgress):
    """Conversion bars, then one bar over all measurement steps, redrawn at each step (between
    timed runs, so that no drawing competes with the measured threads; see docs/DESIGN.md)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(progress)
        self.bench_task: TaskID | None = None
        self.note_task: TaskID | None = None

    def begin(self, total_steps: int) -> None:
        if self.note_task is not None:
            self.progress.remove_task(self.note_task)
            self.note_task = None
        self.bench_task = self.progress.add_task("benchmark", total=total_steps)
        self.progress.refresh()

    def stage(self, description: str) -> None:
        if self.bench_task is not None:
            self.progress.update(self.bench_task, description=description, refresh=True)

    def advance(self) -> None:
        if self.bench_task is not None:
            self.progress.advance(self.bench_task)
            self.progress.refresh()

    def note(self, text: str) -> None:
        if self.note_task is None:
            self.note_task = self.progress.add_task(text, total=None)
        else:
            self.progress.update(self.note_task, description=text)


def rich_table(title: str, columns: list[str], rows: list[list[str]], *, note: str | None = None) -> Table:
    """A rich table with llama-bench's right-aligned columns (and every numeric one)."""
    return table(
        title, columns, [list(row) for row in rows], caption=note, right=[c for c in columns if right_aligned(c)]
    )


class _BenchBars:
    """The bars of a local benchmark: conversion redrawn twice a second, then measurement redrawn only
    between timed runs."""

    def __init__(self) -> None:
        self.columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )

    @contextmanager
    def preparing(self) -> Iterator[BenchProgress]:
        """Bars while models are resolved and converted."""
        with progress_bars(*self.columns, transient=True, refresh_per_second=2) as bars:
            yield RichBenchProgress(bars)

    @contextmanager
    def measuring(self) -> Iterator[BenchProgress]:
        """The bar over the measurement steps, without a drawing thread."""
        with progress_bars(*self.columns, transient=True, auto_refresh=False) as bars:
            yield RichBenchProgress(bars)


def _emit(rendered: Callable[[], str], output_format: str | None, out_file: Path | None) -> bool:
    """Print a report in --json/--csv/--md on stdout (True: nothing else to show) or write it to --out."""
    if output_format and out_file is None:
        print(rendered(), end="")
        return True
    if output_format and out_file is not None:
        write_report(rendered(), out_file)
        err.print(f"wrote {out_file}", highlight=False)
    return False


def _report_endpoints(run: EndpointRun, output_format: str | None, out_file: Path | None) -> None:
    """An endpoint run in the chosen format, on stdout or into --out, else as a table."""
    if _emit(lambda: render_endpoint(run, output_format or ""), output_format, out_file):
        return
    title = "Batched decoding" if run.fits else "Serving speed"
    print_table(rich_table(title, *endpoint_rows(run), note=endpoint_caption(run)))
    if run.fits:
        print_table(rich_table("Memory fit", *parallel_fit_rows(run.fits), note="KV cache: every sequence's own"))


def _report_draft(run: DraftBench, json_output: bool) -> None:
    """`bench --draft`: JSON, or the decode costs and the predicted speed-up beside the measured one."""
    if json_output:
        print_json(run.to_dict())
        return
    print_table(
        rich_table(
            f"Drafting costs ({run.threads} threads)", *cost_rows(run), note=f"{run.draft} drafting for {run.target}"
        )
    )
    formula = "(1 - a^(k+1)) / (1 - a) / ((k c_draft + c_verify(k)) / c_target)"
    print_table(rich_table("Predicted speed-up", *prediction_rows(run), note=f"{formula}\n{measured_note(run)}"))


def _report_local(run: BenchRun, output_format: str | None, out_file: Path | None) -> None:
    """A local run in the chosen format, on stdout or into --out, else as the speed and memory fit tables."""
    if _emit(lambda: render(run, output_format or ""), output_format, out_file):
        return
    title, columns, cells = speed_table(run)
    print_table(rich_table(title, columns, cells, note=caption(run)))
    fit_columns, fit_cells = fit_rows(run)
    print_table(
        rich_table(
            f"Memory fit at context {', '.join(map(str, sorted({m.fit.n_ctx for m in run.models if m.fit})))} "
            f"(F16 KV cache, flash attention {RUNTIME_FLASH_ATTN} as in chat and solve)",
            fit_columns,
            fit_cells,
            note=fit_caption(run),
        )
    )


@with_options("endpoint", "api_key", "draft", repeat=("endpoint",))
def bench(
    models: Annotated[
        list[str] | None, typer.Argument(help="GGUF files, store names or checkpoint folders.", show_default=False)
    ] = None,
    synthetic: Annotated[
        str | None,
        typer.Option(
            help=f"Synthetic MobileLLM sizes to measure ({', '.join(SYNTHETIC_SPECS)}), e.g. 140m,v1-125m "
            "(converted once into the store)."
        ),
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option("--quant", "-q", help=f"Quant levels of the synthetic models (default {DEFAULT_QUANT})."),
    ] = None,
    n_prompt: Annotated[str, typer.Option("--n-prompt", "-p", help="Prompt lengths (pp tests), comma list.")] = "512",
    n_gen: Annotated[str, typer.Option("--n-gen", "-n", help="Generation lengths (tg tests), comma list.")] = "128",
    threads: Annotated[
        str | None,
        typer.Option(
            "--threads", "-t", help="Thread counts, comma list (default: the board's cores, at most this machine's)."
        ),
    ] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="n_batch values for pp, comma list.")] = "2048",
    ubatch_size: Annotated[str, typer.Option("--ubatch-size", "-ub", help="n_ubatch values, comma list.")] = "512",
    n_depth: Annotated[
        str, typer.Option("--n-depth", "-d", help="Tokens of context before each test (tg128 @ d512), comma list.")
    ] = "0",
    flash_attn: Annotated[
        str,
        typer.Option(
            "--flash-attn",
            "-fa",
            help="Flash attention on, off or auto (llama-bench's default), comma list; chat and solve run with off.",
        ),
    ] = DEFAULT_FLASH_ATTN,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", help="Timed repetitions per test.")] = 5,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx",
            "-c",
            help=f"Context for the fit check, memory and TTFT (default {BENCH_CONTEXT}, or a model's trained "
            "context if shorter).",
            show_default=False,
        ),
    ] = None,
    board: Annotated[str, typer.Option(help="rpi4 (4 GB), rpi5 (8 GB), pi-zero-2 (512 MB) or laptop.")] = "laptop",
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="Skip the warm-up runs.")] = False,
    no_bandwidth: Annotated[
        bool, typer.Option("--no-bandwidth", help="Skip the memory bandwidth measurement (no roofline columns).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="JSON output (every repetition's samples).")] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV output, one row per test.")] = False,
    md_output: Annotated[bool, typer.Option("--md", help="Markdown tables.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the chosen format to this file.")] = None,
    concurrency: Annotated[str, typer.Option(help="With --endpoint: requests sent at once, comma list.")] = "1,2,4,8",
    parallel: Annotated[
        str | None,
        typer.Option(
            help="Batched decoding of one local MODEL: sequences decoded together, comma list (e.g. 1,2,4,8); "
            "--ctx is each sequence's context.",
            show_default=False,
        ),
    ] = None,
    *,
    flags: Flags,
) -> None:
    """Measure pp/tg tokens per second (as llama-bench), load time, peak memory, TTFT and fit.

    With --endpoint, measure OpenAI-compatible servers instead: time to first token, per-request
    and aggregate decode t/s at each --concurrency (MODELS then names the served model). With
    --parallel, the same for one local model decoding N sequences together, and the memory of
    N sequences' KV caches on --board.
    """
    request = BenchRequest(
        models=tuple(models or ()),
        synthetic=synthetic,
        quant=quant,
        n_prompt=n_prompt,
        n_gen=n_gen,
        threads=threads,
        batch_size=batch_size,
        ubatch_size=ubatch_size,
        n_depth=n_depth,
        flash_attn=flash_attn,
        repetitions=repetitions,
        n_ctx=ctx,
        board=board,
        warmup=not no_warmup,
        bandwidth=not no_bandwidth,
        json_output=json_output,
        csv_output=csv_output,
        md_output=md_output,
        out_file=out_file,
        concurrency=concurrency,
        endpoints=tuple(flags.endpoints),
        api_key=flags.api_key,
        draft=flags.draft,
        parallel=parallel,
    )
    request.validate()
    if request.mode == "draft":
        with err.status("measuring drafting") as status:
            draft_run = bench_draft(
                request, on_step=lambda text: status.update(f"measuring {text}"), display=conversion_bars
            )
        _report_draft(draft_run, json_output)
    elif request.mode == "endpoint":
        with err.status("measuring") as status:
            endpoint_run = bench_endpoints(request, on_step=lambda text: status.update(f"measuring {text}"))
        _report_endpoints(endpoint_run, request.output_format(), out_file)
    elif request.mode == "parallel":
        with err.status("measuring") as status:
            parallel_run = bench_parallel(
                request, on_step=lambda text: status.update(f"measuring {text}"), display=conversion_bars
            )
        _report_endpoints(parallel_run, request.output_format(), out_file)
    else:
        _report_local(bench_local(request, _BenchBars(), conversion_bars), request.output_format(), out_file)
