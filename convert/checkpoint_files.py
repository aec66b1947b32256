"""The files of a checkpoint folder, read safely: regular files only, bounded in size, JSON checked.

A checkpoint comes from anywhere, so every file the converter reads is opened only if it is
a regular file (a FIFO, a device or a folder in its place is one error line, never a hang
or an endless read), read up to a limit its purpose justifies (`FILE_LIMITS`), and, for
JSON, parsed with a bound on nesting. Values are then checked by type where they are used,
with messages that name the file and the field (`wrong_type`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mllm_cpu.core import user_files
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import MIB

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
MODEL_CARD = "README.md"
WEIGHT_INDEX = "model.safetensors.index.json"

FILE_LIMITS: dict[str, int] = {
    CONFIG: 1 * MIB,  # a few dozen hyperparameters (and per-layer lists)
    GENERATION_CONFIG: 1 * MIB,  # a handful of sampling defaults and token ids
    TOKENIZER: 32 * MIB,  # Llama 3's 128k-token BPE is 8.7 MiB; the largest vocabulary taken is twice that
    TOKENIZER_CONFIG: 8 * MIB,  # special-token table (about 50 KiB) and chat templates
    CHAT_TEMPLATE: 1 * MIB,
    MODEL_CARD: 4 * MIB,  # the README with its YAML front matter
    WEIGHT_INDEX: 8 * MIB,  # one line per tensor
}
"""The most bytes read from each file of a checkpoint folder."""

MAX_JSON_DEPTH = 64
"""Deepest nesting of a checkpoint's JSON (Hugging Face files nest fewer than ten levels)."""


def read_text(path: Path, limit: int | None = None) -> str:
    """The UTF-8 text of the regular file at `path`, at most `limit` bytes (default: its FILE_LIMITS entry)."""
    return user_files.read_text(path, FILE_LIMITS[path.name] if limit is None else limit, f"a {path.name}")


def parse_json(data: str, where: object) -> Any:
    """JSON from `data`, nested at most MAX_JSON_DEPTH deep; InputError naming `where` otherwise."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise InputError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} deep") from None
    except ValueError as error:
        raise InputError(f"{where}: not valid JSON ({error})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InputError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} deep")
    return value


def read_json_object(path: Path, required: bool = True, limit: int | None = None) -> dict[str, Any]:
    """The JSON object in a checkpoint file ({} when an optional file is absent)."""
    if not required and not path.exists():
        return {}
    value = parse_json(read_text(path, limit), path)
    if not isinstance(value, dict):
        raise InputError(f"{path}: not a JSON object")
    return value


def wrong_type(where: object, field: str, wanted: str, value: Any) -> InputError:
    """The one-line error for a field of the wrong type or range: 'FILE: FIELD must be WANTED, got VALUE'."""
    return InputError(f"{where}: {field} must be {wanted}, got {shown(value)}")


def shown(value: Any, width: int = 60) -> str:
    """A value as JSON on one line, cut to about `width` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


def plain(value: Any) -> str:
    """A name from a file as it is when it is printable text, else as `shown` writes it."""
    return value if isinstance(value, str) and value.isprintable() else shown(value)


def integer(value: Any) -> bool:
    """True for a JSON integer (not a boolean, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
