"""Wall time of `mllm-cpu solve --file` at `--parallel 1` and N on one model and one problems file.

Each round solves the whole file afresh at every level (alternating which goes first), through the
CLI as a user runs it, greedy (`--temperature 0`) so the levels answer alike; the table gives each
level's median wall time, its speed-up over `--parallel 1` and its accuracy. Without `--problems`,
a GSM8K-style file of `--count` sums is written (its answers are checked like GSM8K's).

    python -m mllm_cpu.bench.solve_parallel MODEL.gguf --levels 1,4 --count 60 --max-tokens 128 -t 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mllm_cpu.core.values import comma_list
from mllm_cpu.hardware import physical_cores


def write_sums(path: Path, count: int, seed: int = 0) -> Path:
    """A GSM8K-style JSONL file of `count` addition problems."""
    rng = random.Random(seed)
    lines = []
    for number in range(count):
        terms = [rng.randint(1, 99) for _ in range(rng.randint(2, 4))]
        question = f"What is {' + '.join(map(str, terms))}?"
        lines.append(json.dumps({"id": f"s{number}", "question": question, "answer": f"#### {sum(terms)}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def solve_once(mllm_cpu: str, model: Path, problems: Path, out: Path, level: int, args: argparse.Namespace) -> float:
    """Seconds for one whole `solve --file` run into a fresh results file."""
    out.unlink(missing_ok=True)
    command = [mllm_cpu, "solve", "--file", str(problems), "--out", str(out), "--model", str(model)]
    command += ["--temperature", "0", "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]
    command += ["--ctx", str(args.ctx), "--parallel", str(level), "--json"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def accuracy(out: Path) -> tuple[int, int]:
    """(correct, records) of a results file."""
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sum(record.get("correct") is True for record in records), len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--levels", default="1,4")
    parser.add_argument("--problems", type=Path, help="a .jsonl problems file (default: generated sums)")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=1024, help="context of each sequence")
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    levels = [int(level) for level in comma_list(args.levels)]
    mllm_cpu = str(Path(sys.executable).parent / "mllm-cpu")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        problems = args.problems or write_sums(work / "sums.jsonl", args.count)
        seconds: dict[int, list[float]] = {level: [] for level in levels}
        scores: dict[int, tuple[int, int]] = {}
        for round_number in range(args.rounds):
            for level in levels if round_number % 2 == 0 else levels[::-1]:
                out = work / f"results-{level}.jsonl"
                seconds[level].append(solve_once(mllm_cpu, args.model, problems, out, level, args))
                scores[level] = accuracy(out)
                print(f"round {round_number + 1}: --parallel {level} {seconds[level][-1]:.1f} s", file=sys.stderr)
    base = statistics.median(seconds[levels[0]])
    count = scores[levels[0]][1]
    print(f"{args.model.name}: {count} problems, up to {args.max_tokens} tokens each, {args.rounds} rounds")
    print(f"{'--parallel':>10} {'median s':>9} {'speed-up':>9} {'accuracy':>9}")
    for level in levels:
        median = statistics.median(seconds[level])
        correct, total = scores[level]
        print(f"{level:>10} {median:>9.1f} {base / median:>9.2f} {correct:>5}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
