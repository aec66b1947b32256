"""Show streamed model text on a terminal without slowing generation down."""

from __future__ import annotations

import re
import time

from rich.console import Console
from rich.text import Text

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
DEFAULT_INTERVAL_S = 0.05


def printable(text: str) -> str:
    """`text` without terminal control characters (newlines and tabs are kept)."""
    return _CONTROL_CHARACTERS.sub("", text)


class TerminalStream:
    """An `on_text` callback that prints to a rich console at most every `interval_s` seconds.

    Pieces are buffered between refreshes, so a fast model pays for a few terminal writes
    per second instead of one per token. Call `flush()` when the generation ends.
    """

    def __init__(self, console: Console, style: str | None = None, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.console = console
        self.style = style
        self.interval_s = interval_s
        self._pending: list[str] = []
        self._last_write = 0.0
        self.ends_with_newline = True

    def __call__(self, piece: str) -> None:
        self._pending.append(piece)
        now = time.monotonic()
        if now - self._last_write >= self.interval_s:
            self._last_write = now
            self.flush()

    def flush(self) -> None:
        """Write whatever is buffered."""
        text = printable("".join(self._pending))
        self._pending.clear()
        if text:
            self.console.print(Text(text, style=self.style or ""), end="", soft_wrap=True, highlight=False)
            self.console.file.flush()
            self.ends_with_newline = text.endswith("\n")

    def finish(self) -> None:
        """Flush and end the current line, if the text did not."""
        self.flush()
        if not self.ends_with_newline:
            self.console.print()
            self.ends_with_newline = True
