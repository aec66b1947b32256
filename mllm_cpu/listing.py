"""`mllm-cpu models`: one row per GGUF file in the store.

The rows are kept in `listing.json` in the cache, each under its file's size, mtime and inode,
so a listing reads the header of a new or changed file only: stepping over a 128k-token
vocabulary takes tens of milliseconds a file, and a listing from the cache imports no header
reader at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.origin import Origin
from mllm_cpu.file_facts import FileFacts, file_key
from mllm_cpu.store import recorded_origin, stored_models

LISTING_CACHE = "listing.json"
"""The file in `cache_home()` that keeps the rows (a `FileFacts`)."""


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
    facts = FileFacts(LISTING_CACHE)
    paths = stored_models()
    facts.keep_only({str(path) for path in paths})
    rows = []
    for path in paths:
        try:
            key = file_key(path)
            row = _cached_row(facts.get(path, key))
            if row is None:
                row = _listing_row(path)
                facts.put(path, key, asdict(row))
            rows.append(replace(row, origin=recorded_origin(path) or row.origin))
        except (InputError, OSError) as error:
            message = str(error) if isinstance(error, InputError) else f"{path}: {error.strerror or error}"
            rows.append(StoredModel(name=path.stem, file=str(path), error=message))
    facts.save()
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
