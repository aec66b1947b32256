"""Where a model file came from: converted here, pulled from the hub, or repaired.

Files this project writes carry it as GGUF keys (`gguf_keys.ORIGIN`, `ORIGIN_SOURCE`); a
GGUF pulled as it is (not rewritten) gets a small JSON record beside it in the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gguf

ORIGIN_KINDS = ("converted", "pulled", "repaired", "unknown")


@dataclass(frozen=True)
class Origin:
    """How a file was made (`kind`), from what (`source`), and whether it was repaired on the way."""

    kind: str
    source: str | None = None
    repaired: bool = False

    def describe(self) -> str:
        """E.g. "pulled facebook/MobileLLM-R1-950M@1a2b3c4", "converted MobileLLM-R1-950M"."""
        text = f"{self.kind} {self.source}" if self.source else self.kind
        return f"{text}, repaired" if self.repaired and self.kind != "repaired" else text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the sidecar record and the `--json` field)."""
        return asdict(self)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Record the origin in a GGUF file being written."""
        from mllm_cpu.core import gguf_keys  # gguf-py's constants: not for a listing from the cache

        writer.add_string(gguf_keys.ORIGIN, self.kind)
        if self.source:
            writer.add_string(gguf_keys.ORIGIN_SOURCE, self.source)

    @classmethod
    def from_dict(cls, data: Any) -> Origin | None:
        """An origin from a sidecar record, or None if the record is not one."""
        if not isinstance(data, dict) or data.get("kind") not in ORIGIN_KINDS:
            return None
        source = data.get("source")
        return cls(str(data["kind"]), str(source) if source else None, bool(data.get("repaired", False)))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Origin:
        """The origin recorded in a GGUF file's metadata; "unknown" for files made elsewhere."""
        from mllm_cpu.core import gguf_keys

        kind = metadata.get(gguf_keys.ORIGIN)
        repaired = metadata.get(gguf_keys.REPAIRED_FROM) is not None
        if kind in ORIGIN_KINDS:
            source = metadata.get(gguf_keys.ORIGIN_SOURCE)
            return cls(str(kind), str(source) if source else None, repaired)
        return cls("repaired", str(metadata[gguf_keys.REPAIRED_FROM])) if repaired else cls("unknown")
