"""`mllm-cpu models` (the store as a table) and `mllm-cpu info MODEL` (one file's metadata)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from mllm_cpu.commands.console import conversion_bars, err, print_json, print_table, table, terminal_safe
from mllm_cpu.core.values import human_bytes
from mllm_cpu.listing import store_listing
from mllm_cpu.store import (
    HOW_TO_GET_A_MODEL,
    cached_conversion,
    checkpoint_folder,
    convert_for_run,
    models_dir,
    resolve_model,
)

if TYPE_CHECKING:
    from mllm_cpu.model_info import ModelDetails


def models(
    json_output: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the models in the store."""
    rows = store_listing()
    if json_output:
        print_json([row.to_dict() for row in rows])
        return
    if not rows:
        err.print(
            f"the store ({escape(terminal_safe(models_dir()))}) is empty: {escape(HOW_TO_GET_A_MODEL)}",
            soft_wrap=True,
            highlight=False,
        )
        return
    cells = [
        [row.name, "-", "-", "-", "-", f"unreadable: {row.error}", "-", "-"]
        if row.error
        else [
            row.name,
            row.quant,
            human_bytes(row.bytes),
            _millions(row.parameters),
            row.context_length or "-",
            row.description,
            row.source_architecture,
            row.origin.describe() if row.origin else "-",
        ]
        for row in rows
    ]
    columns = ["name", "quant", "size", "params", "context", "model", "source architecture", "origin"]
    rows_text = [[escape(str(cell)) for cell in row] for row in cells]
    print_table(table(escape(f"models in {models_dir()}"), columns, rows_text))


def info(
    model: Annotated[str, typer.Argument(help="GGUF file, model name in the store, or checkpoint folder.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Show a model file's metadata: architecture, size, tensor types, context, tokenizer.

    Text from the file is shown with its control characters escaped (`console.terminal_safe`).
    A checkpoint folder not converted before is converted into a temporary folder, which is
    removed afterwards: `info` never writes into the store.
    """
    from mllm_cpu.model_info import describe_model  # the header reader: not for `models`

    folder = checkpoint_folder(model)
    if folder is not None and cached_conversion(folder) is None:
        with tempfile.TemporaryDirectory(prefix="mllm-cpu-info-") as temporary:
            with conversion_bars() as progress:
                converted = convert_for_run(folder, Path(temporary), progress)
            details = describe_model(converted)
        err.print(
            f"converted to a temporary file, now removed; `mllm-cpu solve --model {escape(terminal_safe(folder))}` "
            "converts once and keeps it",
            soft_wrap=True,
            highlight=False,
        )
    else:
        details = describe_model(resolve_model(model, conversion_bars))
    if json_output:
        print_json(details.to_dict())
        return
    print_table(
        table(
            escape(details.name),
            ["field", "value"],
            [[field, escape(str(value))] for field, value in _info_rows(details)],
        )
    )
    if details.problem is not None:
        err.print(
            f"[yellow]cannot run this file:[/yellow] {escape(terminal_safe(details.problem))}",
            soft_wrap=True,
            highlight=False,
        )


def _info_rows(details: ModelDetails) -> list[list[Any]]:
    special = ", ".join(
        f"{name} {token.id} {token.text or ''}".rstrip() for name, token in details.special_tokens.items()
    )
    sampling = ", ".join(f"{key} {value}" for key, value in details.sampling_defaults.items())
    return [
        ["file", details.file],
        ["architecture", details.architecture],
        ["model", details.description],
        ["source architecture", details.source_architecture or "-"],
        ["origin", details.origin.describe()],
        ["parameters", f"{_millions(details.parameters)} ({details.parameters:,})"],
        [
            "layers / width / heads / kv heads",
            f"{details.layers} / {details.embedding_length} / {details.heads} / {details.kv_heads}",
        ],
        ["file type", details.file_type],
        ["tensor types", details.type_mix_text],
        ["context length", details.context_length or "-"],
        ["vocabulary", f"{details.vocab_size} ({details.tokenizer})"],
        ["special tokens", special or "-"],
        ["chat template", "yes" if details.chat_template else "no"],
        ["sampling defaults", sampling or "-"],
        ["file size", f"{human_bytes(details.file_bytes)} ({details.bits_per_weight:.2f} bits/weight)"],
    ]


def _millions(parameters: int) -> str:
    return f"{parameters / 1e6:.1f}M"
