"""`mllm-cpu models`: one row per GGUF file in the store.

The rows are kept in `listing.json` in the cache, each under its file's size, mtime and inode,
so a listing reads the header of a new or changed file only: stepping over a 128k-token
vocabulary takes tens of milliseconds a file, and a listing from the cache imports no header
reader at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mllm_cpu.convert.atomic_file import atomic_output
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.origin import Origin
from mllm_cpu.core.user_files import read_text
from mllm_cpu.core.values import MIB
from mllm_cpu.store import cache_home, recorded_origin, stored_models

LISTING_CACHE = "listing.json"
"""The file in `cache_home()` that keeps the rows."""
_LISTING_CACHE_LIMIT = 8 * MIB


@dataclass(frozen=True)
class StoredModel:
    """One row of `mllm-cpu models`; an unreadable file has only name, file and error."""

    name: str
    file: str
    quant: str | None = None
    bytes: int = 0
    parameters: int = 0
    context_length: int | None = None
    description: str | None = None
    """The family and the graph it runs as, e.g. "MobileLLM v1, run as llama" (`info`'s "model")."""
    source_architecture: str | None = None
    origin: Origin | None = None
    """Where the file came from: converted, pulled or repaired."""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        if self.error:
            return {"name": self.name, "file": self.file, "error": self.error}
        return asdict(self)


def store_listing() -> list[StoredModel]:
    """One row per GGUF file in the store; an unreadable file gets a row with its error.

    A file's row comes from the listing cache while its size, mtime and inode are those cached;
    its origin record, a file of its own, is read each time."""
    cache_file = cache_home() / LISTING_CACHE
    cached = _read_listing_cache(cache_file)
    kept: dict[str, dict[str, Any]] = {}
    rows = []
    for path in stored_models():
        try:
            stat = path.stat()
            key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
            entry = cached.get(str(path))
            row = _cached_row(entry["row"]) if isinstance(entry, dict) and entry.get("key") == key else None
            if row is None:
                row = _listing_row(path)
            kept[str(path)] = {"key": key, "row": asdict(row)}
            rows.append(StoredModel(**{**asdict(row), "origin": recorded_origin(path) or row.origin}))
        except (InputError, OSError) as error:
            message = str(error) if isinstance(error, InputError) else f"{path}: {error.strerror or error}"
            rows.append(StoredModel(name=path.stem, file=str(path), error=message))
    if kept != cached:
        _write_listing_cache(cache_file, kept)
    return rows


def _listing_row(path: Path) -> StoredModel:
    """A file's row from its header, with the origin its own keys record (an origin record beside it overrides that)."""
    from mllm_cpu.convert.gguf_summary import read_summary  # the header reader: only for a file not cached
    from mllm_cpu.core import gguf_keys
    from mllm_cpu.core.gguf_constants import constants as gguf

    summary = read_summary(path)
    metadata = summary.metadata
    arch = summary.architecture
    return StoredModel(
        name=summary.path.stem,
        file=str(summary.path),
        quant=summary.file_type,
        bytes=summary.file_bytes,
        parameters=summary.parameters,
        context_length=metadata.get(gguf_keys.arch_key(gguf.Keys.LLM.CONTEXT_LENGTH, arch)),
        description=summary.description,
        source_architecture=metadata.get(gguf_keys.SOURCE_ARCHITECTURE) or arch,
        origin=Origin.from_metadata(metadata),
    )


def _cached_row(data: Any) -> StoredModel | None:
    """A row read back from the listing cache; None for anything that is not one."""
    names = {field.name for field in fields(StoredModel)}
    if not isinstance(data, dict) or set(data) != names or data.get("error") is not None:
        return None
    origin = Origin.from_dict(data["origin"])
    try:
        row = StoredModel(**{**data, "origin": origin})
    except TypeError:
        return None
    return row if origin is not None and isinstance(row.name, str) and isinstance(row.bytes, int) else None


def _read_listing_cache(path: Path) -> dict[str, Any]:
    """The cached rows by file path; empty when the cache is missing, unreadable or not one."""
    try:
        data = json.loads(read_text(path, _LISTING_CACHE_LIMIT, "listing cache"))
    except (InputError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_listing_cache(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Replace the cache (write, then rename); a store that cannot be written to just lists without one."""
    try:
        os.makedirs(path.parent, exist_ok=True)
        with atomic_output(path) as temporary:
            temporary.write_text(json.dumps(rows), encoding="utf-8")
    except (InputError, OSError):
        pass
