"""Peak resident memory of one model, measured in a fresh process.

A process's peak RSS only grows, so each model is measured in its own subprocess
(`python -m mllm_cpu.bench.memory FILE --ctx N --threads T`). That process imports
llama.cpp, records its RSS (the baseline: Python and the libraries), then loads the model
(mmap, CPU repacking as by default), creates a context of N tokens, decodes one full ubatch
of random prompt tokens (the compute buffer's worst case) and generates 16 tokens, with flash
attention as chat and solve run it (off: a larger compute buffer than llama-bench's "auto"). Peak RSS
is the operating system's high-water mark of that process (VmHWM on Linux); mapped
weight pages count once touched, and every weight is read by a decode. The buffer sizes
llama.cpp logs on the way (model, KV, compute, output) are reported too.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core.child import module_command
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import MIB

from .llama_session import (
    RUNTIME_FLASH_ATTN,
    ContextSettings,
    decode,
    ensure_backend,
    fill_batch,
    loaded_model,
    open_context,
    token_batch,
)

GENERATED_TOKENS = 16


@dataclass(frozen=True)
class MemoryReport:
    """What the measuring process saw, in bytes (logged buffers accurate to 0.01 MiB)."""

    baseline_rss_bytes: int
    peak_rss_bytes: int
    n_ctx: int
    kv_cells: int
    logged_mib: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def model_peak_bytes(self) -> int:
        """Peak RSS above the baseline: what loading and running the model added."""
        return self.peak_rss_bytes - self.baseline_rss_bytes

    def logged_bytes(self, kind: str) -> int:
        """A logged buffer kind ("model", "KV", "compute", "output") summed, in bytes."""
        return round(sum(self.logged_mib.get(kind, {}).values()) * MIB)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived model peak."""
        return {**asdict(self), "model_peak_bytes": self.model_peak_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryReport:
        """The inverse of `to_dict`."""
        return cls(
            int(data["baseline_rss_bytes"]),
            int(data["peak_rss_bytes"]),
            int(data["n_ctx"]),
            int(data["kv_cells"]),
            {k: dict(v) for k, v in data.get("logged_mib", {}).items()},
        )


def measure_memory(path: Path, n_ctx: int, threads: int, n_ubatch: int) -> MemoryReport:
    """Run the measurement in a fresh Python process and return its report."""
    command = module_command(
        "mllm_cpu.bench.memory", str(path), "--ctx", str(n_ctx), "--threads", str(threads), "--ubatch", str(n_ubatch)
    )
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode == 2:
            raise InputError(reason)
        raise RuntimeError(f"memory measurement of {path} failed: {reason}")
    return MemoryReport.from_dict(json.loads(done.stdout))


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux from VmHWM in /proc/self/status: it belongs to the process's memory map, so it
    starts afresh at exec (getrusage's ru_maxrss is inherited from the parent across fork and exec).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _measure(path: Path, n_ctx: int, threads: int, n_ubatch: int) -> MemoryReport:
    import llama_cpp

    ensure_backend()
    baseline = current_rss_bytes()
    with loaded_model(path) as model:
        settings = ContextSettings(n_ctx, threads, n_ubatch=n_ubatch, flash_attn=RUNTIME_FLASH_ATTN)
        with open_context(model, settings) as context:
            rng = random.Random(0)
            # llama.cpp pads n_ctx but clamps n_batch to the requested context: one decode call
            # may hold no more than n_batch tokens (more aborts the process)
            n_batch = int(llama_cpp.llama_n_batch(context.handle))
            n_prompt = max(1, min(n_ubatch, n_batch, context.n_ctx - GENERATED_TOKENS))
            with token_batch(n_prompt) as batch:
                fill_batch(batch, [rng.randrange(model.n_vocab) for _ in range(n_prompt)], 0)
                decode(context, batch)
            with token_batch(1) as batch:
                for pos in range(n_prompt, min(n_prompt + GENERATED_TOKENS, context.n_ctx)):
                    fill_batch(batch, [rng.randrange(model.n_vocab)], pos)
                    decode(context, batch)
            llama_cpp.llama_synchronize(context.handle)
            logged = {**model.buffers.sizes_mib, **context.buffers.sizes_mib}
            cells = context.buffers.kv_cells or context.n_ctx
            return MemoryReport(baseline, peak_rss_bytes(), context.n_ctx, cells, logged)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the measuring subprocess: prints one JSON report on stdout."""
    parser = argparse.ArgumentParser(description="Peak RSS of one model in a fresh process.")
    parser.add_argument("model", type=Path)
    parser.add_argument("--ctx", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--ubatch", type=int, default=512)
    args = parser.parse_args(argv)
    try:
        report = _measure(args.model, args.ctx, args.threads, args.ubatch)
    except InputError as error:
        print(error, file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
