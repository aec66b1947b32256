"""`mllm-cpu repair`: a llama4 zero-expert MobileLLM-R1 GGUF (llama.cpp's own conversion) -> qwen3.

A `llama` file of MobileLLM v1 needs none; the files that cannot run correctly (MobileLLM-R1 relabelled
as llama, a v1 layer-share model with each shared block once) are refused with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import gguf
import typer

from mllm_cpu.commands.bars import RichConvertProgress, convert_columns, progress_bars
from mllm_cpu.commands.console import out, print_json, print_table, table
from mllm_cpu.convert.atomic_file import check_file_name, ensure_writable_folder
from mllm_cpu.convert.gguf_header import GGUFHeader, read_gguf_header
from mllm_cpu.convert.gguf_summary import read_summary, summarize_header
from mllm_cpu.convert.repair import llama4_expert_count, refuse_relabelled, repair_gguf
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import human_bytes
from mllm_cpu.model_file import validate_header, validate_model_file
from mllm_cpu.store import models_dir


@dataclass(frozen=True)
class RepairResult:
    """What `repair` did: the file written (None when the input needed no repair)."""

    source: Path
    repaired: bool
    file: Path | None
    bytes: int
    type_mix: str
    seconds: float
    note: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the --json output)."""
        return {
            "source": str(self.source),
            "repaired": self.repaired,
            "file": str(self.file) if self.file else None,
            "bytes": self.bytes,
            "type_mix": self.type_mix,
            "seconds": round(self.seconds, 3),
            "note": self.note,
        }


def repaired_name(header: GGUFHeader) -> str:
    """The output file name by llama.cpp's naming convention, e.g. MobileLLM-R1-950M-Q4_K_M.gguf."""
    meta = header.metadata
    label = summarize_header(header).file_type
    general = gguf.Keys.General
    stem = gguf.naming_convention(
        meta.get(general.NAME) or header.path.stem,
        meta.get(general.BASENAME),
        meta.get(general.FINETUNE),
        meta.get(general.VERSION),
        meta.get(general.SIZE_LABEL),
        None if label == "unknown" else label,
    )
    return f"{stem}.gguf"


def repair(
    broken: Annotated[Path, typer.Argument(help="A MobileLLM-R1 GGUF written by llama.cpp's converter (llama4).")],
    outdir: Annotated[Path | None, typer.Option(help="Output folder (default: beside the input).")] = None,
    store: Annotated[bool, typer.Option(help="Write the repaired file into the model store.")] = False,
    name: Annotated[str | None, typer.Option(help="Output file name (default: llama.cpp's naming).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Turn a dense llama4 MobileLLM-R1 GGUF (zero or one expert) into the qwen3 layout llama.cpp runs.

    Another runnable file (a MobileLLM v1 `llama` file among them) is left as it is; one that cannot run
    correctly (MobileLLM-R1 relabelled as llama, a v1 layer-share file with each block once) is refused.
    """
    if store and outdir is not None:
        raise InputError("--store and --outdir are exclusive")
    if name is not None:
        check_file_name(name, "--name")
    header = read_gguf_header(broken)
    refuse_relabelled(header)
    if llama4_expert_count(header) is None:
        model = validate_header(header)
        note = f"{broken} needs no repair: llama.cpp runs it as it is ({model.description})"
        _show(RepairResult(broken, False, None, header.file_size, "", 0.0, note), json_output)
        return
    folder = models_dir() if store else (outdir if outdir is not None else broken.resolve().parent)
    file_name = name if name is None or name.endswith(".gguf") else f"{name}.gguf"
    target = folder / (file_name or repaired_name(header))
    if target.resolve() == broken.resolve():
        raise InputError(f"{target}: the output would replace the input; give --name, --outdir or --store")
    if target.exists() and not force:
        raise InputError(f"{target} already exists (use --force to overwrite)")
    ensure_writable_folder(folder)
    started = time.perf_counter()
    with progress_bars(*convert_columns(), transient=json_output) as progress:
        repair_gguf(broken, target, progress=RichConvertProgress(progress))
    model = validate_model_file(target)
    summary = read_summary(target)
    note = model.description
    _show(
        RepairResult(
            broken, True, target, summary.file_bytes, summary.type_mix_text(), time.perf_counter() - started, note
        ),
        json_output,
    )


def _show(result: RepairResult, json_output: bool) -> None:
    if json_output:
        print_json(result.to_dict())
        return
    if result.file is None:
        out.print(result.note, soft_wrap=True, highlight=False)
        return
    print_table(
        table(
            f"Repaired {result.source.name} into {result.file.parent}: {result.note}",
            ["size", "tensor types (share of weights)", "seconds", "file"],
            [[human_bytes(result.bytes), result.type_mix, f"{result.seconds:.1f}", result.file.name]],
        )
    )
