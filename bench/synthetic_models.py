"""Synthetic MobileLLM-R1 GGUFs in the model store, converted once and reused.

Random weights with the exact shapes: speed and memory do not depend on the values, so a
board can be measured before anything is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mllm_cpu.convert.pipeline import ConvertProgress, convert_checkpoint, load_checkpoint, output_path
from mllm_cpu.convert.quant_types import QuantLevel
from mllm_cpu.convert.synthetic import synthetic_spec, write_synthetic_checkpoint
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import comma_list
from mllm_cpu.store import checkpoints_dir, models_dir


def parse_sizes(text: str) -> list[str]:
    """ "140m,360m,950m" -> ["140m", "360m", "950m"]; unknown sizes are an InputError."""
    sizes = [size.lower() for size in comma_list(text)]
    if not sizes:
        raise InputError("--synthetic is empty; give sizes such as 140m,360m,950m")
    for size in sizes:
        synthetic_spec(size)
    return list(dict.fromkeys(sizes))


def synthetic_model_files(
    sizes: list[str],
    levels: list[QuantLevel],
    progress: ConvertProgress | None = None,
    on_checkpoint: Callable[[str], None] | None = None,
) -> list[Path]:
    """The store's GGUF for every size and level, writing and converting only what is missing.

    Checkpoints go to the store's checkpoints folder, GGUF files to its models folder;
    `on_checkpoint(size)` is called before a checkpoint folder is written or reused.
    """
    files: list[Path] = []
    for size in sizes:
        if on_checkpoint:
            on_checkpoint(size)
        files.extend(stored_levels(write_synthetic_checkpoint(size, checkpoints_dir()), levels, progress))
    return files


def stored_levels(folder: Path, levels: list[QuantLevel], progress: ConvertProgress | None = None) -> list[Path]:
    """The store's GGUF of a checkpoint folder at every level, converting only the missing ones."""
    checkpoint = load_checkpoint(folder)
    targets = [output_path(checkpoint, level, models_dir()) for level in levels]
    missing = [level for level, target in zip(levels, targets, strict=False) if not target.is_file()]
    if missing:
        convert_checkpoint(folder, missing, models_dir(), progress=progress)
    return targets
