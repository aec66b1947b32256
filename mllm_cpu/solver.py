"""Solve one problem: prompt by task preset, generate, extract the final answer, check or run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from mllm_cpu.answers import answers_match, extract_answer
from mllm_cpu.backend import Backend, BatchedBackend
from mllm_cpu.budget import ThinkingBudget, answer_start, generate_with_budget, split_tokens
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, Generation, Message, StopReason
from mllm_cpu.sampling import SamplingOptions
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
    stop_reason: StopReason
    forced: bool = False
    """True when the thinking budget ran out and the answer was forced."""
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    acceptance_rate: float | None = None
    """Share of drafted tokens the model kept (with --draft or --lookup)."""
    speedup: float | None = None
    """Generation speed over the model's plain decoding speed (with --draft or --lookup)."""

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
        for name in ("acceptance_rate", "speedup"):
            if data[name] is not None:
                data[name] = round(data[name], 3)
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
    engine: Backend,
    problem: str,
    task: str = AUTO_TASK,
    options: SamplingOptions | None = None,
    on_text: Callable[[str], None] | None = None,
    *,
    reuse_prefix: bool = True,
    budget: int | None = None,
    answer_tokens: int | None = None,
) -> Solution:
    """Generate a solution to `problem` and extract its final answer (boxed value or code block).

    With a thinking `budget` (tokens), the reasoning is cut there and an answer forced within
    `answer_tokens` (default: the task's); see mllm_cpu/budget.py. Needs a local model.
    """
    if not problem.strip():
        raise InputError("the problem is empty")
    preset = choose_task(task, problem)
    messages = problem_messages(problem, preset)
    forced = False
    if budget is not None:
        limits = ThinkingBudget(budget, answer_tokens or preset.answer_tokens)
        if isinstance(engine, Engine):
            budgeted = generate_with_budget(
                engine,
                engine.render_chat(messages),
                preset,
                limits,
                options or engine.default_options(),
                on_text,
                reuse_prefix=reuse_prefix,
            )
        elif isinstance(engine, BatchedBackend):
            budgeted = engine.chat_with_budget(messages, preset, limits, options or engine.default_options(), on_text)
        else:
            raise InputError("--budget needs a local model, not an --endpoint")
        generation, forced = budgeted.generation, budgeted.forced
        reasoning, answer_count = budgeted.reasoning_tokens, budgeted.answer_tokens
    else:
        generation = engine.chat(messages, options, on_text, reuse_prefix=reuse_prefix)
        reasoning, answer_count = _split(engine, generation, preset)
    answer = extract_answer(generation.text, preset)
    stats = generation.draft
    plain = engine.plain_tokens_per_second if isinstance(engine, Engine) else None
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
        forced=forced,
        reasoning_tokens=reasoning,
        answer_tokens=answer_count,
        acceptance_rate=stats.acceptance_rate if stats is not None else None,
        speedup=generation.tokens_per_second / plain if stats is not None and plain else None,
    )


def _split(engine: Backend, generation: Generation, preset: TaskPreset) -> tuple[int, int]:
    """(reasoning, answer) tokens: exact for a local model, by share of the text for an endpoint."""
    if isinstance(engine, Engine):
        return split_tokens(engine.llama.detokenize, generation, preset)
    if isinstance(engine, BatchedBackend):
        return split_tokens(engine.detokenize, generation, preset)
    share = answer_start(generation.text, preset) / len(generation.text) if generation.text else 1.0
    reasoning = round(generation.generated_tokens * share)
    return reasoning, generation.generated_tokens - reasoning


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
