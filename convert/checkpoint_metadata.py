"""The `general.*` metadata of a converted file: names, license and sources, sampling defaults.

gguf-py's `Metadata.load` would read README.md, config.json and generation_config.json by
itself, without bounds and without checking types (a `"temperature": "hot"` fails deep in
the GGUF writer). Here each file is read once through `checkpoint_files`, every value that
reaches the file is checked (or turned into text where the model card's YAML made a number
of it), and only then do gguf-py's naming heuristics run on the checked values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import yaml

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import size_text

from .checkpoint_files import GENERATION_CONFIG, MODEL_CARD, integer, read_text, wrong_type
from .model_spec import FLOAT32_MAX

FRONT_MATTER_LIMIT = 64 * 1024
"""The longest YAML front matter of a model card parsed (real ones are under 2 KiB)."""
INT32_MAX = 2**31 - 1

_CARD_TEXT = (
    *("name", "author", "version", "organization", "description", "finetune", "basename", "size_label"),
    *("url", "doi", "uuid", "repo_url", "model_creator", "model_type", "license", "license_name", "license_link"),
    *("model_name", "model_author", "model_version", "model_organization", "model_description"),
    *("model_finetune", "model_basename", "model_size_label", "model_url", "model_doi", "model_uuid"),
    "model_repo_url",
)
"""Model card keys gguf-py's heuristics take as text."""
_CARD_TEXT_LISTS = ("tags", "pipeline_tag", "languages", "language")
"""Model card keys taken as text or a list of texts."""
_CARD_SOURCES = ("base_model", "base_models", "base_model_sources", "datasets", "dataset", "dataset_sources")
"""Model card keys taken as a list of ids or of objects with text fields (name, repo_url, ...)."""

_SAMPLING: dict[str, tuple[str, type, float, float, bool]] = {
    # generation_config.json key: (gguf.Metadata field, type, low, high, low bound excluded)
    "temperature": ("sampling_temp", float, 0, FLOAT32_MAX, False),
    "top_p": ("sampling_top_p", float, 0, 1, True),
    "min_p": ("sampling_min_p", float, 0, 1, False),
    "top_k": ("sampling_top_k", int, 0, INT32_MAX, False),
    "xtc_probability": ("sampling_xtc_probability", float, 0, 1, False),
    "xtc_threshold": ("sampling_xtc_threshold", float, 0, 1, False),
    "penalty_last_n": ("sampling_penalty_last_n", int, -1, INT32_MAX, False),
    "penalty_repeat": ("sampling_penalty_repeat", float, 0, FLOAT32_MAX, True),
    "mirostat": ("sampling_mirostat", int, 0, 2, False),
    "mirostat_tau": ("sampling_mirostat_tau", float, 0, FLOAT32_MAX, False),
    "mirostat_eta": ("sampling_mirostat_eta", float, 0, FLOAT32_MAX, False),
}
"""The sampling defaults gguf-py copies from generation_config.json, with the range GGUF (and
llama.cpp's sampler) takes: int32 and float32 values."""


def checkpoint_metadata(
    folder: Path, config: dict[str, Any], generation: dict[str, Any], name: str | None, parameter_count: int
) -> gguf.Metadata:
    """gguf-py's metadata for a checkpoint folder, from checked values (as `gguf.Metadata.load` would give)."""
    folder = folder.resolve()
    name_or_path = config.get("_name_or_path")
    hf_params = {"_name_or_path": name_or_path} if isinstance(name_or_path, str) else {}
    metadata = gguf.Metadata.apply_metadata_heuristic(
        gguf.Metadata(), read_model_card(folder), hf_params, folder, parameter_count
    )
    if generation.get("sequence") is not None:
        if not isinstance(generation["sequence"], str):
            raise wrong_type(folder / GENERATION_CONFIG, "sequence", "text", generation["sequence"])
        metadata.sampling_sequence = generation["sequence"]
    for key, (attribute, kind, low, high, low_open) in _SAMPLING.items():
        value = generation.get(key)
        if value is not None:
            setattr(
                metadata, attribute, _sampling_value(folder / GENERATION_CONFIG, key, value, kind, low, high, low_open)
            )
    if name is not None:
        metadata.name = name
    return metadata


def read_model_card(folder: Path) -> dict[str, Any]:
    """The YAML front matter of README.md, reduced to the keys gguf-py uses, each checked ({} without one)."""
    path = folder / MODEL_CARD
    if not path.exists():
        return {}
    lines = read_text(path).splitlines()
    if not lines or lines[0] != "---":
        return {}
    front: list[str] = []
    for line in lines[1:]:
        if line == "---":
            break
        front.append(line)
    text = "\n".join(front).replace("- no\n", '- "no"\n').replace("\t", "  ") + "\n"  # as gguf-py reads it
    if len(text.encode()) > FRONT_MATTER_LIMIT:
        raise InputError(f"{path}: the YAML front matter is larger than {size_text(FRONT_MATTER_LIMIT)}")
    try:
        card = yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"{path}: the YAML front matter is nested too deeply") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise InputError(f"{path}: the YAML front matter is not valid ({problem})") from None
    if not isinstance(card, dict):
        return {}
    checked: dict[str, Any] = {}
    for key in (*_CARD_TEXT, *_CARD_TEXT_LISTS, *_CARD_SOURCES):
        value = card.get(key)
        if value is None:
            continue
        if key in _CARD_TEXT:
            checked[key] = _card_text(path, key, value)
        elif key in _CARD_TEXT_LISTS:
            checked[key] = (
                [_card_text(path, key, v) for v in value] if isinstance(value, list) else [_card_text(path, key, value)]
            )
        else:
            checked[key] = [_card_source(path, key, v) for v in (value if isinstance(value, list) else [value])]
    return checked


def _card_text(path: Path, key: str, value: Any) -> str:
    """A model card value as text: text as it is, a number as YAML wrote it; anything else is refused."""
    if isinstance(value, str):
        return value
    if (integer(value) or isinstance(value, float)) and not isinstance(value, bool):
        return str(value)
    raise wrong_type(path, key, "text", value)


def _card_source(path: Path, key: str, value: Any) -> str | dict[str, str]:
    """A base model or dataset: an id, or an object of text fields."""
    if isinstance(value, dict):
        return {str(field): _card_text(path, f"{key}.{field}", v) for field, v in value.items()}
    return _card_text(path, key, value)


def _sampling_value(path: Path, key: str, value: Any, kind: type, low: float, high: float, low_open: bool) -> Any:
    number = integer(value) or (kind is float and isinstance(value, float) and math.isfinite(value))
    if not number or value > high or (value <= low if low_open else value < low):
        wanted = "an integer" if kind is int else "a number"
        lower = f"above {low:g}" if low_open else f"of at least {low:g}"
        if high < FLOAT32_MAX:
            upper = int(high) if kind is int else f"{high:g}"
            lower = f"above {low:g} and at most {upper}" if low_open else f"from {low:g} to {upper}"
        raise wrong_type(path, key, f"{wanted} {lower}", value)
    return kind(value)
