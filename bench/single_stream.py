"""One stream through the batched engine next to the single-sequence `Engine` on the same file.

The lone user at a terminal must not pay for batching. Each round runs both, in turn and each in a
fresh process (two models loaded in one process decode at different speeds), on the same greedy
request: the time-to-first-token test's question with the math task's system prompt, exactly
`-n` tokens (end-of-generation tokens masked). Both report `Generation.tokens_per_second` (tokens
after the first over the time since the first). The table gives each one's median and the ratio
batched ÷ engine, with the paired median of the per-round ratios.

    python -m mllm_cpu.bench.single_stream MODEL.gguf -n 128 -t 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from mllm_cpu.core.child import module_command
from mllm_cpu.hardware import physical_cores
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages
from mllm_cpu.tasks import get_preset

from .parallel import exact_length_options
from .speed import CHAT_PROBLEM

KINDS = ("engine", "batched")


def _decode_speed(kind: str, path: Path, n_gen: int, threads: int, n_ctx: int) -> float:
    """Decode t/s of one greedy request of exactly `n_gen` tokens on `kind`, after a 2-token warm-up."""
    from mllm_cpu.batched import BatchedEngine
    from mllm_cpu.engine import Engine

    messages = problem_messages(CHAT_PROBLEM, get_preset("math"))
    engine = Engine(path, n_ctx=n_ctx, threads=threads) if kind == "engine" else None
    batched = BatchedEngine(path, parallel=1, n_ctx=n_ctx, threads=threads) if kind == "batched" else None
    model = engine or batched
    assert model is not None
    options = exact_length_options(model, n_gen)
    warm = SamplingOptions(temperature=0.0, max_tokens=2)
    model.chat(messages, warm, reuse_prefix=False)
    generation = model.chat(messages, options, reuse_prefix=False)
    assert generation.generated_tokens == n_gen, generation.generated_tokens
    if batched is not None:
        batched.close()
    return generation.tokens_per_second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_decode_speed(args.child, args.model, args.n_gen, args.threads, args.ctx)))
        return 0
    speeds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for round_number in range(args.rounds):
        order = KINDS if round_number % 2 == 0 else KINDS[::-1]
        for kind in order:
            command = module_command(
                "mllm_cpu.bench.single_stream",
                str(args.model),
                "-n",
                str(args.n_gen),
                "-t",
                str(args.threads),
                "--ctx",
                str(args.ctx),
                "--child",
                kind,
            )
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            speeds[kind].append(float(done.stdout.strip().splitlines()[-1]))
        print(f"round {round_number + 1}: " + ", ".join(f"{k} {speeds[k][-1]:.2f} t/s" for k in KINDS), file=sys.stderr)
    engine, batched = (statistics.median(speeds[kind]) for kind in KINDS)
    paired = statistics.median(b / e for e, b in zip(speeds["engine"], speeds["batched"], strict=True))
    print(f"{args.model.name}: {args.n_gen} tokens, {args.threads} threads, {args.rounds} rounds")
    print(f"  Engine (one sequence)      {engine:8.2f} t/s")
    print(f"  BatchedEngine, one stream  {batched:8.2f} t/s")
    print(f"  batched / engine           {batched / engine:8.3f}  (paired {paired:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
