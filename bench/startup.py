"""How fast `mllm-cpu` starts: each command's median wall time next to bare `import typer, rich`.

    python -m mllm_cpu.bench.startup [--runs 10] [--model FILE] [--json]

Each command runs `--runs` times in a fresh process, alternating with the baseline, so a
noisy machine slows both alike; the ratio to the baseline's median is the figure to compare.
The heaviest imports of each command come from `python -X importtime` (cumulative, top 5).
With `--model`, `solve` on that file is timed too (use a tiny model: its load and one token
take milliseconds, so the figure is the start-up up to llama.cpp's model load).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BASELINE = "python -c 'import typer, rich'"
LIGHT_COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "models": ["models"],
    "rm --help": ["rm", "--help"],
    "doctor --help": ["doctor", "--help"],
    "solve --help": ["solve", "--help"],
}


@dataclass(frozen=True)
class StartupRow:
    """One command: median seconds, ratio to the baseline's median, the top cumulative imports."""

    command: str
    median_seconds: float
    ratio: float
    top_imports: list[str]


def _cli(*args: str) -> list[str]:
    code = "import sys; from mllm_cpu.cli import main; sys.argv[0] = 'mllm-cpu'; main()"
    return [sys.executable, "-c", code, *args]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def top_imports(command: list[str], count: int = 5) -> list[str]:
    """The modules with the largest cumulative import time (`-X importtime`), "name 0.123 s"."""
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, check=False)
    rows: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if "." not in name.strip():  # top-level packages only: their time includes their submodules
            rows.append((int(cumulative), name.strip()))
    rows.sort(reverse=True)
    return [f"{name} {micros / 1e6:.3f} s" for micros, name in rows[:count]]


def measure(commands: dict[str, list[str]], runs: int) -> list[StartupRow]:
    """Median wall time of each command and of the baseline, alternating run by run."""
    baseline_command = [sys.executable, "-c", "import typer, rich"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    baseline: list[float] = []
    for _ in range(runs):
        for name, args in commands.items():
            baseline.append(_wall(baseline_command))
            times[name].append(_wall(_cli(*args)))
    base = statistics.median(baseline)
    rows = [StartupRow(BASELINE, base, 1.0, top_imports(baseline_command))]
    for name, args in commands.items():
        median = statistics.median(times[name])
        rows.append(StartupRow(f"mllm-cpu {name}", median, median / base, top_imports(_cli(*args))))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the start-up table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--model", type=Path, help="also time `solve` on this (tiny) model")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    commands = dict(LIGHT_COMMANDS)
    if options.model is not None:
        commands["solve (tiny model)"] = ["solve", "1+1", "--model", str(options.model), "--max-tokens", "1"]
        _wall(_cli(*commands["solve (tiny model)"]))  # the first load is checked once, then cached
    rows = measure(commands, options.runs)
    if options.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return 0
    print("| command | median | × baseline | top imports (cumulative) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| `{row.command}` | {row.median_seconds:.3f} s | {row.ratio:.2f} | {', '.join(row.top_imports)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
