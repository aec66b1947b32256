"""The one error type shown to users as a single line, and the exit codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class InputError(Exception):
    """Bad input from the user: a missing or malformed file, an unknown option.

    The message is one line that names the problem; the CLI prints it and exits with 2.
    """


EXIT_WRONG = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


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
