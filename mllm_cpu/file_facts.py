"""Facts read from files, kept in a small JSON file in the cache while each file is unchanged.

A fact is kept under its file's path with the file's size, mtime and inode, and holds while
those are the same (as make and pip trust a file's stat). Reading a GGUF header steps over a
128k-token vocabulary, tens of milliseconds a file; `models` keeps its rows this way
(`listing.py`), and a model's first check before llama.cpp loads it keeps where its
vocabulary ends (`model_file.read_model_header`). A missing, unreadable or foreign cache file
is an empty one, and one that cannot be written is left alone: the facts are read again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mllm_cpu.convert.atomic_file import atomic_output
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import read_text
from mllm_cpu.core.values import MIB
from mllm_cpu.store import cache_home

FACTS_LIMIT = 8 * MIB
"""The largest cache file read back; a larger one is taken as empty."""


def file_key(path: Path) -> list[int]:
    """What a fact about `path` is kept under: its size, mtime (ns) and inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


class FileFacts:
    """The facts in one cache file (`name` in `cache_home()`), by file path."""

    def __init__(self, name: str) -> None:
        self.file = cache_home() / name
        self.entries = _read(self.file)
        self._read_back = dict(self.entries)

    def get(self, path: Path, key: list[int]) -> Any:
        """The fact kept for `path` under `key`; None when there is none or the file has changed."""
        entry = self.entries.get(str(path))
        return entry.get("value") if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, path: Path, key: list[int], value: Any) -> None:
        """Keep `value` (JSON data) for `path` under `key`."""
        self.entries[str(path)] = {"key": key, "value": value}

    def keep_only(self, paths: set[str]) -> None:
        """Forget the facts of every other file."""
        self.entries = {path: entry for path, entry in self.entries.items() if path in paths}

    def save(self) -> None:
        """Write the facts back (write, then rename) if they changed; a cache that cannot be written stays as it is."""
        if self.entries == self._read_back:
            return
        try:
            os.makedirs(self.file.parent, exist_ok=True)
            with atomic_output(self.file) as temporary:
                temporary.write_text(json.dumps(self.entries), encoding="utf-8")
        except (InputError, OSError):
            return
        self._read_back = dict(self.entries)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path, FACTS_LIMIT, "cache"))
    except (InputError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
