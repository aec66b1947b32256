"""Facts about the machine that choose defaults: cores and memory (psutil is imported when asked)."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical CPU cores (not hyper-threads) available to this process; at least 1."""
    import psutil

    counted = psutil.cpu_count(logical=False)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(counted or available or 1, available or 1))


def logical_cores() -> int:
    """Logical CPUs (hardware threads)."""
    import psutil

    return psutil.cpu_count(logical=True) or os.cpu_count() or 1


def total_memory_bytes() -> int:
    """Installed memory in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def available_memory_bytes() -> int:
    """Memory available to new allocations, in bytes."""
    import psutil

    return int(psutil.virtual_memory().available)
