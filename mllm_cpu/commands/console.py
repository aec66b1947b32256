"""The commands' terminal output: results on stdout, progress and notes on stderr (nothing else prints)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

out = Console()
err = Console(stderr=True)


@contextmanager
def progress_bars(
    *columns: ProgressColumn, transient: bool = False, refresh_per_second: float = 10, auto_refresh: bool = True
) -> Iterator[Progress]:
    """Progress bars on stderr that end without the blank line rich adds when stderr is not a
    terminal (it would stand before an error line), and leave nothing when no bar was shown.

    Without `auto_refresh` no drawing thread runs: the bars are redrawn only by `Progress.refresh()`."""
    bars = Progress(
        *columns, console=err, transient=transient, refresh_per_second=refresh_per_second, auto_refresh=auto_refresh
    )
    bars.start()
    try:
        yield bars
    finally:
        if not bars.tasks:
            bars.live.transient = True
        bars.live.stop()
        if not bars.live.transient and not err.is_interactive:
            err.line()  # ends the last bar's line; rich's own stop prints this even after no bar


class RichConvertProgress:
    """Draws one bar per output file: tensors written, or a spinner while llama.cpp quantizes."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def file_started(self, label: str, tensors: int | None) -> None:
        description = label if tensors else f"{label} (llama.cpp quantizer)"
        self.task = self.progress.add_task(description, total=tensors)

    def tensor_written(self, name: str) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def file_finished(self, label: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, total=1, completed=1)

    def message(self, text: str) -> None:
        self.progress.console.print(text, soft_wrap=True, highlight=False, markup=False)


class RichDownloads:
    """Draws one bar per downloaded file (a resumed file starts where it stopped)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.total: int | None = None

    def file_started(self, name: str, total: int | None, done: int) -> None:
        self.total = total
        self.task = self.progress.add_task(escape(name), total=total, completed=done, bytes=True)

    def advanced(self, count: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, count)

    def file_finished(self, name: str) -> None:
        if self.task is not None and self.total is not None:
            self.progress.update(self.task, completed=self.total)


class _AmountColumn(ProgressColumn):
    """Bytes (and speed) for downloads, tensors done of all for conversions."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes, self.speed, self.count = DownloadColumn(), TransferSpeedColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return Text.assemble(self.bytes.render(task), " ", self.speed.render(task))
        return self.count.render(task)


def convert_columns(*, downloads: bool = False) -> tuple[ProgressColumn, ...]:
    """The columns of conversion progress bars; with `downloads`, download bars among them show bytes and speed."""
    amount = _AmountColumn() if downloads else MofNCompleteColumn()
    return (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), amount, TimeElapsedColumn())


@contextmanager
def conversion_bars() -> Iterator[RichConvertProgress]:
    """Bars on stderr for one conversion, e.g. of a checkpoint folder given as --model (a `store.ConversionDisplay`)."""
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
    if out.is_terminal:
        out.print(result)
        return
    natural = Measurement.get(out, out.options.update_width(_UNBOUNDED), result).maximum
    width = max(out.width, natural, len(str(result.caption or "")))
    Console(file=out.file, width=width, color_system=None).print(result)
