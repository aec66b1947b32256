"""Small values every layer parses or prints: byte units and comma-separated option lists."""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30


def comma_list(text: str) -> list[str]:
    """ "f16, q8_0,," -> ["f16", "q8_0"]: the stripped, non-empty parts, in order."""
    return [part.strip() for part in text.split(",") if part.strip()]


def human_bytes(count: float) -> str:
    """1536 -> "1.50 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"
