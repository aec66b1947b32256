"""`convert`: a Hugging Face MobileLLM-R1 folder to GGUF files at several quant levels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gguf

from mllm_cpu.core.errors import InputError, naming_path
from mllm_cpu.core.origin import Origin

from .atomic_file import (
    atomic_output,
    check_file_name,
    locked_partial,
    output_folder,
    partial_path,
    remove_stale_partials,
)
from .checkpoint_files import CONFIG, GENERATION_CONFIG, read_json_object
from .checkpoint_metadata import checkpoint_metadata
from .gguf_file import write_gguf
from .gguf_summary import GGUFSummary, read_summary
from .llama_quantizer import quantize_with_llama_cpp
from .model_spec import ModelSpec, read_config, spec_from_config
from .quant_types import QUANT_LEVELS, QuantLevel
from .safetensors_reader import CheckpointTensors
from .sentencepiece_vocab import SentencePieceSpec, read_sentencepiece
from .tensor_plan import PlannedTensor, plan_tensors
from .tokenizer_spec import TokenizerSpec, read_tokenizer

_LOSSLESS_LEVEL = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


class ConvertProgress(Protocol):
    """Receives progress while files are written (the CLI draws bars from it)."""

    def file_started(self, label: str, tensors: int | None) -> None:
        """A file is started; `tensors` is None when llama.cpp writes it (no per-tensor steps)."""

    def tensor_written(self, name: str) -> None:
        """One tensor of the current file is written."""

    def file_finished(self, label: str) -> None:
        """The current file is complete."""

    def message(self, text: str) -> None:
        """A one-line note for the user (a kept file, a removed leftover)."""


class SilentProgress:
    """A ConvertProgress that shows nothing."""

    def file_started(self, label: str, tensors: int | None) -> None:
        pass

    def tensor_written(self, name: str) -> None:
        pass

    def file_finished(self, label: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class LoadedCheckpoint:
    """A validated checkpoint folder, ready to write."""

    folder: Path
    spec: ModelSpec
    tokenizer: TokenizerSpec | SentencePieceSpec
    tensors: list[PlannedTensor]
    storage_dtype: str
    metadata: gguf.Metadata
    origin: Origin


@dataclass
class ConvertedFile:
    """One output file and what it really contains."""

    level: QuantLevel
    summary: GGUFSummary


def load_checkpoint(folder: Path, name: str | None = None) -> LoadedCheckpoint:
    """Read and validate config, weights and tokenizer, without writing anything."""
    folder = Path(folder)
    if name is not None:
        check_file_name(name, "--name")
    config = read_config(folder)
    spec = spec_from_config(config, str(folder / CONFIG))
    stored = CheckpointTensors(folder)
    tensors = plan_tensors(spec, stored)
    generation = read_json_object(folder / GENERATION_CONFIG, required=False)
    tokenizer = (
        read_sentencepiece(folder, spec.n_vocab) if spec.is_v1 else read_tokenizer(folder, spec.n_vocab, generation)
    )
    metadata = checkpoint_metadata(folder, config, generation, name, spec.parameter_count)
    if name:
        metadata.basename, metadata.size_label, metadata.finetune, metadata.version = name, None, None, None
    metadata.name = metadata.name or folder.resolve().name
    if not metadata.basename:
        metadata.basename = folder.resolve().name
        metadata.size_label = metadata.size_label or gguf.size_label(spec.parameter_count, 0, 0, 0)
    origin = Origin("converted", folder.resolve().name)
    checkpoint = LoadedCheckpoint(folder, spec, tokenizer, tensors, stored.storage_dtype(), metadata, origin)
    _check_file_stem(checkpoint)
    return checkpoint


def _file_stem(checkpoint: LoadedCheckpoint, label: str) -> str:
    meta = checkpoint.metadata
    return str(gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label, label))


def _check_file_stem(checkpoint: LoadedCheckpoint) -> None:
    """The output names come from the model card, config.json or the folder: they must make a plain file name."""
    stem = _file_stem(checkpoint, "F16")
    if not stem.isprintable() or any(c in stem for c in "/\\") or stem.startswith("."):
        raise InputError(
            f"{checkpoint.folder}: the model's name parts make the file name {stem!r}, not a plain name; give --name"
        )


def output_path(checkpoint: LoadedCheckpoint, level: QuantLevel, outdir: Path) -> Path:
    """The file name by llama.cpp's GGUF naming convention, e.g. MobileLLM-R1-950M-Q4_K_M.gguf."""
    return outdir / f"{_file_stem(checkpoint, level.label)}.gguf"


def convert_checkpoint(
    folder: Path,
    levels: list[QuantLevel],
    outdir: Path | None = None,
    *,
    name: str | None = None,
    force: bool = False,
    embedding_type: gguf.GGMLQuantizationType | None = None,
    threads: int | None = None,
    progress: ConvertProgress | None = None,
    origin: Origin | None = None,
) -> list[ConvertedFile]:
    """Convert a checkpoint folder to one GGUF file per quant level; returns what was written.

    Nothing is written if the input is invalid; an interrupted run leaves no partial file.
    The run resumes a killed one: partial files nobody is writing are removed, and levels
    already converted are kept and skipped (unless `force`), each with a message.
    `origin` (default: converted from this folder) is recorded in every file.
    """
    checkpoint = load_checkpoint(folder, name)
    if origin is not None:
        checkpoint.origin = origin
    outdir = Path(outdir) if outdir is not None else Path(folder)
    with output_folder(outdir):
        return _convert(checkpoint, levels, outdir, force, embedding_type, threads, progress or SilentProgress())


def _convert(
    checkpoint: LoadedCheckpoint,
    levels: list[QuantLevel],
    outdir: Path,
    force: bool,
    embedding_type: gguf.GGMLQuantizationType | None,
    threads: int | None,
    progress: ConvertProgress,
) -> list[ConvertedFile]:
    for stale in remove_stale_partials(outdir):
        progress.message(f"removed {stale.name}, left by an interrupted conversion")
    targets = {level.name: output_path(checkpoint, level, outdir) for level in levels}
    kept = {} if force else {key: path for key, path in targets.items() if path.exists()}
    for path in kept.values():
        progress.message(f"kept {path.name} (already converted; --force redoes it)")
    todo = [level for level in levels if level.name not in kept]

    def needs_llama_cpp(level: QuantLevel) -> bool:
        return not level.direct or (embedding_type is not None and embedding_type != level.matrix_type)

    written: dict[str, Path] = dict(kept)
    for level in todo:
        if not needs_llama_cpp(level):
            _write_direct(checkpoint, level, targets[level.name], progress)
            written[level.name] = targets[level.name]

    quantized = [level for level in todo if needs_llama_cpp(level)]
    if quantized:
        lossless = QUANT_LEVELS[_LOSSLESS_LEVEL[checkpoint.storage_dtype]]
        source = written.get(lossless.name) or _write_intermediate(checkpoint, lossless, outdir, progress)
        try:
            for level in quantized:
                target = targets[level.name]
                progress.file_started(target.name, None)
                with atomic_output(target) as temporary:
                    quantize_with_llama_cpp(source, temporary, level, embedding_type, threads)
                progress.file_finished(target.name)
                written[level.name] = target
        finally:
            if source not in written.values():
                source.unlink(missing_ok=True)
    return [ConvertedFile(level, read_summary(written[level.name])) for level in levels]


def _write_level(checkpoint: LoadedCheckpoint, level: QuantLevel, path: Path, progress: ConvertProgress) -> None:
    """Write the checkpoint at `level` with our own GGUF writer (a level it writes directly, or a lossless one)."""
    write_gguf(
        path,
        checkpoint.spec,
        checkpoint.tokenizer,
        checkpoint.metadata,
        checkpoint.tensors,
        level.file_type,
        level.matrix_type,
        progress.tensor_written,
        checkpoint.origin,
    )


def _write_direct(checkpoint: LoadedCheckpoint, level: QuantLevel, target: Path, progress: ConvertProgress) -> None:
    progress.file_started(target.name, len(checkpoint.tensors))
    with atomic_output(target) as temporary:
        _write_level(checkpoint, level, temporary, progress)
    progress.file_finished(target.name)


def _write_intermediate(
    checkpoint: LoadedCheckpoint, level: QuantLevel, outdir: Path, progress: ConvertProgress
) -> Path:
    """A lossless file for llama.cpp's quantizer, under a hidden name removed afterwards."""
    target = partial_path(output_path(checkpoint, level, outdir).with_suffix(".source.gguf"))
    label = f"{level.label} (quantizer input)"
    progress.file_started(label, len(checkpoint.tensors))
    with locked_partial(target), naming_path(target):
        _write_level(checkpoint, level, target, progress)
    progress.file_finished(label)
    return target
