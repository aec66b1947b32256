"""What speculative decoding costs and gains on this machine: `bench --draft DRAFT TARGET`.

Per round, the draft proposes k tokens (k single-token decodes of the draft) and the target
verifies them in one batch of k + 1 tokens (the last accepted token and the k drafts). With
acceptance rate a (each drafted token kept with probability a, independently), a round
yields (1 - a^(k+1)) / (1 - a) tokens on average, so the speed-up over plain decoding is

    speedup(a, k) = (1 - a^(k+1)) / (1 - a) / ((k * c_draft + c_verify(k)) / c_target)

where c_draft and c_target are single-token decode times and c_verify(k) is the time to
decode k + 1 tokens in one batch (docs/DESIGN.md, "Drafting"). The measured speed-up runs
the real generation loop, with and without the draft, on a few chat prompts.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions

from .llama_session import ContextSettings, decode, fill_batch, loaded_model, open_context, token_batch

DRAFT_LENGTHS = (1, 2, 4, 8)
ACCEPTANCE_RATES = (0.5, 0.6, 0.7, 0.8, 0.9)
CONTEXT_TOKENS = 128
REAL_PROMPTS = (
    "What is the sum of the first 20 positive odd numbers?",
    "Write a Python function that returns the n-th Fibonacci number.",
)


@dataclass(frozen=True)
class DecodeCosts:
    """Milliseconds per decode of one model after CONTEXT_TOKENS tokens: single tokens and batches."""

    single_ms: float
    batch_ms: dict[int, float] = field(default_factory=dict)
    """Batch size -> milliseconds to decode that many tokens at once (logits for each)."""


@dataclass(frozen=True)
class MeasuredRun:
    """Real generation with and without drafting."""

    draft_tokens: int
    plain_tokens_per_second: float
    draft_tokens_per_second: float
    acceptance_rate: float | None

    @property
    def speedup(self) -> float:
        """Tokens/s with the draft over tokens/s without."""
        return self.draft_tokens_per_second / self.plain_tokens_per_second if self.plain_tokens_per_second else 0.0


@dataclass(frozen=True)
class DraftBench:
    """Everything `bench --draft` measured and predicts."""

    draft: str
    target: str
    threads: int
    draft_costs: DecodeCosts
    target_costs: DecodeCosts
    measured: MeasuredRun | None

    @property
    def draft_tokens_per_second(self) -> float:
        """The draft's single-token decode speed."""
        return 1000.0 / self.draft_costs.single_ms

    def verify_ratio(self, k: int) -> float:
        """c_verify(k) / c_target: what verifying k drafts costs in single target decodes."""
        return self.target_costs.batch_ms[k + 1] / self.target_costs.single_ms

    def predicted(self, acceptance: float, k: int) -> float:
        """The speed-up the standard formula predicts for acceptance rate `acceptance` and k drafts."""
        return predicted_speedup(
            acceptance, k, self.draft_costs.single_ms, self.target_costs.batch_ms[k + 1], self.target_costs.single_ms
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields with the prediction table."""
        return {
            **asdict(self),
            "draft_tokens_per_second": self.draft_tokens_per_second,
            "verify_ratio": {k: self.verify_ratio(k) for k in DRAFT_LENGTHS},
            "predicted": {f"{a:.1f}": {k: self.predicted(a, k) for k in DRAFT_LENGTHS} for a in ACCEPTANCE_RATES},
            "measured": None if self.measured is None else {**asdict(self.measured), "speedup": self.measured.speedup},
        }


def predicted_speedup(acceptance: float, k: int, draft_ms: float, verify_ms: float, target_ms: float) -> float:
    """(1 - a^(k+1)) / (1 - a) tokens per round over the round's cost in single target decodes."""
    tokens = k + 1 if acceptance >= 1 else (1 - acceptance ** (k + 1)) / (1 - acceptance)
    return tokens / ((k * draft_ms + verify_ms) / target_ms)


def decode_costs(path: Path, threads: int, sizes: Sequence[int], repetitions: int) -> DecodeCosts:
    """Time single-token decodes and batches of `sizes` tokens after a CONTEXT_TOKENS-token prompt."""
    import llama_cpp

    rng = random.Random(0)
    with loaded_model(path) as model, open_context(model, ContextSettings(n_ctx=512, threads=threads)) as context:
        prompt = [model.bos] + [rng.randrange(model.n_vocab) for _ in range(CONTEXT_TOKENS - 1)]
        with token_batch(len(prompt)) as batch:
            fill_batch(batch, prompt, 0)
            decode(context, batch)

        def timed(size: int) -> float:
            tokens = [rng.randrange(model.n_vocab) for _ in range(size)]
            samples = []
            with token_batch(size) as batch:
                for _ in range(repetitions + 1):
                    fill_batch(batch, tokens, CONTEXT_TOKENS, first_output=0)
                    begin = time.perf_counter()
                    decode(context, batch)
                    llama_cpp.llama_synchronize(context.handle)
                    samples.append(time.perf_counter() - begin)
                    llama_cpp.llama_memory_seq_rm(context.memory, 0, CONTEXT_TOKENS, -1)
            return 1000.0 * statistics.median(samples[1:])

        return DecodeCosts(single_ms=timed(1), batch_ms={size: timed(size) for size in sizes})


def measure_real(
    target: Path, draft: Path, threads: int, draft_tokens: int, max_tokens: int, prompts: Sequence[str] = REAL_PROMPTS
) -> MeasuredRun:
    """Greedy chat replies to `prompts`, by the target alone and with the draft: tokens/s and acceptance."""
    from mllm_cpu.drafting import DraftStats
    from mllm_cpu.solver import problem_messages
    from mllm_cpu.tasks import detect_task, get_preset

    options = SamplingOptions(temperature=0.0, top_k=1, max_tokens=max_tokens, seed=0)
    speeds = []
    stats = DraftStats()
    for engine_draft in (None, draft):
        engine = Engine(target, n_ctx=1024, threads=threads, draft=engine_draft, draft_tokens=draft_tokens)
        tokens, seconds = 0, 0.0
        for prompt in prompts:
            messages = problem_messages(prompt, get_preset(detect_task(prompt)))
            generation = engine.chat(messages, options, reuse_prefix=False)
            tokens += generation.generated_tokens
            seconds += generation.generation_seconds
            if generation.draft is not None:
                stats = stats.add(generation.draft)
        speeds.append(tokens / seconds if seconds > 0 else 0.0)
        del engine
    return MeasuredRun(draft_tokens, speeds[0], speeds[1], stats.acceptance_rate)


def run_draft_bench(
    draft: Path,
    target: Path,
    threads: int,
    *,
    repetitions: int = 5,
    real_tokens: int = 128,
    draft_tokens: int = 4,
    on_step: Callable[[str], None] | None = None,
) -> DraftBench:
    """Measure the draft's and the target's decode costs, then real generation with and without drafting."""
    step = on_step or (lambda text: None)
    step("draft decode speed")
    draft_costs = decode_costs(draft, threads, (), repetitions)
    step("target verify costs")
    target_costs = decode_costs(target, threads, [k + 1 for k in DRAFT_LENGTHS], repetitions)
    step("real prompts")
    measured = measure_real(target, draft, threads, draft_tokens, real_tokens) if real_tokens else None
    return DraftBench(draft.name, target.name, threads, draft_costs, target_costs, measured)


def cost_rows(run: DraftBench) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the measured costs: draft t/s, and verifying k drafts in target decodes."""
    rows = [
        ["draft decode", f"{run.draft_costs.single_ms:.2f}", f"{run.draft_tokens_per_second:.1f}", "-"],
        ["target decode", f"{run.target_costs.single_ms:.2f}", f"{1000 / run.target_costs.single_ms:.1f}", "1.00"],
    ]
    rows += [
        [
            f"target verify k={k} ({k + 1} tokens)",
            f"{run.target_costs.batch_ms[k + 1]:.2f}",
            "-",
            f"{run.verify_ratio(k):.2f}",
        ]
        for k in DRAFT_LENGTHS
    ]
    return ["step", "ms", "tokens/s", "cost in target decodes"], rows


def prediction_rows(run: DraftBench) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the predicted speed-up: one row per acceptance rate, one column per k."""
    rates = list(ACCEPTANCE_RATES)
    if run.measured is not None and run.measured.acceptance_rate is not None:
        rates = sorted({*rates, round(run.measured.acceptance_rate, 2)})
    rows = [[f"{a:.2f}"] + [f"{run.predicted(a, k):.2f}x" for k in DRAFT_LENGTHS] for a in rates]
    return ["acceptance"] + [f"k={k}" for k in DRAFT_LENGTHS], rows


def measured_note(run: DraftBench) -> str:
    """One line on the real-prompt run: acceptance, speeds and speed-up."""
    if run.measured is None:
        return "no real-prompt run"
    m = run.measured
    acceptance = "-" if m.acceptance_rate is None else f"{100 * m.acceptance_rate:.0f}%"
    return (
        f"measured on {len(REAL_PROMPTS)} chat prompts, greedy, k={m.draft_tokens}: acceptance {acceptance}, "
        f"{m.plain_tokens_per_second:.1f} -> {m.draft_tokens_per_second:.1f} tokens/s, speed-up {m.speedup:.2f}x"
    )
