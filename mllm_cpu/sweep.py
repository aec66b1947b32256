"""Budget sweeps: one batch per thinking budget, summed up as accuracy (and cost) against the budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mllm_cpu.batch import BatchRecord, summary_of

CHART_WIDTH = 40


@dataclass(frozen=True)
class BudgetPoint:
    """One budget's batch: how many problems it solved, how well, at what cost, and how often it forced."""

    budget: int
    results: Path
    problems: int
    finished: int
    graded: int
    correct: int
    mean_tokens: float
    mean_seconds: float
    forced: int

    @property
    def accuracy(self) -> float | None:
        """Correct / graded, None when nothing could be graded."""
        return self.correct / self.graded if self.graded else None

    @property
    def forced_share(self) -> float | None:
        """Share of finished problems whose answer was forced, None before any finished."""
        return self.forced / self.finished if self.finished else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, accuracy and forced share included."""
        return {
            **asdict(self),
            "results": str(self.results),
            "accuracy": self.accuracy,
            "forced_share": self.forced_share,
        }


def budget_point(budget: int, results: Path, problems: int, records: list[BatchRecord]) -> BudgetPoint:
    """The sweep row of one budget's finished `records` out of `problems`."""
    summary = summary_of(str(budget), records)
    return BudgetPoint(
        budget=budget,
        results=results,
        problems=problems,
        finished=summary.problems,
        graded=summary.graded,
        correct=summary.correct,
        mean_tokens=summary.mean_tokens,
        mean_seconds=summary.mean_seconds,
        forced=sum(record.forced for record in records),
    )


def budget_results_path(base: Path, budget: int) -> Path:
    """The results file of one budget of a sweep: BASE-budgetN.jsonl beside `base`."""
    return base.with_name(f"{base.stem}-budget{budget}{base.suffix or '.jsonl'}")


def accuracy_chart(points: list[BudgetPoint], width: int = CHART_WIDTH) -> list[str]:
    """Lines of a bar chart of accuracy against budget, with each budget's mean tokens and seconds."""
    label = max(len(str(point.budget)) for point in points)
    lines = [f"{'budget':>{label}}  accuracy"]
    for point in points:
        accuracy = point.accuracy
        filled = round(width * accuracy) if accuracy is not None else 0
        bar = "#" * filled + "." * (width - filled)
        share = "  -" if accuracy is None else f"{100 * accuracy:3.0f}%"
        lines.append(
            f"{point.budget:>{label}} |{bar}| {share}  {point.mean_tokens:.0f} tokens, {point.mean_seconds:.1f} s"
        )
    return lines
