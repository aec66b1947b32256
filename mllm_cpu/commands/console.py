"""The commands' terminal output: results on stdout, progress and notes on stderr (nothing else prints)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

    from mllm_cpu.commands.bars import RichConvertProgress

out = Console()
err = Console(stderr=True)


@contextmanager
def conversion_bars() -> Iterator[RichConvertProgress]:
    """Bars on stderr for one conversion, e.g. of a checkpoint folder given as --model (a `store.ConversionDisplay`).

    The bars' module (rich.progress) is imported when a conversion starts, not with every command."""
    from mllm_cpu.commands.bars import RichConvertProgress, convert_columns, progress_bars

    with progress_bars(*convert_columns()) as bars:
        yield RichConvertProgress(bars)


def terminal_safe(text: object) -> str:
    """`text` (from a file's metadata, a file name, a server) fit for one line of a terminal.

    Every character Python does not call printable (escape sequences, other control
    characters, newlines, bidirectional overrides) is shown as its escape, e.g. `\\x1b`.
    """
    shown = str(text)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def print_json(data: Any) -> None:
    """Print machine-readable JSON on stdout (no colour, no wrapping)."""
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


_NUMBER = re.compile(r"[-+]?\d[\d,]*(\.\d+)?( ?[%a-zA-Z/]{1,4})?( ± \d[\d,]*(\.\d+)?)?")
"""A numeric-looking cell: "4096", "146.30 MiB", "140.2M", "8.50", "12%", "61.1 ± 0.4"."""
_NO_VALUE = {"", "-"}
_UNBOUNDED = 1_000_000


def table(
    title: str | None,
    columns: list[str],
    rows: list[list[Any]],
    *,
    caption: str | None = None,
    right: Collection[str] = (),
) -> Table:
    """A rich table; numeric-looking columns (and the columns named in `right`) are right-aligned.

    Print it with `print_table`, which keeps rows whole when stdout is not a terminal. The title
    and cells are shown through `terminal_safe` (they often hold names read from files).
    """
    from rich.table import Table  # imported when a table is drawn: `mllm-cpu --help` draws none

    cells = [[terminal_safe(cell) for cell in row] for row in rows]
    title = None if title is None else terminal_safe(title)
    result = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for index, column in enumerate(columns):
        values = [row[index] for row in cells if index < len(row) and row[index] not in _NO_VALUE]
        numeric = bool(values) and all(_NUMBER.fullmatch(value) for value in values)
        result.add_column(column, justify="right" if numeric or column in right else "left", overflow="fold")
    for row in cells:
        result.add_row(*row)
    return result


def print_table(result: Table) -> None:
    """Print a table on stdout; when stdout is not a terminal (a pipe, a file), as wide as its
    rows need, so no cell is folded or cut and `| grep` finds every row whole."""
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(result)
        return
    natural = Measurement.get(out, out.options.update_width(_UNBOUNDED), result).maximum
    width = max(out.width, natural, len(str(result.caption or "")))
    Console(file=out.file, width=width, color_system=None).print(result)
