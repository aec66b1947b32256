"""Find the final answer in a model's output and compare math answers."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from .tasks import AnswerKind, TaskPreset

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TOKEN = re.compile(r"[^\s$]+")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([^\s`]*)[^`\n]*$")
_CLOSING_FENCE = re.compile(r"^[ \t]*```[ \t]*$")
_GSM8K_ANSWER = re.compile(r"####[ \t]*([^\n]*)")

_LANGUAGE_ALIASES: dict[str, frozenset[str]] = {
    "python": frozenset({"python", "py", "python3"}),
    "cpp": frozenset({"cpp", "c++", "cc", "cxx"}),
}
_MATH_TIMEOUT_S = 5


@dataclass(frozen=True)
class Answer:
    """A final answer: the box content or the code, None when the output has none."""

    kind: AnswerKind
    text: str | None
    language: str | None = None


def closing_brace(text: str, start: int, limit: int | None = None) -> int | None:
    """The index of the `}` closing the `{` at `start` (backslash escapes skipped), None when unclosed or
    past `limit`."""
    end = len(text) if limit is None else min(len(text), limit)
    if start >= end or text[start] != "{":
        return None
    depth = 0
    index = start
    while index < end:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def _box_argument(text: str, end_of_command: int, limit: int) -> tuple[str | None, int | None]:
    """The argument of the box command ending at `end_of_command`, if complete, and where a brace
    group that opens there but is not closed before `limit` opens (else None)."""
    index = end_of_command
    while index < len(text) and text[index].isspace():
        index += 1
    if index < len(text) and text[index] == "{":
        end = closing_brace(text, index, limit)
        return (None, index) if end is None else (text[index + 1 : end], None)
    if index == end_of_command:
        return None, None
    token = _TOKEN.match(text, index)
    return (token.group().rstrip(".,;:") if token else None), None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}`, `\\fbox{...}` or `\\boxed 5` in `text`.

    Nested and escaped braces are handled; unterminated and empty boxes are ignored. The boxes are
    tried from the last; a box whose braces run into a later unclosed one's is unclosed too (its
    depth never falls back), so each scan stops there and hostile text (20,000 unclosed boxes) is
    read in linear time.
    """
    never_closed = len(text)
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content, unclosed_at = _box_argument(text, match.end(), never_closed)
        if unclosed_at is not None:
            never_closed = unclosed_at
        elif content is not None and content.strip():
            return content.strip()
    return None


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """Complete fenced blocks as (lowercased info word, code), in order of appearance."""
    blocks: list[tuple[str, str]] = []
    language: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if language is None:
            opening = _FENCE.match(line)
            if opening:
                language = opening.group(1).lower()
                body = []
        elif _CLOSING_FENCE.match(line):
            blocks.append((language, "\n".join(body)))
            language = None
        else:
            body.append(line)
    return blocks


def extract_code(text: str, language: str | None) -> str | None:
    """The code of the last complete fenced block, without the fences.

    With a `language`, the last block tagged with it (aliases such as py or c++ count)
    wins, else the last untagged block; blocks tagged with another language are not
    returned. An unclosed final fence (output cut off) is ignored.
    """
    blocks = [(tag, code) for tag, code in _code_blocks(text) if code.strip()]
    if language is None:
        return blocks[-1][1] if blocks else None
    aliases = _LANGUAGE_ALIASES.get(language, frozenset({language}))
    for wanted in (aliases, frozenset({""})):
        for tag, code in reversed(blocks):
            if tag in wanted:
                return code
    return None


def extract_answer(text: str, preset: TaskPreset) -> Answer:
    """The final answer of `text` in the form the task `preset` asks for."""
    if preset.answer_kind == "code":
        return Answer("code", extract_code(text, preset.language), preset.language)
    return Answer("boxed", extract_boxed(text))


def gsm8k_reference(answer_field: str) -> str:
    """The reference number of a GSM8K `answer` field: what follows `#### `, no commas."""
    matches = _GSM8K_ANSWER.findall(answer_field)
    number = matches[-1].replace(",", "").strip() if matches else ""
    if not number:
        raise ValueError("GSM8K answer has no '#### <number>' line")
    return number


def _as_latex(answer: str) -> str:
    return answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"


def answers_match(predicted: str, expected: str) -> bool:
    """Whether `predicted` is mathematically equivalent to `expected` (by math-verify).

    Never raises: anything math-verify cannot parse or compare is a mismatch.
    Comparisons are time-limited in the main thread only (math-verify uses SIGALRM).
    math-verify (and sympy under it) is imported here, when an answer is first checked.
    """
    if not predicted.strip() or not expected.strip():
        return False
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    limit = _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(_as_latex(expected), parsing_timeout=limit)
        target = parse(_as_latex(predicted), parsing_timeout=limit)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=limit))
    except (Exception, TimeoutException):
        return False
