"""Anchor `mllm-cpu quality` to llama.cpp's own llama-perplexity on the same files and text.

    python -m mllm_cpu.bench.compare_llama_perplexity REFERENCE.gguf LEVEL.gguf... [--text FILE]
        [--ctx 512] [--chunks N] [-t N] [--build]

llama-perplexity is built (`--build`, cached next to llama-bench) from the llama.cpp sources
the installed llama-cpp-python vendors, with the same build code as the llama-bench
comparison. It runs once on the reference with `--kl-divergence-base` (the reference's
log-probabilities saved), then once per file with `--kl-divergence`, the reference included;
all with `-b` equal to `-c`, so each chunk is one batch of one sequence, as ours. The table puts its
final statistics next to ours. Perplexities agree to float rounding; KL values differ by the
16-bit storage of the reference's log-probabilities in llama-perplexity (steps of up to
2.4e-4 nats; see bench/quality.py), which matters only for KL near 0. llama-perplexity needs
a text of at least 2 chunks and 100 scored tokens. Not run in CI: it needs a compiler, cmake
and minutes of build time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.hardware import physical_cores

from .compare_llama_bench import build_llama_tool, cached_binary
from .quality import QualityOptions, Scores, prepare, read_text, run_quality

TOOL = "llama-perplexity"
_KL_STATS = {
    "ppl": re.compile(r"Mean PPL\(Q\)\s*:\s*(?P<value>[0-9.]+)"),
    "reference_ppl": re.compile(r"Mean PPL\(base\)\s*:\s*(?P<value>[0-9.]+)"),
    "kl_mean": re.compile(r"Mean\s+KLD:\s*(?P<value>-?[0-9.]+)"),
    "kl_p99": re.compile(r"99\.0%\s+KLD:\s*(?P<value>-?[0-9.]+)"),
    "kl_max": re.compile(r"Maximum KLD:\s*(?P<value>-?[0-9.]+)"),
    "same_top_percent": re.compile(r"Same top p:\s*(?P<value>[0-9.]+)"),
}


@dataclass
class LevelComparison:
    """Ours and llama-perplexity's numbers for one file."""

    path: str
    ours: dict[str, float]
    llama_perplexity: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _ours(scores: Scores) -> dict[str, float]:
    return {
        "ppl": scores.ppl,
        "reference_ppl": scores.reference_ppl,
        "kl_mean": scores.kl_mean,
        "kl_p99": scores.kl_p99,
        "kl_max": scores.kl_max,
        "same_top_percent": 100 * scores.same_top,
    }


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{TOOL} failed ({done.returncode}): {done.stderr.strip().splitlines()[-3:]}")
    return done.stdout + done.stderr


def _parse(output: str, patterns: dict[str, re.Pattern[str]]) -> dict[str, float]:
    values = {}
    for key, pattern in patterns.items():
        match = pattern.search(output)
        if match is None:
            raise RuntimeError(f"{TOOL} printed no {key}; its output ends with: {output.strip().splitlines()[-5:]}")
        values[key] = float(match["value"])
    return values


def compare(
    binary: Path,
    reference: Path,
    levels: list[Path],
    text_path: Path | None,
    options: QualityOptions,
    on_stage: Callable[[str], None] = lambda description: None,
) -> list[LevelComparison]:
    """Run both tools: llama-perplexity saves the reference's log-probabilities, then compares every
    file with them, the reference included (its "Mean PPL(Q)" is the reference's perplexity).
    `on_stage` hears what our side measures now."""
    text = read_text(text_path)
    _, tokens, n_chunks = prepare(reference, levels, text, options)
    if n_chunks < 2 or n_chunks * (options.n_ctx - 1 - options.n_ctx // 2) < 100:
        raise InputError(
            f"{TOOL} needs at least 2 chunks and 100 scored tokens; give a longer --text or a smaller --ctx"
        )
    run = run_quality(reference, levels, text, options, _Stages(on_stage))
    common = ["-c", str(options.n_ctx), "-b", str(options.n_ctx), "-t", str(options.thread_count)]
    with tempfile.TemporaryDirectory(prefix="mllm-cpu-ppl-") as scratch:
        text_file = Path(scratch) / "text.txt"
        text_file.write_text(text.text + "\n", encoding="utf-8")  # -f drops one final newline
        base = Path(scratch) / "reference.kld"
        _run(
            [
                str(binary),
                "-m",
                str(reference),
                "-f",
                str(text_file),
                *common,
                "--chunks",
                str(n_chunks),
                "--kl-divergence-base",
                str(base),
            ]
        )
        return [
            LevelComparison(
                level.path,
                _ours(level.scores),
                _parsed_run(
                    [str(binary), "-m", level.path, *common, "--kl-divergence-base", str(base), "--kl-divergence"]
                ),
            )
            for level in run.levels
        ]


def _parsed_run(command: list[str], attempts: int = 3) -> dict[str, float]:
    """Run llama-perplexity and parse its final statistics; its asynchronous log sometimes loses the
    last lines when the process exits, so a run whose output lacks them is repeated."""
    for _ in range(attempts - 1):
        try:
            return _parse(_run(command), _KL_STATS)
        except RuntimeError:
            continue
    return _parse(_run(command), _KL_STATS)


class _Stages:
    """A QualityProgress that passes on only the stage descriptions."""

    def __init__(self, on_stage: Callable[[str], None]) -> None:
        self.on_stage = on_stage

    def begin(self, total_steps: int) -> None:
        pass

    def stage(self, description: str) -> None:
        self.on_stage(description)

    def advance(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    """Command line: compare on a reference and level files; print both tools' numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("levels", type=Path, nargs="+")
    parser.add_argument("--text", type=Path, help="text file (default: the built-in evaluation text)")
    parser.add_argument("-c", "--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int)
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--llama-perplexity", type=Path, help="use this llama-perplexity executable")
    parser.add_argument("--build", action="store_true", help="build llama-perplexity with cmake (cached)")
    parser.add_argument("--source", type=Path, help="llama.cpp source tree for --build (default: the sdist)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = parser.parse_args(argv)
    options = QualityOptions(n_ctx=args.ctx, chunks=args.chunks, threads=args.threads)
    try:
        binary = args.llama_perplexity or cached_binary(TOOL)
        if args.build and args.llama_perplexity is None:
            binary = build_llama_tool(TOOL, "perplexity", args.source)
        if not binary.is_file():
            raise InputError(f"no {TOOL} at {binary}; run with --build (or give --llama-perplexity PATH)")
        results = compare(
            binary,
            args.reference,
            args.levels,
            args.text,
            options,
            lambda description: print(description, file=sys.stderr, flush=True),
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    keys = ("ppl", "kl_mean", "kl_p99", "same_top_percent")
    print(f"{'file':<40} " + " ".join(f"{k + ' ours':>18} {k + ' llama':>18}" for k in keys))
    for result in results:
        cells = []
        for key in keys:
            ours, theirs = result.ours.get(key), result.llama_perplexity.get(key)
            cells.append(
                f"{'-' if ours is None else f'{ours:.6f}':>18} {'-' if theirs is None else f'{theirs:.6f}':>18}"
            )
        print(f"{Path(result.path).name:<40} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
