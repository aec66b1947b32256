"""A live status line while a model reasons: tokens so far, tokens/s, elapsed time and ETA.

The line is redrawn at most every `interval_s` (0.1 s), from the generation's own text
callback, so decoding pays a few cheap redraws per second and no extra thread. On a terminal
stdout the streamed text and the status share one rich Live region (finished lines are
printed above it, the unfinished line and the status below); when stdout is piped the text
goes there unchanged and the status goes to stderr, if that is a terminal. The status is
transient: nothing of it stays on the screen or in captured output.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.cells import chop_cells
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from mllm_cpu.commands.stream_display import DEFAULT_INTERVAL_S, TerminalStream, printable

STATUS_INTERVAL_S = 0.1


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LiveProgress:
    """An `on_text` callback that streams text to `text_console` (None: no text) and shows a status line.

    `goal` is the token count the ETA aims at (the budget, else --max-tokens), named by
    `goal_label`. When a piece
    ends with `cue` (a thinking budget's answer cue), the status switches to the forced answer,
    aiming at `answer_goal` more tokens.
    """

    def __init__(
        self,
        text_console: Console | None,
        status_console: Console,
        goal: int,
        *,
        goal_label: str = "--max-tokens",
        style: str | None = None,
        cue: str | None = None,
        answer_goal: int | None = None,
        interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self.goal = goal
        self.goal_label = goal_label
        self.style = style or ""
        self.cue = cue
        self.answer_goal = answer_goal
        self.interval_s = interval_s
        self.tokens = 0
        self.answer_tokens: int | None = None
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self._last_draw = 0.0
        self._shared = text_console is not None and text_console.is_terminal
        self._stream = (
            TerminalStream(text_console, style, DEFAULT_INTERVAL_S) if text_console and not self._shared else None
        )
        self._partial = ""
        self._finished: list[str] = []
        live_console = text_console if self._shared and text_console is not None else status_console
        self._live: Live | None = (
            Live(console=live_console, auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=False)
            if live_console.is_terminal
            else None
        )

    def __enter__(self) -> LiveProgress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._draw()
            self._live.stop()
        if self._shared and self._live is not None:
            rest = printable(self._partial)
            if rest:
                self._live.console.print(Text(rest, style=self.style), soft_wrap=True, highlight=False)
        if self._stream is not None:
            self._stream.finish()

    def on_text(self, piece: str) -> None:
        """Take one streamed piece (about one token)."""
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        if self.cue and piece.endswith(self.cue) and self.answer_tokens is None:
            self.answer_tokens = 0
        elif self.answer_tokens is not None:
            self.answer_tokens += 1
        else:
            self.tokens += 1
        if self._stream is not None:
            self._stream(piece)
        elif self._shared:
            lines = (self._partial + piece).split("\n")
            self._finished.extend(lines[:-1])
            self._partial = lines[-1]
        if now - self._last_draw >= self.interval_s:
            self._last_draw = now
            self._draw()

    def status(self) -> str:
        """The status line's text."""
        now = time.perf_counter()
        elapsed = now - self.started
        generating = now - self.first_at if self.first_at is not None else 0.0
        count = self.tokens + (self.answer_tokens or 0)
        rate = count / generating if generating > 0 else 0.0
        if self.answer_tokens is not None and self.answer_goal is not None:
            phase, done, goal, target = "forced answer", self.answer_tokens, self.answer_goal, "--answer-tokens"
        else:
            phase, done, goal, target = "reasoning", self.tokens, self.goal, self.goal_label
        eta = f"eta {_clock((goal - done) / rate)} to {target}" if rate > 0 and goal > done else "eta -"
        return f"{phase} · {count} tokens · {rate:.1f} tokens/s · {_clock(elapsed)} · {eta}"

    def _finish_full_rows(self, width: int) -> None:
        """Move the rows the unfinished line fills completely above the live region, which keeps
        one row of text: a model that writes long lines would otherwise grow the region past
        the screen and make every redraw slower."""
        if len(self._partial) <= width or width < 1:
            return
        rows = chop_cells(printable(self._partial), width)
        if len(rows) > 1:
            self._finished.append("".join(rows[:-1]))
            self._partial = rows[-1]

    def _draw(self) -> None:
        if self._live is None:
            return
        status = Text(self.status(), style="dim cyan")
        if self._shared:
            self._finish_full_rows(self._live.console.width)
            region = Group(Text(printable(self._partial), style=self.style), status)
            if not self._finished:
                self._live.update(region, refresh=True)
                return
            # printing above the region redraws it: one render for both
            self._live.update(region, refresh=False)
            self._live.console.print(
                Text(printable("\n".join(self._finished)), style=self.style), soft_wrap=True, highlight=False
            )
            self._finished.clear()
        else:
            if self._stream is not None:
                self._stream.flush()
            self._live.update(status, refresh=True)
