"""The one error type shown to users as a single line, and the exit codes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(Exception):
    """Bad input from the user: a missing or malformed file, an unknown option.

    The message is one line that names the problem; the CLI prints it and exits with 2.
    """


EXIT_WRONG = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
"""128 + SIGTERM, as a shell reports a process that SIGTERM ended."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by a command that cleans up on it as on Ctrl-C (`terminate_as_interrupt`)."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """In the block, SIGTERM raises Terminated (once; a second SIGTERM waits for the cleanup)."""

    def raise_terminated(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_message(error: OSError) -> str:
    """One line for a file-system error: the path, then the problem ("/out: Read-only file system")."""
    problem = error.strerror or str(error) or type(error).__name__
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {problem}" if paths else problem


@contextmanager
def naming_path(path: object) -> Iterator[None]:
    """Give OSErrors raised in the block that name no file (a full disk, a write limit) `path`."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise
