"""Stop a streamed generation at a stop string, without ever showing a piece of it."""

from __future__ import annotations


class StopTextFilter:
    """Passes streamed text through until one of `stops` appears; holds back a possible start of one.

    `feed` returns the text that is safe to show and whether a stop string was reached (the
    text before it is shown, the stop string and anything after it are not).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add a streamed piece; returns (text to show, stopped)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return piece, False
        text = self.held + piece
        found = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.held, self.stopped = "", True
            return text[: min(found)], True
        keep = max((n for stop in self.stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text once the stream has ended without a stop string."""
        held, self.held = ("" if self.stopped else self.held), ""
        return held
