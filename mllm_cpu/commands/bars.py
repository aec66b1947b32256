"""Progress bars on stderr: conversions (tensors written), downloads (bytes and speed) and batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.markup import escape
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
from rich.text import Text

from mllm_cpu.commands.console import err


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
