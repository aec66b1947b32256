"""Which model produced a result: a local GGUF file (name, size, content fingerprint) or a served model."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core.values import MIB

_SAMPLES = 16
_SAMPLE_BYTES = 1 << 16


@dataclass(frozen=True)
class ModelIdentity:
    """Names the model behind a result so that records of different models are never mixed.

    `model` is the file name (local) or the served model id (endpoint); `fingerprint` is a
    content hash of a local file; `endpoint` is the server URL for remote models.
    """

    model: str
    size_bytes: int | None = None
    fingerprint: str | None = None
    endpoint: str | None = None
    family: str | None = field(default=None, compare=False)
    """What a local file holds, e.g. "MobileLLM v1, run as llama" (shown and recorded, not compared)."""

    @property
    def source(self) -> str:
        """The model's name, with its server for an endpoint: "m at http://host/v1"."""
        return f"{self.model} at {self.endpoint}" if self.endpoint else self.model

    @property
    def label(self) -> str:
        """`source`, with a local file's family: "file.gguf · MobileLLM v1, run as llama"."""
        return f"{self.source} · {self.family}" if self.family and not self.endpoint else self.source

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def file_fingerprint(path: Path) -> str:
    """A content fingerprint of a (possibly large) file: its size, its first MiB and 16 spread blocks.

    Different conversions or quant levels differ in the header or in tensor bytes at the
    sampled offsets; reading about 2 MiB keeps this fast on a slow board.
    """
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(size.to_bytes(8, "little"))
    with path.open("rb") as handle:
        digest.update(handle.read(MIB))
        for index in range(_SAMPLES):
            handle.seek(size * index // _SAMPLES)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def file_identity(path: Path, family: str | None = None) -> ModelIdentity:
    """The identity of a local GGUF file, with its family (`GGUFSummary.description`: read from the
    file's header unless the caller, who has read it, gives it)."""
    if family is None:
        from mllm_cpu.convert.gguf_summary import read_summary  # header reading: not for a listing from the cache

        family = read_summary(path).description
    return ModelIdentity(
        model=path.name, size_bytes=path.stat().st_size, fingerprint=file_fingerprint(path), family=family
    )
