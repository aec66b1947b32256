"""A benchmark run as table rows (like llama-bench's), JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mllm_cpu.convert.atomic_file import atomic_output
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import human_bytes

from .boards import FitCheck
from .llama_session import DEFAULT_BATCH, DEFAULT_FLASH_ATTN, DEFAULT_UBATCH
from .results import BenchRun, ModelResult, SpeedResult

FORMATS = ("json", "csv", "md")
_RIGHT = {
    "size",
    "bpw",
    "params",
    "threads",
    "n_batch",
    "n_ubatch",
    "test",
    "t/s",
    "load s",
    "peak RSS",
    "TTFT ms",
    "roofline t/s",
    "% roofline",
    "ctx",
    "weights",
    "KV cache",
    "compute",
    "total",
    "budget",
    "max ctx",
    "concurrency",
    "prompt",
    "n_gen",
    "decode t/s per request",
    "aggregate t/s",
    "errors",
    "PPL",
    "ΔPPL",
    "KL mean",
    "KL p99",
    "same top",
    "pp512 t/s",
    "tg128 t/s",
}


def human_params(count: int) -> str:
    """140250432 -> "140.25 M", as llama-bench prints parameters."""
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.2f} M"


def _shows_batches(run: BenchRun) -> bool:
    return any(r.n_prompt and (r.n_batch, r.n_ubatch) != (DEFAULT_BATCH, DEFAULT_UBATCH) for r in run.results)


def _shows_flash_attn(run: BenchRun) -> bool:
    """llama-bench shows its "fa" column when flash attention is not left at its default."""
    return any(r.flash_attn != DEFAULT_FLASH_ATTN for r in run.results)


def speed_rows(run: BenchRun) -> tuple[list[str], list[list[str]]]:
    """Column names and text cells of the speed table: llama-bench's columns plus ours."""
    batches = _shows_batches(run)
    flash = _shows_flash_attn(run)
    columns = [
        "model",
        "size",
        "bpw",
        "params",
        "quant",
        "threads",
        *(["n_batch", "n_ubatch"] if batches else []),
        *(["fa"] if flash else []),
        "test",
        "t/s",
        "load s",
        "peak RSS",
        "TTFT ms",
        "roofline t/s",
        "% roofline",
    ]
    rows = []
    for result in run.results:
        model = run.model(result.model)
        percent = result.roofline_percent
        rows.append(
            [
                model.name,
                human_bytes(model.tensor_bytes),
                f"{model.bits_per_weight:.2f}",
                human_params(model.n_params),
                model.file_type,
                str(result.threads),
                *([str(result.n_batch), str(result.n_ubatch)] if batches else []),
                *([result.flash_attn] if flash else []),
                result.test,
                _speed_cell(result),
                f"{model.load_seconds:.2f}",
                human_bytes(model.memory.peak_rss_bytes) if model.memory else "-",
                f"{model.ttft_mean_ms:.1f}" if model.ttft_samples_ns else "-",
                f"{result.roofline_ts:.2f}" if result.roofline_ts else "-",
                f"{percent:.1f}%" if percent is not None else "-",
            ]
        )
    return columns, rows


def _speed_cell(result: SpeedResult) -> str:
    return f"{result.avg_ts:.2f} ± {result.stdev_ts:.2f}" + (" noisy" if result.noisy else "")


def side_by_side_rows(run: BenchRun) -> tuple[list[str], list[list[str]]]:
    """Column names and cells of the comparison table: one row per model (and thread count, batch
    sizes and flash attention when they vary), one "TEST t/s" column per test, so models read
    down a column."""
    batches = _shows_batches(run)
    flash = _shows_flash_attn(run)
    several_threads = len({r.threads for r in run.results}) > 1
    tests = list(dict.fromkeys(r.test for r in run.results))
    roofline_tests = list(dict.fromkeys(r.test for r in run.results if r.roofline_ts))
    groups: dict[tuple[str, int, int, int, str], dict[str, SpeedResult]] = {}
    for result in run.results:
        key = (result.model, result.threads, result.n_batch, result.n_ubatch, result.flash_attn)
        groups.setdefault(key, {})[result.test] = result
    columns = [
        "model",
        "quant",
        "size",
        "params",
        *(["threads"] if several_threads else []),
        *(["n_batch", "n_ubatch"] if batches else []),
        *(["fa"] if flash else []),
        *(f"{test} t/s" for test in tests),
        *(f"{test} % roofline" for test in roofline_tests),
        "load s",
        "peak RSS",
        "TTFT ms",
    ]
    rows = []
    for (path, threads, n_batch, n_ubatch, flash_attn), by_test in groups.items():
        model = run.model(path)
        percents = [by_test[test].roofline_percent if test in by_test else None for test in roofline_tests]
        rows.append(
            [
                model.name,
                model.file_type,
                human_bytes(model.tensor_bytes),
                human_params(model.n_params),
                *([str(threads)] if several_threads else []),
                *([str(n_batch), str(n_ubatch)] if batches else []),
                *([flash_attn] if flash else []),
                *(_speed_cell(by_test[test]) if test in by_test else "-" for test in tests),
                *(f"{percent:.1f}%" if percent is not None else "-" for percent in percents),
                f"{model.load_seconds:.2f}",
                human_bytes(model.memory.peak_rss_bytes) if model.memory else "-",
                f"{model.ttft_mean_ms:.1f}" if model.ttft_samples_ns else "-",
            ]
        )
    return columns, rows


def speed_table(run: BenchRun) -> tuple[str, list[str], list[list[str]]]:
    """Title, columns and cells of the speed table as printed: llama-bench's layout (a row per test)
    for one model, `side_by_side_rows` for several."""
    if len(run.models) > 1:
        return f"Speed of {len(run.models)} models side by side (llama-bench definitions)", *side_by_side_rows(run)
    return "Speed (llama-bench definitions)", *speed_rows(run)


def fit_rows(run: BenchRun) -> tuple[list[str], list[list[str]]]:
    """Column names and text cells of the memory fit table."""
    columns = ["model", "quant", "board", "ctx", "weights", "KV cache", "compute", "total", "budget", "fits", "max ctx"]
    rows = []
    for model in run.models:
        fit = model.fit
        if fit is None:
            continue
        rows.append(
            [
                model.name,
                model.file_type,
                *fit_cells(fit),
                str(fit.max_context),
            ]
        )
    return columns, rows


def fit_cells(fit: FitCheck) -> list[str]:
    """The cells every memory fit table shows: board, context, weights, KV cache, compute, total, budget, fits."""
    return [
        fit.board,
        str(fit.n_ctx),
        human_bytes(fit.weight_bytes),
        human_bytes(fit.kv_bytes),
        human_bytes(fit.compute_bytes),
        human_bytes(fit.total_bytes),
        human_bytes(fit.budget_bytes),
        "yes" if fit.fits else "NO",
    ]


def caption(run: BenchRun) -> str:
    """One line on the machine, bandwidth and the TTFT prompt."""
    machine = run.machine
    parts = [
        f"{machine.get('cpu_model', '?')}, {machine.get('physical_cores', '?')} cores, "
        f"llama-cpp-python {run.versions.get('llama-cpp-python', '?')}"
    ]
    if run.bandwidth:
        bandwidth = run.bandwidth
        parts.append(
            f"read bandwidth {bandwidth.best / 1e9:.1f} GB/s (best of {len(bandwidth.samples)}, "
            f"{bandwidth.workers} processes, {human_bytes(bandwidth.array_bytes)})"
        )
    prompts = sorted({m.ttft_prompt_tokens for m in run.models if m.ttft_samples_ns})
    if prompts:
        parts.append(f"TTFT: chat prompt of {', '.join(map(str, prompts))} tokens")
    if any(result.noisy for result in run.results):
        parts.append("noisy: the repetitions' sd exceeds their mean (a busy machine?); rerun with more -r")
    return "; ".join(parts)


def fit_caption(run: BenchRun) -> str:
    """The board the fit is checked for, and its thread count against the one measured with."""
    board = run.parameters.get("board", {})
    text = f"{board.get('key', '?')}: {board.get('description', '')}"
    used = run.parameters.get("threads", [])
    if board.get("threads") and used and board["threads"] not in used:
        text += f"; the board has {board['threads']} cores, measured here with {', '.join(map(str, used))} threads"
    return text


def right_aligned(column: str) -> bool:
    """Whether llama-bench right-aligns `column` (the tables and Markdown follow it)."""
    return column in _RIGHT or column.endswith((" t/s", " % roofline"))


def markdown(run: BenchRun) -> str:
    """The speed table as printed (llama-bench's Markdown columns plus ours, or several models side by
    side), then the fit table."""
    _, columns, rows = speed_table(run)
    sections = [_markdown_table(columns, rows)]
    fit_columns, fit_cells = fit_rows(run)
    if fit_cells:
        sections.append(_markdown_table(fit_columns, fit_cells))
        sections.append(fit_caption(run))
    sections.append(caption(run))
    return "\n\n".join(sections) + "\n"


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if right_aligned(columns[i]) else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=False))
            )
            + " |"
        )

    rule = (
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if right_aligned(c) else "-" * w for c, w in zip(columns, widths, strict=False)
        )
        + " |"
    )
    return "\n".join([line(columns), rule, *(line(r) for r in rows)])


def to_json(run: BenchRun) -> str:
    """The whole run as JSON."""
    return json.dumps(run.to_dict(), indent=2, ensure_ascii=False)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split()]


def _optional_float(text: str) -> float | None:
    return float(text) if text else None


def _optional_int(text: str) -> int | None:
    return int(text) if text else None


def _optional_bool(text: str) -> bool | None:
    return text == "true" if text else None


CSV_FIELDS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "path": str,
    "quant": str,
    "file_bytes": int,
    "tensor_bytes": int,
    "n_params": int,
    "bits_per_weight": float,
    "test": str,
    "n_prompt": int,
    "n_gen": int,
    "threads": int,
    "n_batch": int,
    "n_ubatch": int,
    "n_depth": int,
    "flash_attn": str,
    "avg_ts": float,
    "stdev_ts": float,
    "samples_ns": _ints,
    "counted_tokens": _ints,
    "load_seconds": float,
    "peak_rss_bytes": _optional_int,
    "ttft_prompt_tokens": int,
    "ttft_mean_ms": _optional_float,
    "bytes_per_token": int,
    "roofline_ts": _optional_float,
    "roofline_percent": _optional_float,
    "bandwidth_best": _optional_float,
    "board": str,
    "n_ctx": _optional_int,
    "fit_total_bytes": _optional_int,
    "budget_bytes": _optional_int,
    "fits": _optional_bool,
    "max_context": _optional_int,
}


def csv_rows(run: BenchRun) -> list[dict[str, Any]]:
    """One flat record per test result (model facts repeated), typed as `parse_csv` returns them."""
    records = []
    for result in run.results:
        model: ModelResult = run.model(result.model)
        fit = model.fit
        records.append(
            {
                "model": model.name,
                "path": model.path,
                "quant": model.file_type,
                "file_bytes": model.file_bytes,
                "tensor_bytes": model.tensor_bytes,
                "n_params": model.n_params,
                "bits_per_weight": model.bits_per_weight,
                "test": result.test,
                "n_prompt": result.n_prompt,
                "n_gen": result.n_gen,
                "threads": result.threads,
                "n_batch": result.n_batch,
                "n_ubatch": result.n_ubatch,
                "n_depth": result.n_depth,
                "flash_attn": result.flash_attn,
                "avg_ts": result.avg_ts,
                "stdev_ts": result.stdev_ts,
                "samples_ns": list(result.samples_ns),
                "counted_tokens": list(result.counted_tokens),
                "load_seconds": model.load_seconds,
                "peak_rss_bytes": model.memory.peak_rss_bytes if model.memory else None,
                "ttft_prompt_tokens": model.ttft_prompt_tokens,
                "ttft_mean_ms": model.ttft_mean_ms if model.ttft_samples_ns else None,
                "bytes_per_token": model.bytes_per_token,
                "roofline_ts": result.roofline_ts,
                "roofline_percent": result.roofline_percent,
                "bandwidth_best": run.bandwidth.best if run.bandwidth else None,
                "board": fit.board if fit else "",
                "n_ctx": fit.n_ctx if fit else None,
                "fit_total_bytes": fit.total_bytes if fit else None,
                "budget_bytes": fit.budget_bytes if fit else None,
                "fits": fit.fits if fit else None,
                "max_context": fit.max_context if fit else None,
            }
        )
    return records


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def to_csv(run: BenchRun) -> str:
    """CSV with a header row; lists are space-separated, missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for record in csv_rows(run):
        writer.writerow({key: _csv_cell(value) for key, value in record.items()})
    return buffer.getvalue()


def parse_csv(text: str) -> list[dict[str, Any]]:
    """Records written by `to_csv`, with their types restored."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != list(CSV_FIELDS):
        raise InputError("not a mllm-cpu bench CSV (unexpected header)")
    return [{key: CSV_FIELDS[key](value) for key, value in row.items()} for row in reader]


def render(run: BenchRun, output_format: str) -> str:
    """The run in one of FORMATS."""
    if output_format == "json":
        return to_json(run) + "\n"
    if output_format == "csv":
        return to_csv(run)
    if output_format == "md":
        return markdown(run)
    raise InputError(f"unknown output format {output_format}; choose from: {', '.join(FORMATS)}")


def chosen_format(json_output: bool, csv_output: bool, md_output: bool, out_file: Path | None) -> str | None:
    """The format of FORMATS that --json, --csv or --md chose, else the one --out's suffix names; None for
    tables. InputError for two formats, or an --out whose name says none."""
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


def write_report(text: str, path: Path) -> None:
    """Write a report file atomically (a partial file never appears under the name)."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
