"""Thinking budgets: cap the reasoning at N tokens, then force a short final answer.

After `tokens` generated tokens with neither a final answer nor an end-of-reasoning marker
(`</think>`), the trace is stopped, the task's answer cue is appended (for math, a
"Final answer: \\boxed{" line; for code, an opening fence) and the model finishes the answer
within `answer_tokens` more tokens. A trace that ends its reasoning with the marker before
the budget goes on unforced. See docs/DESIGN.md, "Thinking budget".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from mllm_cpu.answers import extract_answer
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, Generation, StopReason
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.tasks import END_OF_REASONING, START_OF_REASONING, TaskPreset


@dataclass(frozen=True)
class ThinkingBudget:
    """At most `tokens` reasoning tokens, then at most `answer_tokens` for a forced answer."""

    tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class BudgetedGeneration:
    """A generation under a thinking budget: the whole output and how it splits into reasoning and answer."""

    generation: Generation
    forced: bool
    reasoning_tokens: int
    answer_tokens: int


def answer_start(text: str, preset: TaskPreset) -> int:
    """Where the final answer begins in `text`: after `</think>`, else at the last `\\boxed` or code fence."""
    marker = text.find(END_OF_REASONING)
    if marker >= 0:
        return marker + len(END_OF_REASONING)
    found = text.rfind("\\boxed" if preset.answer_kind == "boxed" else "```")
    return found if found >= 0 else len(text)


Detokenize = Callable[[list[int]], bytes]
"""The bytes a list of token ids stands for (special tokens as empty text), e.g. `Llama.detokenize`."""


def tokens_before(detokenize: Detokenize, token_ids: list[int], text: str, end: int) -> int:
    """How many of `token_ids` (which spell `text`) it takes to write `text[:end]`."""
    wanted = len(text[:end].encode("utf-8"))
    written = 0
    for count, token in enumerate(token_ids):
        if written >= wanted:
            return count
        written += len(detokenize([token]))
    return len(token_ids)


def split_tokens(detokenize: Detokenize, generation: Generation, preset: TaskPreset) -> tuple[int, int]:
    """(reasoning tokens, answer tokens) of an unforced generation."""
    start = answer_start(generation.text, preset)
    reasoning = tokens_before(detokenize, generation.token_ids, generation.text, start)
    return reasoning, generation.generated_tokens - reasoning


def answer_cue(text: str, preset: TaskPreset) -> str:
    """The text that ends the reasoning and opens the answer; closes an open `<think>` block first."""
    if START_OF_REASONING in text and END_OF_REASONING not in text:
        return f"\n{END_OF_REASONING}{preset.answer_cue}"
    return preset.answer_cue


class AfterBudget(Enum):
    """What follows a trace whose budget ran out."""

    GO_ON = "go on"
    """The reasoning has ended (`</think>`): the reply goes on unforced."""
    STOP = "stop"
    """A final answer is already written: the reply ends (stop reason "budget")."""
    FORCE = "force"
    """Neither: the answer cue is appended and the answer forced."""


def after_budget(text: str, preset: TaskPreset) -> AfterBudget:
    """What to do with a trace `text` whose thinking budget ran out."""
    if END_OF_REASONING in text:
        return AfterBudget.GO_ON
    if extract_answer(text, preset).text is not None:
        return AfterBudget.STOP
    return AfterBudget.FORCE


def generate_with_budget(
    engine: Engine,
    prompt: str | list[int],
    preset: TaskPreset,
    budget: ThinkingBudget,
    options: SamplingOptions,
    on_text: Callable[[str], None] | None = None,
    *,
    reuse_prefix: bool = True,
) -> BudgetedGeneration:
    """Generate a reply to `prompt` (text or token ids) whose reasoning stops after `budget.tokens` tokens.

    The forced answer's cue is part of the output text (and is passed to `on_text`), not of
    the token counts: `reasoning_tokens + answer_tokens` are the tokens the model generated.
    """
    if budget.tokens < 1 or budget.answer_tokens < 1:
        raise InputError("a thinking budget needs at least one reasoning and one answer token")
    prompt_ids = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    first = engine.generate(
        prompt_ids,
        replace(options, max_tokens=min(budget.tokens, options.max_tokens)),
        on_text,
        reuse_prefix=reuse_prefix,
    )
    budget_ran_out = first.stop_reason == StopReason.LENGTH and budget.tokens < options.max_tokens
    if not budget_ran_out:
        return BudgetedGeneration(first, False, *split_tokens(engine.llama.detokenize, first, preset))
    try:
        return _after_budget(engine, prompt_ids, first, preset, budget, options, on_text)
    except KeyboardInterrupt:
        stopped = replace(first, stop_reason=StopReason.INTERRUPTED)
        return BudgetedGeneration(stopped, False, *split_tokens(engine.llama.detokenize, stopped, preset))


def _after_budget(
    engine: Engine,
    prompt_ids: list[int],
    first: Generation,
    preset: TaskPreset,
    budget: ThinkingBudget,
    options: SamplingOptions,
    on_text: Callable[[str], None] | None,
) -> BudgetedGeneration:
    """Go on after the budget ran out: unforced past `</think>`, stop at an answer, else force one."""
    step = after_budget(first.text, preset)
    if step == AfterBudget.GO_ON:
        rest = engine.generate(
            prompt_ids + first.token_ids,
            replace(options, max_tokens=options.max_tokens - first.generated_tokens),
            on_text,
        )
        whole = joined_generation(first, rest, "")
        return BudgetedGeneration(whole, False, *split_tokens(engine.llama.detokenize, whole, preset))
    if step == AfterBudget.STOP:
        done = replace(first, stop_reason=StopReason.BUDGET)
        return BudgetedGeneration(done, False, *split_tokens(engine.llama.detokenize, done, preset))
    cue = answer_cue(first.text, preset)
    if on_text:
        on_text(cue)
    cue_ids = engine.llama.tokenize(cue.encode("utf-8"), add_bos=False, special=True)
    answer = engine.generate(
        prompt_ids + first.token_ids + cue_ids, replace(options, max_tokens=budget.answer_tokens), on_text
    )
    return BudgetedGeneration(
        joined_generation(first, answer, cue), True, first.generated_tokens, answer.generated_tokens
    )


def joined_generation(first: Generation, second: Generation, cue: str) -> Generation:
    """One Generation for a reply generated in two parts with `cue` between them."""
    draft = first.draft.add(second.draft) if first.draft is not None and second.draft is not None else None
    return Generation(
        text=first.text + cue + second.text,
        prompt_tokens=first.prompt_tokens,
        generated_tokens=first.generated_tokens + second.generated_tokens,
        prompt_seconds=first.prompt_seconds,
        generation_seconds=first.generation_seconds + second.prompt_seconds + second.generation_seconds,
        stop_reason=second.stop_reason,
        token_ids=first.token_ids + second.token_ids,
        draft=draft,
    )
