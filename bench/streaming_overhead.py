"""How much streaming to a terminal costs generation speed (chat and solve stream), and how
the streamed speed compares with `mllm-cpu bench`'s tg on the same file and threads, at the
same depth (the prompt's length) and with flash attention as chat and solve run it.

The display measured is the caller's (`python -m mllm_cpu.commands.streaming_overhead` passes
chat's terminal stream or solve's live status line).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions

from .llama_session import RUNTIME_FLASH_ATTN, LoadedModel
from .speed import SpeedTest, run_speed_test

TextDisplay = Callable[[], AbstractContextManager[Callable[[str], None]]]
"""Opens a display of streamed text for one generation and yields its `on_text` callback."""


@dataclass(frozen=True)
class StreamingOverhead:
    """Generation speed with and without a text display attached, run by run."""

    plain: list[float]
    streamed: list[float]
    bench: list[float]
    """bench's tg (as many tokens, same threads, depth and flash attention) before each run; empty if not measured."""
    depth: int = 0
    """The prompt's length in tokens: the depth at which generation (and bench's tg) starts."""

    @property
    def plain_tokens_per_second(self) -> float:
        """Median speed without a stream."""
        return statistics.median(self.plain)

    @property
    def streamed_tokens_per_second(self) -> float:
        """Median speed streamed to the console."""
        return statistics.median(self.streamed)

    @property
    def bench_tokens_per_second(self) -> float | None:
        """Median of bench's tg, None if not measured."""
        return statistics.median(self.bench) if self.bench else None

    @property
    def overhead(self) -> float:
        """The fraction of speed lost to streaming (0.02 = 2% slower), from the medians."""
        if self.plain_tokens_per_second <= 0:
            return 0.0
        return 1 - self.streamed_tokens_per_second / self.plain_tokens_per_second

    @property
    def versus_bench(self) -> float | None:
        """Streamed speed as a fraction of bench's tg (1.0 = the same): the median of each run's
        ratio to the tg measured just before it, which cancels a noisy machine's slow drifts."""
        if not self.bench:
            return None
        return statistics.median(s / b for s, b in zip(self.streamed, self.bench, strict=True))


def measure_streaming_overhead(
    engine: Engine,
    prompt: str,
    options: SamplingOptions,
    display: TextDisplay,
    runs: int = 5,
    bench_model: LoadedModel | None = None,
) -> StreamingOverhead:
    """Generate `runs` times with and without `display` attached (alternating, after one warm-up run).

    Every run evaluates the prompt afresh with the same seed, so both sides produce the same
    tokens. With `bench_model` (the same file), each run also measures bench's tg of
    `options.max_tokens` tokens with the engine's threads, after as many tokens of context as the
    prompt has, with the engine's flash attention setting.
    """
    seeded = replace(options, seed=options.seed if options.seed is not None else 0)
    depth = len(engine.tokenize(prompt))
    engine.generate(prompt, seeded, reuse_prefix=False)
    plain: list[float] = []
    streamed: list[float] = []
    bench: list[float] = []
    for _ in range(runs):
        if bench_model is not None:
            test = SpeedTest(0, seeded.max_tokens, engine.threads, n_depth=depth, flash_attn=RUNTIME_FLASH_ATTN)
            bench.append(run_speed_test(bench_model, test, 1).mean_ts)
        plain.append(engine.generate(prompt, seeded, reuse_prefix=False).tokens_per_second)
        with display() as on_text:
            streamed.append(engine.generate(prompt, seeded, on_text, reuse_prefix=False).tokens_per_second)
    return StreamingOverhead(plain, streamed, bench, depth)
