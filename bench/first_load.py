"""What the crash guards cost: the AMX probe, a file's first-load check (cold and cached), a plain load.

    python -m mllm_cpu.bench.first_load MobileLLM-R1-950M-synthetic-Q4_0.gguf --rounds 5

Each figure is measured in a fresh process with its own cache folder, as a new user's first run
meets it: `probe` is `prepare_kernels` deciding on AMX (once per llama.cpp build and CPU), `check`
is `check_first_load` on a file not seen before (once per file), `cached` the same call
afterwards (every later run), and `load` llama.cpp loading the file in the process, which every
run pays anyway. Medians over the rounds; the last column relates each to `load`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_MEASURE = """
import json, sys, time
from pathlib import Path
path, what = Path(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
if what == "load":
    from mllm_cpu.kernels import prepare_kernels
    prepare_kernels()
    import llama_cpp
    start = time.perf_counter()
    llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
elif what == "probe":
    from mllm_cpu.kernels import prepare_kernels
    prepare_kernels()
else:
    from mllm_cpu.kernels import prepare_kernels
    from mllm_cpu.load_check import check_first_load
    choice = prepare_kernels()
    start = time.perf_counter()
    check_first_load(path, choice)
print(json.dumps(time.perf_counter() - start))
"""

STEPS = ("probe", "check", "cached", "load")


def measure(path: Path, what: str, cache: Path) -> float:
    """Seconds one step takes in a fresh process whose probe verdicts live in `cache`."""
    environment = {**os.environ, "MLLM_CPU_CACHE": str(cache)}
    environment.pop("MLLM_CPU_AMX", None)
    command = [sys.executable, "-c", _MEASURE, str(path), "check" if what == "cached" else what]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def run(path: Path, rounds: int) -> dict[str, list[float]]:
    """Every step, `rounds` times, each round from an empty cache."""
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="mllm-first-load-") as cache:
            for step in STEPS:  # probe fills the kernel verdict, check the file's, cached reads it
                times[step].append(measure(path, step, Path(cache)))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print every round's seconds as JSON")
    args = parser.parse_args(argv)
    if not args.model.is_file() or args.rounds < 1:
        print(f"error: {args.model}: give a GGUF file and --rounds of at least 1", file=sys.stderr)
        return 2
    times = run(args.model, args.rounds)
    if args.json:
        print(json.dumps(times, indent=2))
        return 0
    load = statistics.median(times["load"])
    print(f"{'step':>8} {'median s':>10} {'÷ load':>8}")
    for step in STEPS:
        median = statistics.median(times[step])
        print(f"{step:>8} {median:10.3f} {median / load:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
