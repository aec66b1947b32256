"""`mllm-cpu pull REPO[@REVISION]`: a model from the Hugging Face hub into the store."""

from __future__ import annotations

from typing import Annotated

import typer
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

from mllm_cpu.console import RichConvertProgress, err, human_bytes, print_json, print_table, progress_bars, table
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.hub import parse_repo
from mllm_cpu.hub import pull as pull_model
from mllm_cpu.store import DEFAULT_QUANT


class _AmountColumn(ProgressColumn):
    """Bytes (and speed) for downloads, tensors done of all for conversions."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes, self.speed, self.count = DownloadColumn(), TransferSpeedColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return Text.assemble(self.bytes.render(task), " ", self.speed.render(task))
        return self.count.render(task)


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


def pull(
    repo: Annotated[str, typer.Argument(help="OWNER/NAME\\[@REVISION] on the Hugging Face hub.")],
    quant: Annotated[
        str, typer.Option("--quant", "-q", help="Comma list of quant levels to convert or download.")
    ] = DEFAULT_QUANT,
    keep_checkpoint: Annotated[
        bool, typer.Option(help="Keep the downloaded safetensors checkpoint (default: removed after converting).")
    ] = False,
    token: Annotated[
        str | None, typer.Option(help="Hugging Face token (default: the one from `hf auth login` or HF_TOKEN).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Download a model from the Hugging Face hub into the store (safetensors are converted)."""
    ref = parse_repo(repo)
    levels = parse_quant_list(quant)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _AmountColumn(), TimeElapsedColumn())
    with progress_bars(*columns, transient=json_output) as progress:
        try:
            result = pull_model(
                ref,
                levels,
                keep_checkpoint=keep_checkpoint,
                token=token,
                downloads=RichDownloads(progress),
                conversion=RichConvertProgress(progress),
            )
        except BaseException:
            progress.live.transient = True  # a failed pull leaves only its error line
            raise
    if json_output:
        print_json(result.to_dict())
        return
    title = f"pulled {result.repo}@{result.commit[:12]}"
    rows = [[m.quant, human_bytes(m.bytes), m.status, m.file.stem] for m in result.models]
    print_table(table(escape(title), ["quant", "size", "status", "name"], [[escape(c) for c in r] for r in rows]))
    if result.checkpoint is not None:
        err.print(f"checkpoint kept in {escape(str(result.checkpoint))}", soft_wrap=True, highlight=False)
