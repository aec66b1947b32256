"""`mllm-cpu convert`: checkpoint folder (or a synthetic one) -> GGUF files."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mllm_cpu.commands.bars import RichConvertProgress, convert_columns, progress_bars
from mllm_cpu.commands.console import err, print_json, print_table, table
from mllm_cpu.commands.options import OPTIONS
from mllm_cpu.convert.atomic_file import check_file_name, check_path_text, output_folder
from mllm_cpu.convert.pipeline import ConvertedFile, convert_checkpoint
from mllm_cpu.convert.quant_types import DEFAULT_QUANTS, parse_embedding_type, parse_quant_list
from mllm_cpu.convert.synthetic import SYNTHETIC_SPECS, write_synthetic_checkpoint
from mllm_cpu.core.errors import InputError, terminate_as_interrupt
from mllm_cpu.core.values import human_bytes
from mllm_cpu.store import checkpoints_dir, models_dir


@dataclass(frozen=True)
class ConvertedRow:
    """One written file as the result table and --json show it."""

    file: Path
    type: str
    bytes: int
    bits_per_weight: float
    parameters: int
    type_mix: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return {**asdict(self), "file": str(self.file)}


def converted_rows(files: list[ConvertedFile]) -> list[ConvertedRow]:
    """The result table, one row per written file."""
    return [
        ConvertedRow(
            file=f.summary.path,
            type=f.level.label,
            bytes=f.summary.file_bytes,
            bits_per_weight=round(f.summary.bits_per_weight, 3),
            parameters=f.summary.parameters,
            type_mix=f.summary.type_mix,
        )
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
            help="Write a random-weight checkpoint with the exact shapes of a MobileLLM-R1 or v1 size "
            f"({', '.join(SYNTHETIC_SPECS)}) and convert it."
        ),
    ] = None,
    store: Annotated[bool, typer.Option(help="Write the files into the model store.")] = False,
    threads: Annotated[
        int | None, typer.Option(help="Quantizer threads, at most this machine's CPUs (default: all of them).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Convert a MobileLLM-R1 or MobileLLM v1 checkpoint to GGUF files at several quant levels.

    SIGTERM stops it as Ctrl-C does: the file being written is removed, finished ones are kept.
    """
    levels = parse_quant_list(quant)
    embedding = parse_embedding_type(embedding_type)
    if store and outdir is not None:
        raise InputError("--store and --outdir are exclusive")
    if (model_dir is None) == (synthetic is None):
        raise InputError("give a checkpoint folder or --synthetic SIZE (one of them)")
    for path, what in ((model_dir, "checkpoint folder"), (outdir, "--outdir")):
        if path is not None:
            check_path_text(path, what)
    if name is not None:
        check_file_name(name, "--name")
    OPTIONS["threads"].check(threads)
    if store:
        outdir = models_dir()
    with terminate_as_interrupt(), output_folder(outdir) if outdir is not None else nullcontext():
        if synthetic is not None:
            parent = outdir if outdir is not None else checkpoints_dir()
            with err.status(f"writing a random {synthetic} checkpoint"):
                model_dir = write_synthetic_checkpoint(synthetic, parent)
            outdir = outdir or model_dir
        assert model_dir is not None
        with progress_bars(*convert_columns(), transient=json_output) as progress:
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
        print_json([row.to_dict() for row in rows])
        return
    print_table(
        table(
            f"Converted into {rows[0].file.parent}",
            ["type", "size", "bits/weight", "tensor types (share of weights)", "file"],
            [
                [r.type, human_bytes(r.bytes), f"{r.bits_per_weight:.2f}", f.summary.type_mix_text(), r.file.name]
                for r, f in zip(rows, files, strict=True)
            ],
        )
    )
