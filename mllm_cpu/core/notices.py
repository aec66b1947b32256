"""One-line notices from the library (the AMX fallback, say), handed to whatever the command line set up.

The library never prints; a notice goes to the sink `set_notice_sink` installed (the CLI prints it
on stderr), or nowhere. Kept apart from its users so that setting the sink imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable

NoticeSink = Callable[[str], None]

_sink: NoticeSink | None = None


def set_notice_sink(sink: NoticeSink | None) -> None:
    """Where notices go from now on (None: nowhere)."""
    global _sink
    _sink = sink


def notice(line: str) -> None:
    """Hand one line to the sink, if there is one."""
    if _sink is not None:
        _sink(line)
