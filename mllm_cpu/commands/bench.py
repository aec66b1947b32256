"""`mllm-cpu bench`: llama-bench-style speed, memory and fit for GGUF files or synthetic models."""

from __future__ import annotations

from collections.abc import Callable
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

from mllm_cpu.bench.draft import cost_rows, measured_note, prediction_rows, run_draft_bench
from mllm_cpu.bench.endpoint import (
    EndpointRun,
    endpoint_caption,
    endpoint_rows,
    render_endpoint,
    run_endpoint_benchmark,
)
from mllm_cpu.bench.llama_session import DEFAULT_FLASH_ATTN, RUNTIME_FLASH_ATTN, parse_flash_attn
from mllm_cpu.bench.report import (
    FORMATS,
    caption,
    fit_caption,
    fit_rows,
    render,
    right_aligned,
    speed_table,
    write_report,
)
from mllm_cpu.bench.runner import BenchOptions, resolve_models, run_benchmark
from mllm_cpu.bench.synthetic_models import parse_sizes
from mllm_cpu.commands.console import (
    RichConvertProgress,
    conversion_bars,
    err,
    print_json,
    print_table,
    progress_bars,
    table,
)
from mllm_cpu.commands.options import Flags, with_options
from mllm_cpu.convert.atomic_file import ensure_writable_file
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import comma_list
from mllm_cpu.hardware import physical_cores
from mllm_cpu.store import DEFAULT_QUANT, resolve_model


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
    print_table(rich_table("Serving speed", *endpoint_rows(run), note=endpoint_caption(run)))


def _bench_draft(draft: str, target: str, threads: str | None, repetitions: int, n_gen: int, json_output: bool) -> None:
    """`bench --draft`: decode costs of draft and target, predicted and measured speed-up."""
    thread_count = int_list(threads, "-t/--threads")[0] if threads is not None else physical_cores()
    with err.status("measuring drafting") as status:
        run = run_draft_bench(
            resolve_model(draft, conversion_bars),
            resolve_model(target, conversion_bars),
            thread_count,
            repetitions=repetitions,
            real_tokens=n_gen,
            on_step=lambda text: status.update(f"measuring {text}"),
        )
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


def int_list(text: str, option: str) -> list[int]:
    """ "1,2,4" -> [1, 2, 4]; anything else is an InputError naming the option."""
    try:
        values = [int(part) for part in comma_list(text)]
    except ValueError:
        raise InputError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"{option} is empty")
    return values


def _output_format(json_output: bool, csv_output: bool, md_output: bool, out_file: Path | None) -> str | None:
    chosen = [name for name, flag in zip(FORMATS, (json_output, csv_output, md_output), strict=False) if flag]
    if len(chosen) > 1:
        raise InputError("choose one of --json, --csv and --md")
    if chosen:
        return chosen[0]
    if out_file is None:
        return None
    suffix = out_file.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise InputError(f"--out {out_file}: say the format with --json, --csv or --md (or use a .json/.csv/.md name)")


@with_options("endpoint", "api_key", "draft", repeat=("endpoint",))
def bench(
    models: Annotated[
        list[str] | None, typer.Argument(help="GGUF files, store names or checkpoint folders.", show_default=False)
    ] = None,
    synthetic: Annotated[
        str | None,
        typer.Option(
            help="Synthetic MobileLLM-R1 sizes to measure, e.g. 140m,360m,950m (converted once into the store)."
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
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Context for the fit check, memory and TTFT.")] = 4096,
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
    *,
    flags: Flags,
) -> None:
    """Measure pp/tg tokens per second (as llama-bench), load time, peak memory, TTFT and fit.

    With --endpoint, measure OpenAI-compatible servers instead: time to first token, per-request
    and aggregate decode t/s at each --concurrency (MODELS then names the served model).
    """
    output_format = _output_format(json_output, csv_output, md_output, out_file)
    if flags.draft is not None:
        if synthetic is not None or len(models or []) != 1 or flags.endpoints:
            raise InputError(
                "bench --draft DRAFT TARGET: name exactly one target model (no --synthetic, no --endpoint)"
            )
        _bench_draft(
            flags.draft, (models or [""])[0], threads, repetitions, int_list(n_gen, "-n/--n-gen")[0], json_output
        )
        return
    if flags.endpoints:
        if synthetic is not None or len(models or []) > 1:
            raise InputError("with --endpoint, name at most one served model (no --synthetic)")
        if out_file is not None:
            ensure_writable_file(out_file, "--out")
        gens = int_list(n_gen, "-n/--n-gen")
        levels = int_list(concurrency, "--concurrency")
        with err.status("measuring") as status:
            run = run_endpoint_benchmark(
                list(flags.endpoints),
                flags.api_key,
                models[0] if models else None,
                levels,
                gens[0],
                warmup=not no_warmup,
                on_step=lambda text: status.update(f"measuring {text}"),
            )
        _report_endpoints(run, output_format, out_file)
        return
    options = BenchOptions(
        prompts=int_list(n_prompt, "-p/--n-prompt"),
        gens=int_list(n_gen, "-n/--n-gen"),
        threads=int_list(threads, "-t/--threads") if threads is not None else None,
        batches=int_list(batch_size, "-b/--batch-size"),
        ubatches=int_list(ubatch_size, "-ub/--ubatch-size"),
        depths=int_list(n_depth, "-d/--n-depth"),
        flash_attn=[parse_flash_attn(value) for value in comma_list(flash_attn)],
        repetitions=repetitions,
        n_ctx=ctx,
        board=board,
        warmup=not no_warmup,
        bandwidth=not no_bandwidth,
    )
    options.validate()
    if out_file is not None:
        ensure_writable_file(out_file, "--out")
    if quant is not None and synthetic is None:
        raise InputError("--quant applies to --synthetic models only")
    sizes = parse_sizes(synthetic) if synthetic is not None else []
    levels = parse_quant_list(quant or DEFAULT_QUANT)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with progress_bars(*columns, transient=True, refresh_per_second=2) as bars:
        paths = resolve_models(models or [], sizes, levels, RichBenchProgress(bars), conversion_bars)
    with progress_bars(*columns, transient=True, auto_refresh=False) as bars:
        run = run_benchmark(paths, options, RichBenchProgress(bars))
    if _emit(lambda: render(run, output_format or ""), output_format, out_file):
        return
    title, columns, cells = speed_table(run)
    print_table(rich_table(title, columns, cells, note=caption(run)))
    fit_columns, fit_cells = fit_rows(run)
    print_table(
        rich_table(
            f"Memory fit at context {ctx} (F16 KV cache, flash attention {RUNTIME_FLASH_ATTN} as in chat and solve)",
            fit_columns,
            fit_cells,
            note=fit_caption(run),
        )
    )
