"""Run the installed `mllm-cpu` console script as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MLLM_CPU = str(Path(sys.executable).parent / "mllm-cpu")


def run_cli(*args: str, timeout: float = 300, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `mllm-cpu ARGS...` and capture its output."""
    return subprocess.run([MLLM_CPU, *args], capture_output=True, text=True, timeout=timeout, input=input_text)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-empty lines the command wrote to stderr."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def files_in(folder: Path) -> list[str]:
    """Every file name below a folder (hidden ones too)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def child_pids(pid: int) -> list[int]:
    """The child processes of `pid` (its model runner, say), from /proc."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(child) for task in tasks for child in (task / "children").read_text().split()]
