"""Start a module of this package in a child Python process, as installed, and tell how it ended.

`python -m` and `python -c` put the current folder first on `sys.path`; run from a checkout
of this repository, its `mllm_cpu/` folder (which has no `convert/` or `bench/` inside)
would then shadow the installed package. The child drops that entry before importing.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child process: ask Linux to kill it when its parent (PID `parent`) dies; exit now if it has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except AttributeError:  # not Linux
        return
    if os.getppid() != parent:
        sys.exit(1)


def module_command(module: str, *arguments: str) -> list[str]:
    """The command running `python -m module arguments...` without the current folder on sys.path."""
    code = f"import runpy, sys; del sys.path[0]; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", code, *arguments]


@dataclass(frozen=True)
class ChildResult:
    """How a child process ended: its exit code (negative: the signal that ended it) and its output."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def crashed(self) -> bool:
        """Ended by a signal (SIGSEGV, SIGABRT from an assert, ...) or by the time limit."""
        return self.returncode < 0 or self.timed_out

    def crash_reason(self) -> str:
        """What ended the child, as one line: llama.cpp's assert or exception if it printed one, else the signal."""
        if self.timed_out:
            return "it did not finish in time"
        assertion = _ASSERT.search(self.stderr)
        if assertion:
            return f"{assertion['what']} ({Path(assertion['file']).name}:{assertion['line']})"
        exception = _CXX_EXCEPTION.search(self.stderr)
        if exception:
            return f"{exception['type']}: {exception['what'].strip()}"
        try:
            name = signal.Signals(-self.returncode).name
        except ValueError:
            name = f"signal {-self.returncode}"
        return f"it ended with {name}"


_ASSERT = re.compile(r"(?P<file>[^\s:]+):(?P<line>\d+): (?P<what>GGML_ASSERT\(.*\)) failed")
_CXX_EXCEPTION = re.compile(r"terminate called after throwing an instance of '(?P<type>[^']+)'\s+what\(\):(?P<what>.*)")


def run_child(command: list[str], *, timeout: float, env: dict[str, str] | None = None) -> ChildResult:
    """Run `command` to the end (killed after `timeout` seconds), its output captured; Ctrl-C kills it too.

    An assert in llama.cpp prints its message and no backtrace (which would run gdb for seconds).
    """
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "GGML_NO_BACKTRACE": "1", **(env or {})},
        text=True,
        errors="replace",
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            return ChildResult(process.returncode, stdout, stderr, timed_out=True)
        except BaseException:
            process.kill()
            raise
        return ChildResult(process.returncode, stdout, stderr)
