"""How much chat's terminal stream (or solve's live status line) costs generation speed, against
`mllm-cpu bench`'s tg at the prompt's depth (the measurement is `mllm_cpu.bench.streaming_overhead`).

python -m mllm_cpu.commands.streaming_overhead MODEL [-t THREADS] [--runs 5] [--tokens 256] [--live]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from rich.console import Console

from mllm_cpu.bench.llama_session import RUNTIME_FLASH_ATTN, loaded_model
from mllm_cpu.bench.streaming_overhead import TextDisplay, measure_streaming_overhead
from mllm_cpu.commands.console import conversion_bars
from mllm_cpu.commands.live_progress import LiveProgress
from mllm_cpu.commands.stream_display import TerminalStream
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages
from mllm_cpu.store import resolve_model
from mllm_cpu.tasks import get_preset


def text_display(console: Console, max_tokens: int, live: bool = False) -> TextDisplay:
    """Chat's TerminalStream on `console`, or with `live` solve's LiveProgress (text and the status
    line with tokens/s and ETA towards `max_tokens`)."""

    @contextmanager
    def opened() -> Iterator[Callable[[str], None]]:
        if live:
            with LiveProgress(console, console, max_tokens, style="dim") as progress:
                yield progress.on_text
            return
        stream = TerminalStream(console, style="dim")
        yield stream
        stream.finish()

    return opened


def main(argv: list[str] | None = None) -> None:
    """Print the median tokens/s with and without streaming to this terminal."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--live", action="store_true", help="measure solve's live status line too")
    args = parser.parse_args(argv)
    path = resolve_model(args.model, conversion_bars)
    console = Console()
    # bench's model loads first: loaded after the engine's, its context decoded 3-4% faster than
    # the engine's even in a bare decode loop (loaded before, the two were equal; docs/DESIGN.md)
    with loaded_model(path) as bench_model:
        engine = Engine(path, threads=args.threads)
        prompt = engine.render_chat(problem_messages("Compute: 1-2+3-4+5-...+99-100", get_preset("math")))
        options = replace(SamplingOptions(), seed=4, max_tokens=args.tokens)
        display = text_display(console, options.max_tokens, live=args.live)
        result = measure_streaming_overhead(engine, prompt, options, display, runs=args.runs, bench_model=bench_model)
    console.print(
        f"\nplain {result.plain_tokens_per_second:.1f} tok/s, streamed "
        f"{result.streamed_tokens_per_second:.1f} tok/s: overhead {100 * result.overhead:+.1f}%; "
        f"bench tg{args.tokens} @ d{result.depth} -fa {RUNTIME_FLASH_ATTN} {result.bench_tokens_per_second:.1f} tok/s, "
        "streamed/bench "
        f"{result.versus_bench:.3f} (paired median of {len(result.streamed)} runs, {engine.threads} threads)"
    )


if __name__ == "__main__":
    main()
