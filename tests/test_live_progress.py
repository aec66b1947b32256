"""solve's live display as a terminal shows it: the output is replayed into a terminal emulator (pyte)."""

from __future__ import annotations

import io
import random

import pyte
from rich.console import Console

from mllm_cpu.commands.live_progress import LiveProgress

WIDTH, HEIGHT = 100, 12


def _screen(output: str) -> list[str]:
    screen = pyte.Screen(WIDTH, HEIGHT)
    pyte.Stream(screen).feed(output.replace("\n", "\r\n"))
    return [line.rstrip() for line in screen.display]


def _words(count: int) -> list[str]:
    rng = random.Random(0)
    return [
        " " + "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 4)))
        for _ in range(count)
    ]


def test_a_line_longer_than_the_screen_keeps_its_newest_text_in_view() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=WIDTH, height=HEIGHT, color_system=None)
    words = _words(800)  # one line of about 4,000 characters: 40 rows, more than three screens
    text = "".join(words)
    rows = [text[start : start + WIDTH].rstrip() for start in range(0, len(text), WIDTH)]
    with LiveProgress(console, console, 1000, interval_s=0) as progress:
        for word in words:
            progress.on_text(word)
        during = _screen(console.file.getvalue())
    after = _screen(console.file.getvalue())
    assert during[-1].startswith("reasoning · 800 tokens"), "the status line, at the bottom"
    assert during[:-1] == rows[-(HEIGHT - 1) :], "the newest text fills the screen above it"
    shown = [row for row in after if row]
    assert len(shown) >= HEIGHT - 2 and shown == rows[-len(shown) :], "the text ends the screen, the status is gone"


def test_lines_stream_in_order_without_repeats() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=WIDTH, height=HEIGHT, color_system=None)
    lines = [f"step {i}: " + "".join(_words(3)) for i in range(20)]
    with LiveProgress(console, console, 1000, interval_s=0) as progress:
        for line in lines:
            for piece in (line[:5], line[5:], "\n"):
                progress.on_text(piece)
    screen = [row for row in _screen(console.file.getvalue()) if row]
    assert screen == lines[-len(screen) :]
