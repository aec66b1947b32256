"""Write-then-rename, so an interrupted write never leaves a partial file behind.

While a file is written, its hidden partial file is locked (flock). A partial file that
nobody holds locked was left by a killed run, and `remove_stale_partials` removes it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mllm_cpu.core.errors import InputError, naming_path
from mllm_cpu.core.user_files import kind_of

_PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """The hidden temporary name a file is written under before it is complete."""
    return path.with_name(f".{path.name}{_PARTIAL_SUFFIX}")


@contextmanager
def locked_partial(temporary: Path) -> Iterator[Path]:
    """Create `temporary` and hold a lock on it for the block; remove it on any exception."""
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as error:
        raise InputError(f"{temporary.parent}: cannot write here: {_problem(error)}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(descriptor)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    On any exception, KeyboardInterrupt included, the temporary file is removed. A write
    error that names no file (a full disk, a file-size limit) is reported as `path`'s.
    """
    temporary = partial_path(path)
    with locked_partial(temporary), naming_path(path):
        yield temporary
        os.replace(temporary, path)


def remove_stale_partials(folder: Path, pattern: str = "*.gguf.partial") -> list[Path]:
    """Remove the hidden partial files in `folder` that no running writer holds; returns them."""
    removed = []
    for candidate in sorted(Path(folder).glob(f".{pattern}")) if Path(folder).is_dir() else []:
        try:
            descriptor = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue
        else:
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
        finally:
            os.close(descriptor)
    return removed


def check_file_name(name: str, option: str) -> None:
    """A name that becomes (part of) a file name: refuse anything that is not a plain name, in one line."""
    if not name.strip() or name.startswith(".") or any(c in name for c in "/\\") or not name.isprintable():
        raise InputError(f"{option} {name!r}: give a plain name (no '/', '\\', leading '.' or control characters)")


def check_path_text(path: Path, what: str) -> None:
    """Refuse a path with control characters (a newline would split every message that names it)."""
    if not str(path).isprintable():
        raise InputError(f"{what} {str(path)!r}: the path has control characters")


@contextmanager
def output_folder(folder: Path) -> Iterator[Path]:
    """`ensure_writable_folder` for the block; on any exception the folders it created are removed if still empty."""
    folder = Path(folder)
    created = [f for f in (folder, *folder.parents) if not f.exists()]
    ensure_writable_folder(folder)
    try:
        yield folder
    except BaseException:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except OSError:
                break
        raise


def ensure_writable_folder(folder: Path) -> None:
    """Create `folder` if needed and check a file can be created in it (one InputError line if not)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: not a folder (it is {kind_of(folder.stat().st_mode)})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{folder}: cannot create the folder: {_problem(error)}") from None
    probe = folder / f".write-test-{os.getpid()}{_PARTIAL_SUFFIX}"
    try:
        probe.touch()
    except OSError as error:
        raise InputError(f"{folder}: cannot write here: {_problem(error)}") from None
    probe.unlink(missing_ok=True)


def ensure_writable_file(path: Path, option: str) -> None:
    """Check that `path` can be written (its folder exists and is writable, it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not a file")
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: the folder {path.parent} does not exist")
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as error:
        raise InputError(f"{option} {path}: cannot write: {_problem(error)}") from None
    if not existed:
        path.unlink()


def _problem(error: OSError) -> str:
    return error.strerror or str(error)
