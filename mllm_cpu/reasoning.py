"""A reply's reasoning apart from its answer, as it streams: the API's `reasoning_content` and `content`.

The answer begins after `</think>`, else, for a reply to a task, at its answer mark (`\\boxed`
for math and science, a code fence for code), as the thinking budget's `budget.answer_start`
finds it. Streaming cannot look ahead, so the first mark splits the reply; a piece that may be
the start of a mark is held back until the next piece tells. Without a task only `</think>`
splits, and only a reply that opens with `<think>` has reasoning (llama-server's
`--reasoning-format deepseek`); any other reply is all answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mllm_cpu.tasks import END_OF_REASONING, START_OF_REASONING, TaskPreset

BOXED_MARK = "\\boxed"
FENCE_MARK = "```"


@dataclass(frozen=True)
class Split:
    """Text of one side of a reply: reasoning (`reasoning` True) or the answer."""

    text: str
    reasoning: bool


def answer_mark(preset: TaskPreset) -> str:
    """The text a task's final answer opens with: `\\boxed` or a code fence."""
    return BOXED_MARK if preset.answer_kind == "boxed" else FENCE_MARK


class ReasoningSplitter:
    """Feed a reply's text piece by piece; get back what is known to be reasoning or answer so far."""

    def __init__(self, preset: TaskPreset | None) -> None:
        self._marks = (END_OF_REASONING,) if preset is None else (END_OF_REASONING, answer_mark(preset))
        self._task = preset is not None
        self._decided = False
        """Whether the reply's start is known: a leading <think> is dropped, and without a task only a
        reply that opens with it has reasoning."""
        self._answering = False
        self._held = ""
        self._trim = False
        """Whether newlines right after a mark are still to be dropped."""

    def feed(self, text: str) -> list[Split]:
        """The parts of `held + text` that are settled, in order."""
        self._held += text
        self._trim_newlines()
        if not self._decided:
            start = self._held.lstrip()
            if START_OF_REASONING.startswith(start) and len(start) < len(START_OF_REASONING):
                return []  # could still open with <think>
            self._decided = True
            if start.startswith(START_OF_REASONING):
                self._held = start[len(START_OF_REASONING) :]
                self._trim = True
                self._trim_newlines()
            elif not self._task:
                self._answering = True
        if self._answering:
            return self._take(False, len(self._held))
        found = [(self._held.find(mark), mark) for mark in self._marks]
        hits = [(index, mark) for index, mark in found if index >= 0]
        if hits:
            index, mark = min(hits)
            reasoning = self._take(True, index)
            if mark == END_OF_REASONING:
                self._held = self._held[len(mark) :]
                self._trim = True
                self._trim_newlines()
            self._answering = True
            return reasoning + self._take(False, len(self._held))
        return self._take(True, len(self._held) - _partial_mark(self._held, self._marks))

    def finish(self) -> list[Split]:
        """Whatever is still held, at the end of the reply."""
        held, self._held = self._held, ""
        reasoning = self._task if not self._decided else not self._answering
        return [Split(held, reasoning)] if held else []

    def _trim_newlines(self) -> None:
        if self._trim:
            self._held = self._held.lstrip("\n")
            self._trim = not self._held

    def _take(self, reasoning: bool, end: int) -> list[Split]:
        text, self._held = self._held[:end], self._held[end:]
        return [Split(text, reasoning)] if text else []


def split_reply(text: str, preset: TaskPreset | None) -> tuple[str, str]:
    """(reasoning, answer) of a whole reply, as its stream splits it."""
    splitter = ReasoningSplitter(preset)
    parts = splitter.feed(text) + splitter.finish()
    return "".join(p.text for p in parts if p.reasoning), "".join(p.text for p in parts if not p.reasoning)


def _partial_mark(text: str, marks: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that some mark starts with (0 when none does)."""
    longest = 0
    for mark in marks:
        for size in range(min(len(mark) - 1, len(text)), longest, -1):
            if text.endswith(mark[:size]):
                longest = size
                break
    return longest
