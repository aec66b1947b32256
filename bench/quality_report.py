"""A quality ladder as a table, a chart of KL against size, board recommendations; JSON, CSV, Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import human_bytes

from .quality import LevelQuality, QualityRun, Recommendation
from .report import FORMATS, _markdown_table

CHART_WIDTH = 40


def _levels_by_size(run: QualityRun) -> list[LevelQuality]:
    return sorted(run.levels, key=lambda level: (not level.reference, -level.file_bytes))


def level_rows(run: QualityRun) -> tuple[list[str], list[list[str]]]:
    """Column names and text cells of the ladder table, largest file first."""
    speed = any(level.pp_ts is not None for level in run.levels)
    columns = [
        "level",
        "size",
        "bpw",
        "tensor types",
        "PPL",
        "ΔPPL",
        "KL mean",
        "KL p99",
        "same top",
        *(["pp512 t/s", "tg128 t/s"] if speed else []),
    ]
    rows = []
    for level in _levels_by_size(run):
        scores = level.scores
        rows.append(
            [
                f"{level.quant} (reference)" if level.reference else level.quant,
                human_bytes(level.file_bytes),
                f"{level.bits_per_weight:.2f}",
                level.type_mix_text,
                f"{scores.ppl:.4f} ± {scores.ppl_uncertainty:.4f}",
                "-" if level.reference else f"{scores.ppl_change_percent:+.2f}%",
                f"{_kl(scores.kl_mean)} ± {scores.kl_uncertainty:.6f}",
                _kl(scores.kl_p99),
                f"{100 * scores.same_top:.2f} ± {100 * scores.same_top_uncertainty:.2f}%",
                *(
                    [f"{level.pp_ts:.2f}" if level.pp_ts else "-", f"{level.tg_ts:.2f}" if level.tg_ts else "-"]
                    if speed
                    else []
                ),
            ]
        )
    return columns, rows


def _kl(value: float) -> str:
    """A KL value at six decimals; float32 rounding of a KL of 0 may come out a hair below 0."""
    return f"{max(value, 0.0):.6f}"


def caption(run: QualityRun) -> str:
    """What was measured: text, chunks, scored tokens, context, threads."""
    p = run.parameters
    scored = p["chunks"] * p["scored_per_chunk"]
    text = (
        f"{p['text']}: {p['text_tokens']} tokens, {p['chunks']} chunks of {p['n_ctx']}, {scored} tokens scored "
        f"(the second half of each chunk, as llama-perplexity); {p['threads']} threads"
    )
    if run.interrupted:
        text += "; interrupted: the levels finished before Ctrl-C"
    return text


def chart(run: QualityRun, width: int = CHART_WIDTH) -> str:
    """Mean KL per level on a log scale, largest file first: a bar per level, plain characters."""
    levels = _levels_by_size(run)
    positive = [level.scores.kl_mean for level in levels if level.scores.kl_mean > 0 and not level.reference]
    reference = next(level for level in levels if level.reference)
    lines = [f"Mean KL divergence from {reference.quant} by file size (log scale; shorter is closer)"]
    if not positive:
        return "\n".join([*lines, "  no levels measured against the reference"])
    low = 10 ** math.floor(math.log10(min(positive)))
    high = 10 ** math.ceil(math.log10(max(positive)))
    if high <= low:
        high = low * 10
    label_width = max(len(level.quant) for level in levels)
    size_width = max(len(human_bytes(level.file_bytes)) for level in levels)
    for level in levels:
        kl = level.scores.kl_mean
        head = f"  {level.quant:<{label_width}}  {human_bytes(level.file_bytes):>{size_width}} |"
        if level.reference:
            lines.append(f"{head}{'':<{width}} reference")
            continue
        filled = 0 if kl <= 0 else max(1, round(width * math.log10(kl / low) / math.log10(high / low)))
        filled = min(filled, width)
        bar = "#" * filled + " " * (width - filled)
        lines.append(f"{head}{bar} {kl:.2g}, same top {100 * level.scores.same_top:.1f}%")
    lines.append(" " * (label_width + size_width + 6) + f"{low:.0e}".ljust(width - 5) + f"{high:.0e}")
    return "\n".join(lines)


def recommendation_lines(run: QualityRun) -> list[str]:
    """One line per board preset: the closest level that fits its memory."""
    return [_recommendation_line(run, r) for r in run.recommendations()]


def _recommendation_line(run: QualityRun, recommendation: Recommendation) -> str:
    head = (
        f"{recommendation.board} ({human_bytes(recommendation.budget_bytes)} budget, context {recommendation.n_ctx}): "
    )
    if recommendation.level is None:
        return head + "no level fits"
    level = next(level for level in run.levels if level.quant == recommendation.level)
    closeness = (
        "the reference itself"
        if level.reference
        else f"KL {level.scores.kl_mean:.2g}, same top {100 * level.scores.same_top:.1f}%"
    )
    return head + f"{level.quant} ({closeness}; {human_bytes(recommendation.total_bytes or 0)} in use)"


CSV_FIELDS = (
    "level",
    "reference",
    "path",
    "file_bytes",
    "tensor_bytes",
    "n_params",
    "bits_per_weight",
    "type_mix",
    "tokens",
    "ppl",
    "ppl_uncertainty",
    "ppl_change_percent",
    "ln_ppl_ratio",
    "ln_ppl_ratio_uncertainty",
    "kl_mean",
    "kl_uncertainty",
    "kl_p99",
    "kl_max",
    "same_top",
    "same_top_uncertainty",
    "pp512_ts",
    "tg128_ts",
)


def _csv_record(level: LevelQuality) -> dict[str, Any]:
    s = level.scores
    return {
        "level": level.quant,
        "reference": "true" if level.reference else "false",
        "path": level.path,
        "file_bytes": level.file_bytes,
        "tensor_bytes": level.tensor_bytes,
        "n_params": level.n_params,
        "bits_per_weight": repr(level.bits_per_weight),
        "type_mix": " ".join(f"{name}:{count}" for name, count in sorted(level.type_mix.items())),
        "tokens": s.tokens,
        "ppl": repr(s.ppl),
        "ppl_uncertainty": repr(s.ppl_uncertainty),
        "ppl_change_percent": repr(s.ppl_change_percent),
        "ln_ppl_ratio": repr(s.ln_ppl_ratio),
        "ln_ppl_ratio_uncertainty": repr(s.ln_ppl_ratio_uncertainty),
        "kl_mean": repr(s.kl_mean),
        "kl_uncertainty": repr(s.kl_uncertainty),
        "kl_p99": repr(s.kl_p99),
        "kl_max": repr(s.kl_max),
        "same_top": repr(s.same_top),
        "same_top_uncertainty": repr(s.same_top_uncertainty),
        "pp512_ts": "" if level.pp_ts is None else repr(level.pp_ts),
        "tg128_ts": "" if level.tg_ts is None else repr(level.tg_ts),
    }


def to_csv(run: QualityRun) -> str:
    """One row per level, largest file first; missing values empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for level in _levels_by_size(run):
        writer.writerow(_csv_record(level))
    return buffer.getvalue()


def markdown(run: QualityRun) -> str:
    """The table, the chart in a code block and the recommendations."""
    sections = [
        _markdown_table(*level_rows(run)),
        caption(run),
        "```text\n" + chart(run) + "\n```",
        "\n".join(f"- {line}" for line in recommendation_lines(run)),
    ]
    return "\n\n".join(sections) + "\n"


def render(run: QualityRun, output_format: str) -> str:
    """The run in one of FORMATS."""
    if output_format == "json":
        return json.dumps(run.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if output_format == "csv":
        return to_csv(run)
    if output_format == "md":
        return markdown(run)
    raise InputError(f"unknown output format {output_format}; choose from: {', '.join(FORMATS)}")
