"""`mllm-cpu rm NAME...`: delete models from the store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from mllm_cpu.commands.console import out, print_json


def rm(
    names: Annotated[list[str], typer.Argument(help="Model names in the store (a unique prefix is enough).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the deleted files as JSON.")] = False,
) -> None:
    """Delete models from the store, with their origin records. Every name is checked before anything is deleted."""
    from mllm_cpu.store import find_stored, remove_model  # reads GGUF headers: not needed for --help

    paths = list(dict.fromkeys(find_stored(name) for name in names))
    for path in paths:
        remove_model(path)
    if json_output:
        print_json([{"name": path.stem, "file": str(path)} for path in paths])
        return
    for path in paths:
        out.print(f"deleted {escape(path.stem)}", soft_wrap=True, highlight=False)
