"""`mllm-cpu convert`: checkpoint folder (or a synthetic one) -> GGUF files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mllm_cpu.console import err, human_bytes, out, print_json, table
from mllm_cpu.convert.pipeline import ConvertedFile, convert_checkpoint
from mllm_cpu.convert.quant_types import DEFAULT_QUANTS, parse_embedding_type, parse_quant_list
from mllm_cpu.convert.synthetic import write_synthetic_checkpoint
from mllm_cpu.core.errors import InputError
from mllm_cpu.store import checkpoints_dir, models_dir


class RichConvertProgress:
    """Draws one bar per output file: tensors written, or a spinner while llama.cpp quantizes."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: int | None = None

    def file_started(self, label: str, tensors: int | None) -> None:
        description = label if tensors else f"{label} (llama.cpp quantizer)"
        self.task = self.progress.add_task(description, total=tensors)

    def tensor_written(self, name: str) -> None:
        if self.task is not None:
            self.progress.advance(self.task)

    def file_finished(self, label: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, total=1, completed=1)


def converted_rows(files: list[ConvertedFile]) -> list[dict[str, object]]:
    """The result table as plain dicts (also the --json output)."""
    return [
        {
            "file": str(f.summary.path),
            "type": f.level.label,
            "bytes": f.summary.file_bytes,
            "bits_per_weight": round(f.summary.bits_per_weight, 3),
            "parameters": f.summary.parameters,
            "type_mix": f.summary.type_mix,
        }
        for f in files
    ]


def convert(
    model_dir: Annotated[Path | None, typer.Argument(help="Hugging Face checkpoint folder.")] = None,
    quant: Annotated[str, typer.Option("--quant", "-q", help="Comma list of quant levels.")] = ",".join(DEFAULT_QUANTS),
    outdir: Annotated[Path | None, typer.Option(help="Output folder (default: the checkpoint folder).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name used in file names and metadata.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing output files.")] = False,
    embedding_type: Annotated[
        str | None, typer.Option(help="Type of the tied embedding/output matrix, e.g. q4_0 or q6_k.")
    ] = None,
    synthetic: Annotated[
        str | None,
        typer.Option(
            help="Write a random-weight checkpoint with exact MobileLLM-R1 shapes (140m, 360m, 950m, tiny) "
            "and convert it."
        ),
    ] = None,
    store: Annotated[bool, typer.Option(help="Write the files into the model store.")] = False,
    threads: Annotated[int | None, typer.Option(help="Quantizer threads (default: all CPUs).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Convert a MobileLLM-R1 checkpoint to GGUF files at several quant levels."""
    levels = parse_quant_list(quant)
    embedding = parse_embedding_type(embedding_type)
    if store and outdir is not None:
        raise InputError("--store and --outdir are exclusive")
    if (model_dir is None) == (synthetic is None):
        raise InputError("give a checkpoint folder or --synthetic SIZE (one of them)")
    if store:
        outdir = models_dir()
    if synthetic is not None:
        parent = outdir if outdir is not None else checkpoints_dir()
        with err.status(f"writing a random {synthetic} checkpoint"):
            model_dir = write_synthetic_checkpoint(synthetic, parent)
        outdir = outdir or model_dir
    assert model_dir is not None
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=json_output) as progress:
        files = convert_checkpoint(
            model_dir,
            levels,
            outdir,
            name=name,
            force=force,
            embedding_type=embedding,
            threads=threads,
            progress=RichConvertProgress(progress),
        )
    rows = converted_rows(files)
    if json_output:
        print_json(rows)
        return
    out.print(
        table(
            f"Converted into {Path(str(rows[0]['file'])).parent}",
            ["type", "size", "bits/weight", "tensor types (share of weights)", "file"],
            [
                [
                    r["type"],
                    human_bytes(int(str(r["bytes"]))),
                    f"{r['bits_per_weight']:.2f}",
                    f.summary.type_mix_text(),
                    Path(str(r["file"])).name,
                ]
                for r, f in zip(rows, files, strict=False)
            ],
        )
    )
