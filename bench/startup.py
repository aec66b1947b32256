"""How fast `mllm-cpu` starts: each command's median wall time next to bare `import typer, rich`.

    python -m mllm_cpu.bench.startup [--runs 10] [--model FILE] [--json]

Each command runs `--runs` times in a fresh process, alternating with the baseline, so a
noisy machine slows both alike; the ratio to the baseline's median is the figure to compare.
The heaviest imports of each command come from `python -X importtime` (cumulative, top 5).
With `--model`, `solve` on that file is timed up to llama.cpp's model load: the child stops
itself where llama.cpp's loader would start.

The children may write bytecode (PYTHONDONTWRITEBYTECODE is dropped from their environment) and
each command runs once before the timing, as an installed copy runs from compiled modules.
"""

from __future__ import annotations

import argparse
import json
import os
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


SOLVE_TO_LOAD = "solve -m MODEL, to the model load"
_RUN_CLI = "import sys; from mllm_cpu.__main__ import main; sys.argv[0] = 'mllm-cpu'; main()"
_STOP_AT_LOAD = "import os, llama_cpp.llama_cpp as c; c.llama_model_load_from_file = lambda *a: os._exit(0); "
"""Prepended to the child's code: llama.cpp's model loader becomes an exit (llama_cpp is then
imported first, which moves its import time, not its amount)."""
_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def _cli(*args: str, until_load: bool = False) -> list[str]:
    code = (_STOP_AT_LOAD if until_load else "") + _RUN_CLI
    return [sys.executable, "-c", code, *args]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=_ENV)
    return time.perf_counter() - start


def top_imports(command: list[str], count: int = 5) -> list[str]:
    """The modules with the largest cumulative import time (`-X importtime`), "name 0.123 s"."""
    importtime = [command[0], "-X", "importtime", *command[1:]]
    done = subprocess.run(importtime, capture_output=True, text=True, check=False, env=_ENV)
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
    lines = {name: _cli(*args, until_load=name == SOLVE_TO_LOAD) for name, args in commands.items()}
    for line in [baseline_command, *lines.values()]:
        _wall(line)  # compiles the modules, and checks a model's first load once (then cached)
    times: dict[str, list[float]] = {name: [] for name in commands}
    baseline: list[float] = []
    for _ in range(runs):
        for name, line in lines.items():
            baseline.append(_wall(baseline_command))
            times[name].append(_wall(line))
    base = statistics.median(baseline)
    rows = [StartupRow(BASELINE, base, 1.0, top_imports(baseline_command))]
    for name, line in lines.items():
        median = statistics.median(times[name])
        rows.append(StartupRow(f"mllm-cpu {name}", median, median / base, top_imports(line)))
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
        commands[SOLVE_TO_LOAD] = ["solve", "1+1", "--model", str(options.model), "--max-tokens", "1"]
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
