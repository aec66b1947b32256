"""The model store ($MLLM_CPU_HOME) and resolving what a user passes as --model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import platformdirs

from mllm_cpu.convert.atomic_file import atomic_output
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.origin import Origin
from mllm_cpu.identity import file_fingerprint

if TYPE_CHECKING:
    from mllm_cpu.convert.pipeline import ConvertProgress
    from mllm_cpu.model_file import ModelFile

DEFAULT_QUANT = "q4_k_m"
_QUANT_PREFERENCE = ("Q4_K_M", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32")
HOW_TO_GET_A_MODEL = (
    "no model found. Download one (e.g. `hf download facebook/MobileLLM-R1-950M --local-dir MobileLLM-R1-950M`), "
    "then run `mllm-cpu convert MobileLLM-R1-950M --store`; or try `mllm-cpu convert --synthetic 140m --store`"
)


class ConversionDisplay(Protocol):
    """Shows the conversion of a checkpoint folder passed as --model (the CLI draws bars on stderr)."""

    def __call__(self) -> AbstractContextManager[ConvertProgress]:
        """Open the display for one conversion: its notes and files are reported to the progress it yields."""


def _silent() -> AbstractContextManager[ConvertProgress]:
    """The ConversionDisplay that shows nothing (the default)."""
    from mllm_cpu.convert.pipeline import SilentProgress

    return nullcontext(SilentProgress())


def store_home() -> Path:
    """$MLLM_CPU_HOME, or the per-user data directory."""
    return Path(os.environ.get("MLLM_CPU_HOME") or platformdirs.user_data_dir("mllm-cpu"))


def cache_home() -> Path:
    """$MLLM_CPU_CACHE, or `cache/` in the store: what the one-time llama.cpp probes found."""
    return Path(os.environ.get("MLLM_CPU_CACHE") or store_home() / "cache")


def models_dir() -> Path:
    """Where converted GGUF files live."""
    return store_home() / "models"


def checkpoints_dir() -> Path:
    """Where synthetic checkpoints are kept."""
    return store_home() / "checkpoints"


def stored_models() -> list[Path]:
    """Every GGUF file in the store, sorted by name."""
    folder = models_dir()
    return sorted(folder.glob("*.gguf")) if folder.is_dir() else []


def find_stored(name: str) -> Path:
    """The store file named `name` exactly, or the one file whose name starts with it (an empty name is refused)."""
    if not name.strip():
        raise InputError(f"an empty model name ({name!r}) names no model; give one from `mllm-cpu models`")
    models = stored_models()
    exact = [m for m in models if m.stem.lower() == name.lower() or m.name.lower() == name.lower()]
    if exact:
        return exact[0]
    matches = [m for m in models if m.stem.lower().startswith(name.lower())]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputError(
            f"{name}: matches {len(matches)} models ({', '.join(m.stem for m in matches)}); give more of the name"
        )
    raise InputError(f"{name}: no such model in the store ({_contents(models)})")


def _contents(models: list[Path]) -> str:
    """The store folder and the names in it, for an error line."""
    return f"{models_dir()}: {', '.join(m.stem for m in models) or 'none'}"


def origin_record(model: Path) -> Path:
    """The JSON record beside a stored GGUF saying where it came from (kept for files pulled as-is)."""
    return model.with_name(f"{model.name}.origin.json")


def write_origin_record(model: Path, origin: Origin) -> None:
    """Write `model`'s origin record atomically (write, then rename)."""
    record = origin_record(model)
    with atomic_output(record) as temporary:
        temporary.write_text(json.dumps(origin.to_dict(), indent=2) + "\n", encoding="utf-8")


def recorded_origin(model: Path) -> Origin | None:
    """Where a stored file came from by its origin record; None without one."""
    try:
        return Origin.from_dict(json.loads(origin_record(model).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def stored_origin(model: Path, metadata: dict[str, Any]) -> Origin:
    """Where a stored file came from: its origin record if it has one, else its own GGUF keys."""
    return recorded_origin(model) or Origin.from_metadata(metadata)


def remove_model(model: Path) -> None:
    """Delete a store file and its origin record."""
    model.unlink(missing_ok=True)
    origin_record(model).unlink(missing_ok=True)


def resolve_model(spec: str | None, display: ConversionDisplay | None = None) -> Path:
    """A GGUF path from a file path, a store name, or an HF checkpoint folder (converted once,
    shown by `display`)."""
    if not spec:
        return default_model(stored_models())
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if checkpoint_folder(spec) is not None:
        return _converted_once(path, display or _silent)
    if path.suffix == ".gguf" or os.sep in spec:
        raise InputError(f"{spec}: no such model file or checkpoint folder")
    models = stored_models()
    by_name = [m for m in models if m.stem.lower() == spec.lower()]
    by_prefix = [m for m in models if m.stem.lower().startswith(spec.lower())]
    if by_name:
        return by_name[0]
    if by_prefix:
        return _preferred(by_prefix)
    raise InputError(f"{spec}: not a file, a checkpoint folder, or a model in the store ({_contents(models)})")


def default_model(models: list[Path]) -> Path:
    """The model to run when none is named: the best valid file among `models`.

    Files that fail validation (unreadable, damaged, unsupported) are skipped. Then, in order:
    MobileLLM-R1 files before others, real weights before synthetic ones, 4-bit files before
    other levels, the most parameters (950M before 140M, never a tiny test model when a real
    one is there), the quant preference (Q4_K_M first), the name.
    """
    from mllm_cpu.model_file import validate_model_file  # its chat-template check imports jinja2: not for a listing

    if not models:
        raise InputError(HOW_TO_GET_A_MODEL)
    valid: list[ModelFile] = []
    problems: list[str] = []
    for path in models:
        try:
            valid.append(validate_model_file(path))
        except InputError as error:
            problems.append(str(error))
    if not valid:
        raise InputError(f"no runnable model in the store ({len(models)} files; first problem: {problems[0]})")
    return min(valid, key=_default_rank).path


def _default_rank(model: ModelFile) -> tuple[bool, bool, bool, int, int, str]:
    from mllm_cpu.convert.gguf_summary import summarize_header  # header reading: not for a listing from the cache
    from mllm_cpu.core import gguf_keys
    from mllm_cpu.core.gguf_constants import constants as gguf

    summary = summarize_header(model.header)
    basename = str(model.header.get(gguf.Keys.General.BASENAME) or "")
    label = summary.file_type.upper()
    return (
        "mobilellm-r1" not in f"{model.header.get(gguf_keys.SOURCE_LABEL) or ''} {basename} {model.path.name}".lower(),
        "synthetic" in f"{basename} {model.path.name}".lower(),
        not label.startswith(("Q4", "IQ4")),
        -summary.parameters,
        _quant_rank(label),
        model.path.name,
    )


def _quant_rank(label: str) -> int:
    """The place of a quant label (upper case) in the preference order; unknown labels last."""
    return _QUANT_PREFERENCE.index(label) if label in _QUANT_PREFERENCE else len(_QUANT_PREFERENCE)


def _preferred(models: list[Path]) -> Path:
    return min(models, key=lambda path: (_quant_rank(path.stem.rsplit("-", 1)[-1].upper()), path.name))


def _converted_once(folder: Path, display: ConversionDisplay) -> Path:
    """Convert an HF folder to the default quant once, or reuse that conversion.

    Conversions are kept in `converted_dir()/FINGERPRINT/`, keyed by the checkpoint's
    content (weights, config, tokenizer), so a checkpoint whose files changed is converted
    again and the conversion of its old content is removed.
    """
    cached = cached_conversion(folder)
    if cached is not None:
        return cached
    fingerprint = checkpoint_fingerprint(folder)
    entry = converted_dir() / fingerprint
    with display() as progress:
        for old in _entries_of(folder):
            shutil.rmtree(old, ignore_errors=True)
            progress.message(f"{folder} changed since it was converted; removed the old conversion {old}")
        progress.message(f"converting {folder} to {DEFAULT_QUANT.upper()} once (kept in {entry})")
        target = convert_for_run(folder, entry, progress)
    with atomic_output(entry / _SOURCE_RECORD) as temporary:
        temporary.write_text(json.dumps({"folder": str(folder.resolve()), "fingerprint": fingerprint}) + "\n")
    return target


_SOURCE_RECORD = "source.json"


def converted_dir() -> Path:
    """Where checkpoint folders passed as --model are converted (one subfolder per content)."""
    return store_home() / "converted"


def checkpoint_folder(spec: str) -> Path | None:
    """`spec` as a Hugging Face checkpoint folder, or None if it is not one."""
    path = Path(spec).expanduser()
    return path if path.is_dir() and (path / "config.json").is_file() else None


def checkpoint_fingerprint(folder: Path) -> str:
    """A content fingerprint of a checkpoint folder: the names and sampled contents of its files.

    Every visible file counts (weights, config, tokenizer, model card), GGUF outputs written
    into the folder excepted; each file is read as `file_fingerprint` reads it (size, first
    MiB and spread blocks), so this stays fast for gigabytes of weights.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix != ".gguf":
            digest.update(f"{path.name}\0{file_fingerprint(path)}\0".encode())
    return digest.hexdigest()[:16]


def cached_conversion(folder: Path) -> Path | None:
    """The kept conversion of this folder's current content, or None (nothing is written)."""
    entry = converted_dir() / checkpoint_fingerprint(folder)
    found = sorted(entry.glob("*.gguf")) if entry.is_dir() else []
    return found[0] if found else None


def convert_for_run(folder: Path, outdir: Path, progress: ConvertProgress | None = None) -> Path:
    """Convert `folder` to the default quant level in `outdir`, reporting to `progress`."""
    from mllm_cpu.convert.pipeline import convert_checkpoint
    from mllm_cpu.convert.quant_types import QUANT_LEVELS

    [converted] = convert_checkpoint(folder, [QUANT_LEVELS[DEFAULT_QUANT]], outdir, progress=progress)
    return converted.summary.path


def _entries_of(folder: Path) -> list[Path]:
    """Kept conversions made from `folder` (whatever its content was then)."""
    entries = []
    for record in sorted(converted_dir().glob(f"*/{_SOURCE_RECORD}")):
        try:
            source = json.loads(record.read_text(encoding="utf-8")).get("folder")
        except (OSError, ValueError, AttributeError):
            continue
        if source == str(folder.resolve()):
            entries.append(record.parent)
    return entries
