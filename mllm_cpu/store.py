"""The model store ($MLLM_CPU_HOME) and resolving what a user passes as --model."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from mllm_cpu.core.errors import InputError

DEFAULT_QUANT = "q4_k_m"
_QUANT_PREFERENCE = ("Q4_K_M", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32")
HOW_TO_GET_A_MODEL = (
    "no model found. Download one (e.g. `hf download facebook/MobileLLM-R1-950M --local-dir MobileLLM-R1-950M`), "
    "then run `mllm-cpu convert MobileLLM-R1-950M --store`; or try `mllm-cpu convert --synthetic 140m --store`"
)


def store_home() -> Path:
    """$MLLM_CPU_HOME, or the per-user data directory."""
    return Path(os.environ.get("MLLM_CPU_HOME") or platformdirs.user_data_dir("mllm-cpu"))


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


def resolve_model(spec: str | None) -> Path:
    """A GGUF path from a file path, a store name, or an HF checkpoint folder (converted once)."""
    if not spec:
        models = stored_models()
        if not models:
            raise InputError(HOW_TO_GET_A_MODEL)
        return _preferred(models)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return _converted_once(path)
    if path.suffix == ".gguf" or os.sep in spec:
        raise InputError(f"{spec}: no such model file or checkpoint folder")
    by_name = [m for m in stored_models() if m.stem.lower() == spec.lower()]
    by_prefix = [m for m in stored_models() if m.stem.lower().startswith(spec.lower())]
    if by_name:
        return by_name[0]
    if by_prefix:
        return _preferred(by_prefix)
    names = ", ".join(m.stem for m in stored_models()) or "none"
    raise InputError(f"{spec}: not a file, a checkpoint folder, or a model in the store ({models_dir()}: {names})")


def _preferred(models: list[Path]) -> Path:
    def rank(path: Path) -> tuple[int, str]:
        label = path.stem.rsplit("-", 1)[-1].upper()
        return (_QUANT_PREFERENCE.index(label) if label in _QUANT_PREFERENCE else len(_QUANT_PREFERENCE), path.name)

    return min(models, key=rank)


def _converted_once(folder: Path) -> Path:
    """Convert an HF folder to the default quant in the store, or reuse an earlier conversion."""
    from mllm_cpu.convert.pipeline import convert_checkpoint, load_checkpoint, output_path
    from mllm_cpu.convert.quant_types import QUANT_LEVELS

    level = QUANT_LEVELS[DEFAULT_QUANT]
    target = output_path(load_checkpoint(folder), level, models_dir())
    if not target.is_file():
        convert_checkpoint(folder, [level], models_dir())
    return target
