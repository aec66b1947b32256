"""Capture llama.cpp's log output instead of letting it spill onto the terminal."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp log lines in a list for the duration of the block."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def last_error(lines: list[str]) -> str:
    """The most telling line of a captured llama.cpp log (the last error-looking one)."""
    text = "".join(lines).splitlines()
    for line in reversed(text):
        if any(word in line.lower() for word in ("error", "failed", "invalid", "cannot")):
            return line.strip()
    return text[-1].strip() if text else "no log output"
