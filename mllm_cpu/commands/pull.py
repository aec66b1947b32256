"""`mllm-cpu pull REPO[@REVISION]`: a model from the Hugging Face hub into the store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from mllm_cpu.commands.bars import RichConvertProgress, RichDownloads, convert_columns, progress_bars
from mllm_cpu.commands.console import err, print_json, print_table, table
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.values import human_bytes
from mllm_cpu.hub import parse_repo
from mllm_cpu.hub import pull as pull_model
from mllm_cpu.store import DEFAULT_QUANT


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
    with progress_bars(*convert_columns(downloads=True), transient=json_output) as progress:
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
