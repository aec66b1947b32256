"""Serving speed of `mllm-cpu serve --parallel N` next to llama.cpp's `llama-server -np N` on one file.

Both servers are started here on free loopback ports with the same GGUF, context per sequence,
threads and number of slots, and are driven by `bench --endpoint`'s measurement
(`run_endpoint_benchmark`: at each concurrency, that many greedy streamed chat requests of
`-n` tokens sent at once). Rounds alternate which server goes first; the table gives each
level's median aggregate t/s for both and their ratio, and the ratio of 4 streams (or the
highest level) to one stream for ours. llama-server is built from the llama.cpp that
llama-cpp-python vendors (`compare_llama_bench.build_llama_tool`), `--no-amx` without the AMX
kernels that crash on some CPUs.

    python -m mllm_cpu.bench.compare_llama_server MODEL.gguf --parallel 4 --concurrency 1,2,4,8 --build --no-amx
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import FLASH_ATTENTION
from mllm_cpu.hardware import physical_cores

from .compare_llama_bench import build_llama_tool, cached_binary
from .endpoint import check_concurrency, run_endpoint_benchmark

START_SECONDS = 300
SERVERS = ("mllm-cpu", "llama-server")


@dataclass
class ServerComparison:
    """Per concurrency level, each round's aggregate t/s of both servers, and the commands that ran them."""

    commands: dict[str, list[str]]
    aggregate: dict[str, dict[int, list[float]]] = field(default_factory=lambda: {name: {} for name in SERVERS})

    def median(self, server: str, level: int) -> float:
        """The median aggregate t/s of one server at one level."""
        return statistics.median(self.aggregate[server][level])

    def rows(self) -> list[list[str]]:
        """One row per level: concurrency, ours, llama-server, ours ÷ llama-server, ours ÷ ours at 1."""
        levels = sorted(self.aggregate["mllm-cpu"])
        single = self.median("mllm-cpu", levels[0])
        return [
            [
                str(level),
                f"{self.median('mllm-cpu', level):.1f}",
                f"{self.median('llama-server', level):.1f}",
                f"{self.median('mllm-cpu', level) / self.median('llama-server', level):.2f}",
                f"{self.median('mllm-cpu', level) / single:.2f}",
            ]
            for level in levels
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the commands, every round's values and the medians."""
        return {
            "commands": self.commands,
            "aggregate_ts": {s: {str(k): v for k, v in levels.items()} for s, levels in self.aggregate.items()},
            "median_aggregate_ts": {
                s: {str(k): statistics.median(v) for k, v in levels.items()} for s, levels in self.aggregate.items()
            },
        }


COLUMNS = ["concurrency", "mllm-cpu t/s", "llama-server t/s", "ratio", "÷ one stream"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def our_command(model: Path, parallel: int, ctx: int, threads: int, port: int) -> list[str]:
    """`mllm-cpu serve` as installed next to this Python."""
    executable = Path(sys.executable).with_name("mllm-cpu")
    program = str(executable) if executable.exists() else shutil.which("mllm-cpu") or "mllm-cpu"
    return [
        program, "serve", "--model", str(model), "--parallel", str(parallel), "--ctx", str(ctx),
        "--threads", str(threads), "--port", str(port),
    ]  # fmt: skip


def llama_server_command(binary: Path, model: Path, parallel: int, ctx: int, threads: int, port: int) -> list[str]:
    """`llama-server -np N` with each slot `ctx` tokens of a unified cache, as the batched engine."""
    return [
        str(binary), "-m", str(model), "-np", str(parallel), "-c", str(parallel * ctx), "--kv-unified",
        "-t", str(threads), "-fa", "on" if FLASH_ATTENTION else "off", "--host", "127.0.0.1", "--port", str(port),
        "--no-webui",
    ]  # fmt: skip


class Server:
    """A server process started here, its base URL, and the tail of its log for an error line."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command = command
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.log: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.put(line)

    def wait_ready(self) -> None:
        """Until /health answers 200; InputError when the process ends or the time runs out."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = []
                while not self.log.empty():
                    lines.append(self.log.get().strip())
                raise InputError(f"{self.command[0]} exited with {self.process.returncode}: {lines[-1:] or ''}")
            try:
                with urllib.request.urlopen(self.url.removesuffix("/v1") + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise InputError(f"{self.command[0]} did not answer /health within {START_SECONDS} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def compare(
    binary: Path,
    model: Path,
    parallel: int,
    levels: list[int],
    n_gen: int,
    ctx: int,
    threads: int,
    rounds: int,
    on_round: Any = None,
) -> ServerComparison:
    """Start both servers, measure them in alternating order for `rounds` rounds, stop them."""
    check_concurrency(levels)
    ours_port, theirs_port = free_port(), free_port()
    commands = {
        "mllm-cpu": our_command(model, parallel, ctx, threads, ours_port),
        "llama-server": llama_server_command(binary, model, parallel, ctx, threads, theirs_port),
    }
    comparison = ServerComparison(commands)
    servers: dict[str, Server] = {}
    try:
        servers["mllm-cpu"] = Server(commands["mllm-cpu"], ours_port)
        servers["llama-server"] = Server(commands["llama-server"], theirs_port)
        for server in servers.values():
            server.wait_ready()
        for round_index in range(rounds):
            order = SERVERS if round_index % 2 == 0 else SERVERS[::-1]
            for name in order:
                run = run_endpoint_benchmark([servers[name].url], None, None, levels, n_gen, warmup=True)
                for result in run.results:
                    if result.errors:
                        raise InputError(f"{name}: {result.errors[0]}")
                    comparison.aggregate[name].setdefault(result.concurrency, []).append(result.aggregate_ts)
            if on_round is not None:
                on_round(f"round {round_index + 1}/{rounds} done")
    finally:
        for server in servers.values():
            server.stop()
    return comparison


def main(argv: list[str] | None = None) -> int:
    """Command line: both servers on one GGUF; prints the table (or --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--parallel", type=int, default=4, help="slots of both servers")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=2048, help="context of each sequence")
    parser.add_argument("-t", "--threads", type=int, default=physical_cores())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-server", type=Path, help="use this llama-server executable")
    parser.add_argument("--build", action="store_true", help="build llama-server with cmake (cached)")
    parser.add_argument("--no-amx", action="store_true", help="use (or --build) llama-server without AMX")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        levels = [int(part) for part in args.concurrency.split(",")]
        if min(args.parallel, args.n_gen - 1, args.ctx, args.threads, args.rounds) < 1:
            raise InputError("--parallel, --ctx, --threads and --rounds must be at least 1, -n at least 2")
        binary = args.llama_server or cached_binary("llama-server", no_amx=args.no_amx)
        if args.build and args.llama_server is None:
            binary = build_llama_tool("llama-server", "server", no_amx=args.no_amx)
        if not binary.is_file():
            raise InputError(f"no llama-server at {binary}; run with --build (or give --llama-server PATH)")
        comparison = compare(
            binary,
            args.model,
            args.parallel,
            levels,
            args.n_gen,
            args.ctx,
            args.threads,
            args.rounds,
            lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return 0
    print(f"{args.model.name}, {args.parallel} slots, -n {args.n_gen}, {args.rounds} rounds (median aggregate t/s)")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in comparison.rows():
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
