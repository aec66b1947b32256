"""Reading files a user names, with memory bounded by what the file is for.

A path must name a regular file: a FIFO, a device or a folder is refused with one line that
says what it is (reading a FIFO can hang, a device can be endless). The reader states its
limit (a named constant in the module that owns the file's purpose) and a phrase for the
purpose, such as "one problem"; past the limit the error names the file and the limit, and
no more than the limit (plus one buffer) is ever held.

    with open_regular(path) as file:
        for number, line in limited_lines(file, path, PROBLEM_LIMIT, "one problem"):
            ...
    text = read_text(path, TESTS_LIMIT, "a --tests file")
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import GIB, MIB


class TooLarge(InputError):
    """A file, or a line of one, past the limit of what it is for; the message names both."""


def kind_of(mode: int) -> str:
    """What a file of this `st_mode` is, as a phrase: "a FIFO (named pipe)", "a folder", ..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def not_regular(path: Path, mode: int) -> InputError:
    """The error for a path that names something other than a regular file."""
    return InputError(f"{path}: is {kind_of(mode)}, not a regular file")


def size_text(limit: int) -> str:
    """A limit in the units it was set in: "1 MiB", "2 GiB", "512 bytes"."""
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (1024, "KiB")):
        if limit >= unit and limit % unit == 0:
            return f"{limit // unit} {name}"
    return f"{limit} bytes"


def open_regular(path: Path) -> BinaryIO:
    """Open a user's file for reading (binary); one InputError line if it is missing or not a regular file.

    The file is opened without blocking (a FIFO would wait for a writer) and checked on the
    open descriptor, so a path swapped after a first look is still caught.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a regular file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(path, mode)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def check_size(file: BinaryIO, path: Path, limit: int, purpose: str) -> None:
    """TooLarge when the open regular `file` is larger than `limit` bytes."""
    if os.fstat(file.fileno()).st_size > limit:
        raise TooLarge(f"{path}: larger than {size_text(limit)}, the limit for {purpose}")


def read_text(path: Path, limit: int, purpose: str) -> str:
    """The whole of a user's UTF-8 text file (a byte order mark is dropped), at most `limit` bytes."""
    with open_regular(path) as file:
        check_size(file, path, limit, purpose)
        data = file.read(limit + 1)  # the file may have grown since the size was read
    if len(data) > limit:
        raise TooLarge(f"{path}: larger than {size_text(limit)}, the limit for {purpose}")
    return decode_utf8(data, path)


def limited_lines(file: BinaryIO, path: Path, limit: int, purpose: str) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each line of `file`, newline kept; TooLarge for a line over `limit` bytes."""
    number = 0
    while line := file.readline(limit + 1):
        number += 1
        if len(line) > limit and not (len(line) == limit + 1 and line.endswith(b"\n")):
            raise TooLarge(f"{path}:{number}: line longer than {size_text(limit)}, the limit for {purpose}")
        yield number, line


def decode_utf8(data: bytes, path: Path, line: int | None = None) -> str:
    """`data` as UTF-8 text (a leading byte order mark dropped); InputError naming the place of a bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        where = f"{path}:{line}" if line is not None else str(path)
        column = "column" if line is not None else "byte"
        raise InputError(
            f"{where}: not UTF-8 text (byte 0x{data[error.start]:02x} at {column} {error.start + 1})"
        ) from None
