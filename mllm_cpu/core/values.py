"""Small values every layer parses or prints: byte units and comma-separated option lists."""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30


def comma_list(text: str) -> list[str]:
    """ "f16, q8_0,," -> ["f16", "q8_0"]: the stripped, non-empty parts, in order."""
    return [part.strip() for part in text.split(",") if part.strip()]
