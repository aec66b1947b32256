"""Run model-written Python in a separate, limited interpreter.

This is containment for the mistakes of a small model (an endless loop, a runaway
allocation, a stray file write or `rm`), not a security boundary: code that sets out to
escape (through an inherited descriptor, a C extension, or a flaw in CPython) can. Run
untrusted code from others in a container or VM.

What the child gets:
- `python -I -B` (isolated mode, no bytecode writes), a fresh temporary directory as its
  working directory (also HOME and TMPDIR), a minimal environment, stdin at EOF, and its
  own session, so on timeout the whole process group is killed;
- resource limits: address space (`memory_mb`), CPU seconds, file size (which also caps
  stdout and stderr, as they go to files) and no core dumps. RLIMIT_NPROC is not used: it
  counts every process of the user, not of the child;
- an audit hook, installed before the code runs, that refuses: opening for writing,
  creating, removing, renaming, linking, chmod/chown/utime and the shutil file operations
  outside the temporary directory (`/dev/null`, `/dev/stdout` and `/dev/stderr` excepted);
  starting processes (subprocess, os.system, exec, spawn, fork); network connections and
  binds; signals to other processes; and ctypes (loading libraries, calling C functions,
  reading raw memory), which would bypass every other check. Already-open file
  descriptors are not checked.
- a traceback without the sandbox's own frames: only the code's lines are shown.

The temporary directory is removed afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mllm_cpu.core.values import MIB

_FILE_SIZE_LIMIT = 16 * MIB
_KEEP_CHARS = 10_000
_SOLUTION_NAME = "solution.py"

_PRELUDE = r"""
import os
import sys
import traceback


def _install_guard(root):
    realpath = os.path.realpath
    fsdecode = os.fsdecode
    own_pid = os.getpid()
    devices = {"/dev/null", "/dev/stdout", "/dev/stderr"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_events = {
        "os.remove": ((0, 1),),
        "os.rmdir": ((0, 1),),
        "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)),
        "os.symlink": ((1, 2),),
        "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),),
        "os.utime": ((0, 3),),
        "os.truncate": ((0, None),),
        "os.mkfifo": ((0, 2),),
        "os.mknod": ((0, 3),),
        "os.setxattr": ((0, None),),
        "os.removexattr": ((0, None),),
        "shutil.rmtree": ((0, 1),),
        "shutil.copyfile": ((1, None),),
        "shutil.copymode": ((1, None),),
        "shutil.copystat": ((1, None),),
        "shutil.copytree": ((1, None),),
        "shutil.move": ((0, None), (1, None)),
        "shutil.chown": ((0, None),),
        "shutil.make_archive": ((0, None),),
        "shutil.unpack_archive": ((1, None),),
        "sqlite3.connect": ((0, None),),
        "tempfile.mkstemp": ((0, None),),
        "tempfile.mkdtemp": ((0, None),),
    }
    forbidden = {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
        "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto",
        "socket.sendmsg",
    }

    def inside(path, dir_fd):
        if path is None or isinstance(path, int):
            return True
        try:
            name = fsdecode(path)
            if name in devices:
                return True
            if dir_fd not in (None, -1) and not os.path.isabs(name):
                name = os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), name)
            resolved = realpath(name)
        except (OSError, TypeError, ValueError):
            return False
        return resolved == root or resolved.startswith(root + os.sep)

    def refuse(event, detail):
        raise PermissionError("blocked by the sandbox: %s %s" % (event, detail))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(flags, int) and flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+")
            )
            if writing and not inside(path, None):
                refuse("writing", path)
        elif event in path_events:
            for path_index, fd_index in path_events[event]:
                dir_fd = args[fd_index] if fd_index is not None else None
                if not inside(args[path_index], dir_fd):
                    refuse(event, args[path_index])
        elif event in forbidden:
            refuse(event, "(starting processes and networking are not allowed)")
        elif event in ("os.kill", "os.killpg") and args[0] not in (own_pid, 0):
            refuse(event, args[0])
        elif event.startswith("ctypes."):
            refuse(event, "(ctypes is not allowed)")

    sys.addaudithook(hook)


_solution = os.path.realpath(sys.argv[1])
sys.argv = [_solution]
with open(_solution, encoding="utf-8") as _file:
    _code = compile(_file.read(), _solution, "exec")


def _without_sandbox_frames(report):
    report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename != "<string>"])
    for linked in (report.__cause__, report.__context__):
        if linked is not None:
            _without_sandbox_frames(linked)
    return report


_install_guard(os.path.dirname(_solution))
try:
    exec(_code, {"__name__": "__main__", "__file__": _solution, "__builtins__": __builtins__})
except SystemExit:
    raise
except BaseException as _error:
    _report = _without_sandbox_frames(traceback.TracebackException.from_exception(_error))
    sys.stderr.write("".join(_report.format()))
    sys.stderr.flush()
    os._exit(1)
"""


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended; `error` is a one-line summary, empty when `ok`."""

    ok: bool
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    error: str


def humaneval_test_code(test: str, entry_point: str) -> str:
    """The `tests` for a HumanEval problem: its `check` function, then the call."""
    return f"{test}\n\ncheck({entry_point})\n"


def _lower_limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(which, (min(soft, hard), hard))


def _limits(memory_bytes: int, cpu_seconds: int) -> Callable[[], None]:
    def apply() -> None:
        _lower_limit(resource.RLIMIT_AS, memory_bytes, memory_bytes)
        _lower_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)
        _lower_limit(resource.RLIMIT_FSIZE, _FILE_SIZE_LIMIT, _FILE_SIZE_LIMIT)
        _lower_limit(resource.RLIMIT_CORE, 0, 0)

    return apply


def _environment(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read_output(stream: BinaryIO) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", errors="replace")


def _truncate(text: str) -> str:
    if len(text) <= 2 * _KEEP_CHARS:
        return text
    omitted = len(text) - 2 * _KEEP_CHARS
    return f"{text[:_KEEP_CHARS]}\n[... {omitted} characters omitted ...]\n{text[-_KEEP_CHARS:]}"


def _summary(returncode: int, timed_out: bool, timeout_s: float, stderr: str) -> str:
    if timed_out:
        return f"timed out after {timeout_s:g} s"
    if returncode == 0:
        return ""
    if returncode < 0:
        number = -returncode
        if number == signal.SIGXCPU:
            return "CPU time limit exceeded"
        try:
            return f"killed by signal {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit status {returncode}"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _remove_tree(top: str) -> None:
    """Remove `top`, first restoring permissions the code may have taken away."""
    with contextlib.suppress(OSError):
        os.chmod(top, 0o700)
        for root, dirs, _ in os.walk(top):
            for name in dirs:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
    shutil.rmtree(top, ignore_errors=True)


def run_python(
    code: str,
    *,
    tests: str | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
) -> SandboxResult:
    """Run `code`, then `tests` if given, in a fresh limited Python process.

    `ok` is True when the process exits with status 0 within `timeout_s` seconds.
    """
    source = code if tests is None else f"{code}\n\n{tests}\n"
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="mllm-cpu-sandbox-"))
    try:
        solution = Path(workdir, _SOLUTION_NAME)
        solution.write_text(source, encoding="utf-8")
        command = [sys.executable, "-I", "-B", "-X", "utf8", "-c", _PRELUDE, str(solution)]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=_environment(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_limits(memory_mb * MIB, math.ceil(timeout_s) + 1),
            )
            timed_out = False
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if process.poll() is None:
                    _kill_group(process)
            stdout = _read_output(out)
            stderr = _read_output(err)
    finally:
        _remove_tree(workdir)
    returncode = process.returncode
    return SandboxResult(
        ok=returncode == 0 and not timed_out,
        returncode=returncode,
        stdout=_truncate(stdout),
        stderr=_truncate(stderr),
        timed_out=timed_out,
        error=_summary(returncode, timed_out, timeout_s, stderr),
    )
