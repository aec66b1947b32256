"""`mllm-cpu quality`: the quant ladder of one model: perplexity, KL, top-1, size (and speed) per level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mllm_cpu.bench.quality import LADDER, QualityOptions, read_text, resolve_sources, run_quality
from mllm_cpu.bench.quality_report import caption, chart, level_rows, recommendation_lines, render
from mllm_cpu.bench.report import chosen_format, write_report
from mllm_cpu.commands.bars import convert_columns, progress_bars
from mllm_cpu.commands.bench import RichBenchProgress, rich_table
from mllm_cpu.commands.console import conversion_bars, err, out, print_table
from mllm_cpu.commands.options import Flags, with_options
from mllm_cpu.core.errors import InputError


@with_options("threads")
def quality(
    sources: Annotated[
        list[str],
        typer.Argument(help="A checkpoint folder (levels converted into the store) or GGUF files of one model."),
    ],
    quant: Annotated[
        str | None, typer.Option("--quant", "-q", help=f"Levels of a checkpoint folder (default {LADDER}).")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="f32, bf16, f16 or a GGUF file (default: the lossless level of the weights)."),
    ] = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="UTF-8 text to score (default: the built-in evaluation text).")
    ] = None,
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Tokens per chunk (llama-perplexity's -c).")] = 512,
    chunks: Annotated[int | None, typer.Option(help="Score at most this many chunks (default: all).")] = None,
    speed: Annotated[bool, typer.Option("--speed", help="Also measure pp512 and tg128 per level.")] = False,
    fit_ctx: Annotated[int, typer.Option("--fit-ctx", help="Context for the board recommendations.")] = 4096,
    json_output: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV output, one row per level.")] = False,
    md_output: Annotated[bool, typer.Option("--md", help="Markdown: table, chart, recommendations.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the chosen format to this file.")] = None,
    *,
    flags: Flags,
) -> None:
    """Perplexity, KL divergence and top-1 agreement of each quant level against the lossless reference."""
    output_format = chosen_format(json_output, csv_output, md_output, out_file)
    options = QualityOptions(n_ctx=ctx, chunks=chunks, threads=flags.threads, speed=speed, fit_ctx=fit_ctx)
    options.validate()
    if out_file is not None and not out_file.parent.is_dir():
        raise InputError(f"--out {out_file}: the folder {out_file.parent} does not exist")
    evaluation = read_text(text)
    with progress_bars(*convert_columns(), transient=True, refresh_per_second=2) as bars:
        progress = RichBenchProgress(bars)
        reference_path, levels = resolve_sources(sources, quant, reference, progress, conversion_bars)
        run = run_quality(reference_path, levels, evaluation, options, progress)
    if output_format:
        rendered = render(run, output_format)
        if out_file is None:
            print(rendered, end="")
        else:
            write_report(rendered, out_file)
            err.print(f"wrote {out_file}", highlight=False)
    if not output_format or out_file is not None:
        title = "Quality against the reference (llama-perplexity definitions)"
        print_table(rich_table(title, *level_rows(run), note=caption(run)))
        out.print(chart(run), highlight=False, soft_wrap=True, markup=False)
        for line in recommendation_lines(run):
            out.print(line, highlight=False, soft_wrap=True, markup=False)
    if run.interrupted:
        raise typer.Exit(130)
