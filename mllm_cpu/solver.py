"""Solve one problem: prompt by task preset, generate, extract the final answer, check or run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mllm_cpu.answers import answers_match, extract_answer
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, Message, SamplingOptions
from mllm_cpu.sandbox import SandboxResult, run_python
from mllm_cpu.tasks import AnswerKind, TaskPreset, detect_task, get_preset

AUTO_TASK = "auto"


@dataclass(frozen=True)
class Solution:
    """A model's attempt at a problem: the full output and the final answer found in it."""

    problem: str
    task: str
    answer: str | None
    answer_kind: AnswerKind
    language: str | None
    output: str
    prompt_tokens: int
    tokens: int
    tokens_per_second: float
    prompt_seconds: float
    generation_seconds: float
    stop_reason: str

    @property
    def seconds(self) -> float:
        """Wall time of the whole generation, prompt evaluation included."""
        return self.prompt_seconds + self.generation_seconds

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (speed and times rounded)."""
        data = asdict(self)
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        data["prompt_seconds"] = round(self.prompt_seconds, 3)
        data["generation_seconds"] = round(self.generation_seconds, 3)
        data["seconds"] = round(self.seconds, 3)
        return data


def choose_task(task: str, problem: str) -> TaskPreset:
    """The preset for `task`; "auto" guesses it from the problem. Unknown names raise InputError."""
    if task.strip().lower() == AUTO_TASK:
        return get_preset(detect_task(problem))
    return get_preset(task)


def problem_messages(problem: str, preset: TaskPreset) -> list[Message]:
    """The conversation that asks the model to solve `problem` the way `preset` wants."""
    return [{"role": "system", "content": preset.system_prompt}, {"role": "user", "content": problem}]


def solve(
    engine: Engine,
    problem: str,
    task: str = AUTO_TASK,
    options: SamplingOptions | None = None,
    on_text: Callable[[str], None] | None = None,
    *,
    reuse_prefix: bool = True,
) -> Solution:
    """Generate a solution to `problem` and extract its final answer (boxed value or code block)."""
    if not problem.strip():
        raise InputError("the problem is empty")
    preset = choose_task(task, problem)
    generation = engine.generate(
        engine.render_chat(problem_messages(problem, preset)), options, on_text, reuse_prefix=reuse_prefix
    )
    answer = extract_answer(generation.text, preset)
    return Solution(
        problem=problem,
        task=preset.name,
        answer=answer.text,
        answer_kind=answer.kind,
        language=answer.language,
        output=generation.text,
        prompt_tokens=generation.prompt_tokens,
        tokens=generation.generated_tokens,
        tokens_per_second=generation.tokens_per_second,
        prompt_seconds=generation.prompt_seconds,
        generation_seconds=generation.generation_seconds,
        stop_reason=generation.stop_reason,
    )


def is_correct(solution: Solution, expected: str) -> bool:
    """Whether the boxed answer equals `expected` mathematically; no answer is incorrect."""
    if solution.answer_kind != "boxed":
        raise InputError(f"--check compares boxed answers; the {solution.task} task answers with code")
    return solution.answer is not None and answers_match(solution.answer, expected)


def run_solution(solution: Solution, tests: str | None = None, timeout_s: float = 10.0) -> SandboxResult:
    """Run the extracted Python answer (then `tests`, if given) in the sandbox."""
    if solution.language != "python":
        raise InputError(f"only Python answers can be run; the task is {solution.task}")
    if solution.answer is None:
        return SandboxResult(
            ok=False,
            returncode=-1,
            stdout="",
            stderr="",
            timed_out=False,
            error="the output has no complete ```python code block",
        )
    return run_python(solution.answer, tests=tests, timeout_s=timeout_s)
