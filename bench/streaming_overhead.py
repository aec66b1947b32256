"""How much streaming to a terminal costs generation speed (chat and solve stream), and how
the streamed speed compares with `mllm-cpu bench`'s tg on the same file and threads, at the
same depth (the prompt's length) and with flash attention as chat and solve run it.

python -m mllm_cpu.bench.streaming_overhead MODEL [-t THREADS] [--runs 5] [--tokens 256]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, replace

from rich.console import Console

from mllm_cpu.engine import Engine
from mllm_cpu.live_progress import LiveProgress
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages
from mllm_cpu.store import resolve_model
from mllm_cpu.stream_display import DEFAULT_INTERVAL_S, TerminalStream
from mllm_cpu.tasks import get_preset

from .llama_session import RUNTIME_FLASH_ATTN, LoadedModel, loaded_model
from .speed import SpeedTest, run_speed_test


@dataclass(frozen=True)
class StreamingOverhead:
    """Generation speed with and without a terminal stream attached, run by run."""

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
    console: Console,
    runs: int = 5,
    interval_s: float = DEFAULT_INTERVAL_S,
    live: bool = False,
    bench_model: LoadedModel | None = None,
) -> StreamingOverhead:
    """Generate `runs` times with and without a TerminalStream (alternating, after one warm-up run).

    With `live`, the stream is solve's LiveProgress (text and the status line with tokens/s and
    ETA) instead. Every run evaluates the prompt afresh with the same seed, so both sides
    produce the same tokens. With `bench_model` (the same file), each run also measures bench's
    tg of `options.max_tokens` tokens with the engine's threads, after as many tokens of context as
    the prompt has, with the engine's flash attention setting.
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
        if live:
            with LiveProgress(console, console, seeded.max_tokens, style="dim") as progress:
                streamed.append(engine.generate(prompt, seeded, progress.on_text, reuse_prefix=False).tokens_per_second)
            continue
        stream = TerminalStream(console, style="dim", interval_s=interval_s)
        streamed.append(engine.generate(prompt, seeded, stream, reuse_prefix=False).tokens_per_second)
        stream.finish()
    return StreamingOverhead(plain, streamed, bench, depth)


def main(argv: list[str] | None = None) -> None:
    """Print the median tokens/s with and without streaming to this terminal."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--live", action="store_true", help="measure solve's live status line too")
    args = parser.parse_args(argv)
    path = resolve_model(args.model)
    console = Console()
    # bench's model loads first: loaded after the engine's, its context decoded 3-4% faster than
    # the engine's even in a bare decode loop (loaded before, the two were equal; docs/DESIGN.md)
    with loaded_model(path) as bench_model:
        engine = Engine(path, threads=args.threads)
        prompt = engine.render_chat(problem_messages("Compute: 1-2+3-4+5-...+99-100", get_preset("math")))
        options = replace(SamplingOptions(), seed=4, max_tokens=args.tokens)
        result = measure_streaming_overhead(
            engine, prompt, options, console, runs=args.runs, live=args.live, bench_model=bench_model
        )
    console.print(
        f"\nplain {result.plain_tokens_per_second:.1f} tok/s, streamed "
        f"{result.streamed_tokens_per_second:.1f} tok/s: overhead {100 * result.overhead:+.1f}%; "
        f"bench tg{args.tokens} @ d{result.depth} -fa {RUNTIME_FLASH_ATTN} {result.bench_tokens_per_second:.1f} tok/s, "
        "streamed/bench "
        f"{result.versus_bench:.3f} (paired median of {len(result.streamed)} runs, {engine.threads} threads)"
    )


if __name__ == "__main__":
    main()
