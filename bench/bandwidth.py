"""This machine's memory read bandwidth, the limit of token generation on a CPU.

What is measured: W worker processes (one per physical core by default) each allocate a
private float32 array (their share of `array_bytes`, far larger than the caches), touch it,
then, released together by a barrier, each computes numpy's max() over its array: a pure
streaming read. One repeat's bandwidth = all arrays' bytes / the slowest worker's time.
Processes, not threads, so that every core reads at once (numpy reductions hold the GIL).
The result keeps every repeat; `best` (as STREAM reports) is the roofline's bandwidth.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.hardware import available_memory_bytes, physical_cores

DEFAULT_ARRAY_BYTES = 1 << 30
MIN_ARRAY_BYTES = 64 << 20
METHOD = "numpy float32 max() over a private array per worker process, workers released together"


@dataclass(frozen=True)
class Bandwidth:
    """Read bandwidth samples in bytes per second."""

    samples: list[float]
    workers: int
    array_bytes: int
    method: str = METHOD

    @property
    def best(self) -> float:
        """The highest repeat (bytes/s)."""
        return max(self.samples)

    @property
    def median(self) -> float:
        """The median repeat (bytes/s)."""
        return statistics.median(self.samples)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with best and median spelled out."""
        return {**asdict(self), "best": self.best, "median": self.median}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bandwidth:
        """The inverse of `to_dict`."""
        return cls(
            [float(s) for s in data["samples"]], int(data["workers"]), int(data["array_bytes"]), str(data["method"])
        )


def default_array_bytes() -> int:
    """1 GiB, or a quarter of the available memory on a small board (at least 64 MiB)."""
    return max(MIN_ARRAY_BYTES, min(DEFAULT_ARRAY_BYTES, available_memory_bytes() // 4))


def measure_read_bandwidth(workers: int | None = None, array_bytes: int | None = None, repeats: int = 5) -> Bandwidth:
    """Measure streaming read bandwidth with `workers` processes over `array_bytes` in total."""
    workers = workers or physical_cores()
    array_bytes = array_bytes or default_array_bytes()
    if workers < 1 or repeats < 1 or array_bytes < workers * 4096:
        raise InputError("bandwidth measurement needs at least one worker, one repeat and 4 KiB per worker")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    share = array_bytes // workers // 4 * 4
    processes = [
        context.Process(target=_read_worker, args=(share, repeats, barrier, results), daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        times: dict[int, list[float]] = {}
        for _ in range(workers * repeats):
            repeat, seconds = _next_result(results, processes)
            times.setdefault(repeat, []).append(seconds)
    except BaseException:
        for process in processes:
            process.terminate()
        raise
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    total = share * workers
    return Bandwidth([total / max(times[r]) for r in sorted(times)], workers, total)


def _next_result(results: Any, processes: list[Any]) -> tuple[int, float]:
    """The next worker result; an InputError if a worker died without sending it."""
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise InputError(
                    f"the memory bandwidth workers died (exit code {dead[0]}). A script that calls "
                    'run_benchmark or measure_read_bandwidth must do so under `if __name__ == "__main__":` '
                    "(the workers are started with multiprocessing's spawn, which imports the script again)"
                ) from None


def _read_worker(share: int, repeats: int, barrier: Any, results: Any) -> None:
    import numpy as np

    values = np.ones(share // 4, dtype=np.float32)
    values.max()
    for repeat in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        values.max()
        results.put((repeat, time.perf_counter() - start))
