"""Task presets (system prompt and answer format) and the `auto` task guess."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mllm_cpu.core.errors import InputError

AnswerKind = Literal["boxed", "code"]

START_OF_REASONING = "<think>"
"""The marker R1-style models open their reasoning with."""
END_OF_REASONING = "</think>"
"""The marker R1-style models write when their reasoning ends."""
BOXED_ANSWER_CUE = "\n\nFinal answer: \\boxed{"
"""Appended when a thinking budget runs out: ends the reasoning and opens a boxed answer."""


@dataclass(frozen=True)
class TaskPreset:
    """How to prompt the model for one kind of task and where its answer is."""

    name: str
    system_prompt: str
    answer_kind: AnswerKind
    language: str | None = None
    answer_cue: str = BOXED_ANSWER_CUE
    answer_tokens: int = 64


def _code_preset(name: str, label: str) -> TaskPreset:
    """The preset of a coding task: `name` is also its code fence's tag, `label` names the language in the prompt."""
    prompt = (
        "You are a helpful and harmless assistant. You should think step-by-step before "
        f"responding. Please use {label} programming language only. You must use "
        f"```{name} for just the final solution code block with the format:\n"
        f"```{name}\n# Your code here\n```\n"
    )
    cue = f"\n\nFinal solution:\n```{name}\n"
    return TaskPreset(name, prompt, "code", language=name, answer_cue=cue, answer_tokens=512)


PRESETS: dict[str, TaskPreset] = {
    "math": TaskPreset(
        name="math",
        system_prompt="Please reason step by step, and put your final answer within \\boxed{}.",
        answer_kind="boxed",
    ),
    "python": _code_preset("python", "python"),
    "cpp": _code_preset("cpp", "c++"),
    "science": TaskPreset(
        name="science",
        system_prompt=(
            "Please reason step by step, using the relevant principles of science, and put "
            "your final answer within \\boxed{}. For a multiple-choice question, put only the "
            "letter of the correct option in the box."
        ),
        answer_kind="boxed",
    ),
}

TASK_NAMES: tuple[str, ...] = tuple(PRESETS)

_CPP_PATTERN = re.compile(r"c\+\+|\bcpp\b|#include|std::|\bint\s+main\s*\(|\bcout\b|\bvector<", re.IGNORECASE)
_CODE_STRONG = re.compile(
    r"\bpython\b"
    r"|\bdef\s+\w+\s*\("
    r"|^\s*import\s+\w+|^\s*from\s+[\w.]+\s+import\b"
    r"|>>>|```"
    r"|\bwrite\s+(?:a|an)\s+(?:\w+\s+){0,2}(?:program|script)\b"
    r"|\bimplement\b"
    r"|\bstandard\s+(?:input|output)\b|\bstdin\b|\bstdout\b"
    r"|\btime\s+complexity\b",
    re.IGNORECASE | re.MULTILINE,
)
_CODE_WEAK = re.compile(
    r"\b(?:write|create|complete|code)\s+(?:a|an|the)?\s*(?:\w+\s+){0,2}"
    r"(?:function|class|method|code|algorithm)\b"
    r"|\bfunction\s+(?:that|which|named|called|to)\b"
    r"|\b(?:returns?|takes?)\s+(?:a|an|the)\s+(?:list|array|string|dict|dictionary|tuple)\b",
    re.IGNORECASE,
)
_MATH_NOTATION = re.compile(r"\$|\\\(|\\\[|\\frac|\b[a-zA-Z]\s*\(\s*\w+\s*\)\s*=")
_SCIENCE_DISCIPLINE = re.compile(r"\b(?:physics|chemistry|biology|biochemistry|physiology|genetics)\b", re.IGNORECASE)
_SCIENCE_STRONG = re.compile(
    r"\b(?:velocity|acceleration|momentum|kinetic\s+energy|potential\s+energy|newtons?|"
    r"joules?|watts?|volts?|voltage|ohms?|resistors?|capacitors?|magnetic|electric\s+field|"
    r"gravitational|friction|wavelength|photons?|quantum|thermodynamics?|entropy|nucleus|"
    r"radioactive|half-life|isotopes?|"
    r"molecules?|molecular|molar|molarity|moles|atoms?|atomic|electrons?|protons?|neutrons?|"
    r"ions?|ionic|covalent|oxidation|acids?|titration|catalysts?|stoichiometry|chemical|"
    r"periodic\s+table|valence|"
    r"mitochondria|organelles?|photosynthesis|dna|rna|proteins?|genes?|genetic|chromosomes?|"
    r"alleles?|species|evolution|organisms?|bacteria|virus|viruses|enzymes?|neurons?|"
    r"ecosystems?|meiosis|mitosis)\b",
    re.IGNORECASE,
)
_PH = re.compile(r"\bpH\b")
_SCIENCE_WEAK = re.compile(
    r"\b(?:energy|force|mass|temperature|pressure|reaction|heat|charge|density|frequency|"
    r"current|circuit|gas|liquid|solid|solution|concentration|compound|element|plants?|"
    r"cells?)\b",
    re.IGNORECASE,
)


def _is_code(problem: str) -> bool:
    if _CODE_STRONG.search(problem):
        return True
    return bool(_CODE_WEAK.search(problem)) and not _MATH_NOTATION.search(problem)


def _is_science(problem: str) -> bool:
    if _SCIENCE_DISCIPLINE.search(problem):
        return True
    strong = {match.lower() for match in _SCIENCE_STRONG.findall(problem)}
    if _PH.search(problem):
        strong.add("ph")
    weak = {match.lower() for match in _SCIENCE_WEAK.findall(problem)}
    return 2 * len(strong) + len(weak) >= 3


def detect_task(problem: str) -> str:
    """Guess the task of a problem for `auto`.

    "cpp" or "python" for a programming request, "science" when it is clearly physics,
    chemistry or biology, "math" otherwise.
    """
    if _CPP_PATTERN.search(problem):
        return "cpp"
    if _is_code(problem):
        return "python"
    if _is_science(problem):
        return "science"
    return "math"


def get_preset(name: str) -> TaskPreset:
    """The preset called `name` (case-insensitive); InputError naming the valid ones."""
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        raise InputError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    return preset
