"""Anchor `mllm-cpu bench` to llama.cpp's own llama-bench on the same file and threads.

    python -m mllm_cpu.bench.compare_llama_bench MODEL.gguf -t 2 --rounds 5 [--build] [--static] [--cli]
        [-d DEPTH] [-fa on|off|auto]

llama-bench is built from the llama.cpp sources that the installed llama-cpp-python vendors
(its sdist, fetched with pip, or `--source DIR`), with the flags llama-cpp-python builds
with (Release, shared libraries, -march=native, OpenMP), and cached in the model store.
This shared build runs the same library code as mllm-cpu and is the one to compare with;
`--static` builds and uses a static one (BUILD_SHARED_LIBS=OFF), whose code differs by
its linking (see docs/DESIGN.md). Each round runs, per test, both tools back to back with
the same settings (threads, batch sizes, repetitions), alternating which goes first; with
`--cli`, ours is `mllm-cpu bench FILE ... --json` run as a user runs it, and both tools
run both tests in one process per round. The ratio ours/llama-bench is that of the medians
over the rounds of each tool's mean t/s ("paired": the median of the per-round ratios,
which cancels slow drifts of a noisy machine). Not run in CI: it needs a compiler, cmake
and minutes of build time.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.hardware import physical_cores
from mllm_cpu.model_file import validate_model_file
from mllm_cpu.store import store_home

from .llama_session import DEFAULT_FLASH_ATTN, loaded_model, parse_flash_attn
from .speed import SpeedTest, run_speed_test

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_CCACHE=OFF",
)

NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
"""Compiler flags that leave llama.cpp's AMX kernels out of a native build (`--no-amx`), as
`mllm_cpu.kernels` leaves them out at load time where they fault."""


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python version (its sdist carries the matching llama.cpp)."""
    return importlib.metadata.version("llama-cpp-python")


def cache_dir() -> Path:
    """Where the llama-bench build for this llama-cpp-python version lives."""
    return store_home() / "tools" / f"llama.cpp-{llama_cpp_python_version()}"


def build_dir(static: bool = False, no_amx: bool = False) -> Path:
    """The cmake build folder of the shared (default) or the static build, with or without AMX."""
    return cache_dir() / ("build" + ("-static" if static else "") + ("-noamx" if no_amx else ""))


def cached_binary(tool: str = "llama-bench", static: bool = False, no_amx: bool = False) -> Path:
    """A cached llama.cpp tool executable, llama-bench by default (it may not exist yet)."""
    return build_dir(static, no_amx) / "bin" / tool


def fetch_sources(workdir: Path) -> Path:
    """Download llama-cpp-python's sdist with pip and return its vendored llama.cpp tree."""
    spec = f"llama-cpp-python=={llama_cpp_python_version()}"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--no-binary", ":all:", "-d", str(workdir)],
        check=True,
    )
    (archive,) = workdir.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:
            tar.extractall(workdir)
    (source,) = workdir.glob("llama_cpp_python-*/vendor/llama.cpp")
    return source


def build_llama_bench(
    source: Path | None = None, jobs: int | None = None, static: bool = False, no_amx: bool = False
) -> Path:
    """Configure and build llama-bench with cmake into the cache; returns the executable."""
    return build_llama_tool("llama-bench", "llama-bench", source, jobs, static, no_amx)


def build_llama_tool(
    target: str,
    folder: str,
    source: Path | None = None,
    jobs: int | None = None,
    static: bool = False,
    no_amx: bool = False,
) -> Path:
    """Build one llama.cpp tool (cmake `target`, sources in tools/`folder`) into the cache,
    with shared libraries as llama-cpp-python, or `static`ally linked; `no_amx` compiles AMX out."""
    if shutil.which("cmake") is None:
        raise InputError(f"building {target} needs cmake (and a C/C++ compiler)")
    build = build_dir(static, no_amx)
    flags = [f for f in CMAKE_FLAGS if not f.startswith(("-DBUILD_SHARED_LIBS=", "-DLLAMA_BUILD_SERVER="))]
    flags.append(f"-DLLAMA_BUILD_SERVER={'ON' if target == 'llama-server' else 'OFF'}")
    flags.append(f"-DBUILD_SHARED_LIBS={'OFF' if static else 'ON'}")
    if no_amx:
        flags += [f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}"]
    tree = Path(source) if source is not None else cached_sources()
    if not (tree / "tools" / folder).is_dir():
        raise InputError(f"{tree}: not a llama.cpp source tree with tools/{folder}")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build), *generator, *flags], check=True)
    subprocess.run(
        ["cmake", "--build", str(build), "--target", target, "-j", str(jobs or os.cpu_count() or 1)],
        check=True,
    )
    return cached_binary(target, static, no_amx)


def cached_sources() -> Path:
    """The vendored llama.cpp tree, fetched once into the cache so every tool's build folder
    keeps one source path (cmake refuses a build folder configured from another tree)."""
    sources = cache_dir() / "sources"
    found = list(sources.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[0]
    sources.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-cpp-src-", dir=sources) as workdir:
        tree = fetch_sources(Path(workdir))
        package = tree.parent.parent
        package.rename(sources / package.name)
    return sources / package.name / "vendor" / "llama.cpp"


@dataclass
class Comparison:
    """Per test (e.g. "pp512"): the llama-bench command and each round's mean t/s from both tools."""

    commands: dict[str, list[str]] = field(default_factory=dict)
    ours: dict[str, list[float]] = field(default_factory=dict)
    llama_bench: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, test: str) -> float:
        """median(ours) / median(llama-bench)."""
        return statistics.median(self.ours[test]) / statistics.median(self.llama_bench[test])

    def paired_ratio(self, test: str) -> float:
        """The median over rounds of ours / llama-bench within a round (cancels drift between rounds)."""
        return statistics.median(o / b for o, b in zip(self.ours[test], self.llama_bench[test], strict=False))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with medians and ratios."""
        return {
            test: {
                "llama_bench_command": self.commands[test],
                "ours": self.ours[test],
                "llama_bench": self.llama_bench[test],
                "ours_median": statistics.median(self.ours[test]),
                "llama_bench_median": statistics.median(self.llama_bench[test]),
                "ratio": self.ratio(test),
                "paired_ratio": self.paired_ratio(test),
            }
            for test in self.ours
        }


def _test_arguments(tests: list[SpeedTest]) -> list[str]:
    """The threads, prompt and generation lengths, depth and flash attention both tools take as
    `-t -p -n -d -fa`."""
    return [
        "-t",
        str(tests[0].threads),
        "-p",
        str(max(t.n_prompt for t in tests)),
        "-n",
        str(max(t.n_gen for t in tests)),
        "-d",
        str(tests[0].n_depth),
        "-fa",
        tests[0].flash_attn,
    ]


def llama_bench_command(binary: Path, model: Path, tests: list[SpeedTest], repetitions: int) -> list[str]:
    """llama-bench running `tests` (one pp and/or one tg test) with the same settings as ours."""
    first = tests[0]
    return [
        str(binary),
        "-m",
        str(model),
        *_test_arguments(tests),
        "-b",
        str(first.n_batch),
        "-ub",
        str(first.n_ubatch),
        "-r",
        str(repetitions),
        "-o",
        "json",
    ]


def run_llama_bench(command: list[str]) -> dict[str, float]:
    """Run llama-bench (`-o json`); mean t/s by test name ("pp512", "tg128 @ d512")."""
    means = {}
    for entry in _run_json(command, "llama-bench"):
        test = SpeedTest(
            int(entry["n_prompt"]), int(entry["n_gen"]), int(entry["n_threads"]), n_depth=int(entry.get("n_depth", 0))
        )
        means[test.name] = float(entry["avg_ts"])
    return means


def cli_command(model: Path, tests: list[SpeedTest], repetitions: int) -> list[str]:
    """`mllm-cpu bench` as a user runs it, measuring `tests`, JSON on stdout."""
    return [
        str(Path(sys.executable).parent / "mllm-cpu"),
        "bench",
        str(model),
        *_test_arguments(tests),
        "-r",
        str(repetitions),
        "--no-bandwidth",
        "--json",
    ]


def run_cli(command: list[str]) -> dict[str, float]:
    """Run `mllm-cpu bench ... --json`; mean t/s by test name."""
    return {r["test"]: float(r["avg_ts"]) for r in _run_json(command, "mllm-cpu bench")["results"]}


def _run_json(command: list[str], what: str) -> Any:
    """Run a measuring command and parse the JSON it prints; its last error line on failure."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def run_ours(model: Path, test: SpeedTest, repetitions: int) -> float:
    """Load the model and run one test as `mllm-cpu bench` does; mean t/s."""
    with loaded_model(model) as loaded:
        return run_speed_test(loaded, test, repetitions).mean_ts


def compare(
    binary: Path,
    model: Path,
    threads: int,
    n_prompt: int,
    n_gen: int,
    repetitions: int,
    rounds: int,
    cli: bool = False,
    depth: int = 0,
    flash_attn: str = DEFAULT_FLASH_ATTN,
    on_round: Callable[[str], None] = lambda line: None,
) -> Comparison:
    """For each round and test, run both tools back to back, alternating which goes first; `on_round`
    hears each round's numbers as one line.

    With `cli`, each round runs `mllm-cpu bench` and llama-bench once each, both tests in one process.
    """
    validate_model_file(model)
    tests = [
        SpeedTest(n_prompt, 0, threads, n_depth=depth, flash_attn=flash_attn),
        SpeedTest(0, n_gen, threads, n_depth=depth, flash_attn=flash_attn),
    ]
    groups = [tests] if cli else [[test] for test in tests]
    comparison = Comparison(
        {t.name: llama_bench_command(binary, model, group, repetitions) for group in groups for t in group}
    )
    for round_index in range(rounds):
        for group_index, group in enumerate(groups):
            ours_first = (round_index + group_index) % 2 == 0
            for tool in ("ours", "llama-bench") if ours_first else ("llama-bench", "ours"):
                if tool == "llama-bench":
                    values = run_llama_bench(comparison.commands[group[0].name])
                elif cli:
                    values = run_cli(cli_command(model, group, repetitions))
                else:
                    values = {group[0].name: run_ours(model, group[0], repetitions)}
                for test in group:
                    side = comparison.ours if tool == "ours" else comparison.llama_bench
                    side.setdefault(test.name, []).append(values[test.name])
        line = ", ".join(
            f"{name} ours {comparison.ours[name][-1]:.2f} / llama-bench {comparison.llama_bench[name][-1]:.2f}"
            for name in comparison.ours
        )
        on_round(f"round {round_index + 1}/{rounds}: {line}")
    return comparison


def main(argv: list[str] | None = None) -> int:
    """Command line: compare on one GGUF file and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("-d", "--n-depth", type=int, default=0, help="tokens of context before each test")
    parser.add_argument("-fa", "--flash-attn", default=DEFAULT_FLASH_ATTN, help="on, off or auto (both tools)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--llama-bench", type=Path, help="use this llama-bench executable")
    parser.add_argument("--build", action="store_true", help="build llama-bench with cmake (cached)")
    parser.add_argument("--static", action="store_true", help="use (or --build) a statically linked llama-bench")
    parser.add_argument(
        "--no-amx", action="store_true", help="use (or --build) llama-bench compiled without AMX (-mno-amx-*)"
    )
    parser.add_argument("--cli", action="store_true", help="measure ours with the `mllm-cpu bench` command")
    parser.add_argument("--source", type=Path, help="llama.cpp source tree for --build (default: the sdist)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    try:
        if min(args.threads, args.n_prompt, args.n_gen, args.repetitions, args.rounds) < 1:
            raise InputError("threads, -p, -n, repetitions and rounds must be at least 1")
        flash_attn = parse_flash_attn(args.flash_attn)
        binary = args.llama_bench or cached_binary(static=args.static, no_amx=args.no_amx)
        if args.build and args.llama_bench is None:
            binary = build_llama_bench(args.source, static=args.static, no_amx=args.no_amx)
        if not binary.is_file():
            raise InputError(f"no llama-bench at {binary}; run with --build (or give --llama-bench PATH)")
        comparison = compare(
            binary,
            args.model,
            args.threads,
            args.n_prompt,
            args.n_gen,
            args.repetitions,
            args.rounds,
            args.cli,
            args.n_depth,
            flash_attn,
            lambda line: print(line, file=sys.stderr, flush=True),
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return 0
    for test, command in comparison.commands.items():
        print(f"llama-bench {test}: " + " ".join(command))
    print(f"{'test':>14} {'ours t/s':>12} {'llama-bench t/s':>16} {'ours/llama-bench':>17} {'paired':>8}")
    for test in comparison.ours:
        print(
            f"{test:>14} {statistics.median(comparison.ours[test]):12.2f} "
            f"{statistics.median(comparison.llama_bench[test]):16.2f} {comparison.ratio(test):17.3f} "
            f"{comparison.paired_ratio(test):8.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
