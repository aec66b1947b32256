"""A synthetic arithmetic task with worked steps, and tiny models trained on it.

A problem asks for the sum of a few small numbers; the worked solution writes one line per
addition, so the trace grows with the number of terms, then the math preset's answer cue
and the boxed sum. Problems and solutions are rendered in the runtime's chat format (math
system prompt, the tiny tokenizer's Llama 3 chat template) and end with `<|eot_id|>`.
A target and a smaller draft model are trained on the same data, so they mostly agree.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import jinja2

from helpers.checkpoints import LLAMA3_CHAT_TEMPLATE, TinyShape
from helpers.trained_models import Example, trained_checkpoint
from mllm_cpu.tasks import get_preset

MATH = get_preset("math")
EOT = "<|eot_id|>"

TARGET_SHAPE = TinyShape(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
)
DRAFT_SHAPE = TinyShape(
    hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1
)
TRAINING_STEPS = {"target": 250, "draft": 250}
LEARNING_RATE = 1e-2
MIN_TERMS, MAX_TERMS = 2, 5
LOW, HIGH = 1, 5


@dataclass(frozen=True)
class SumProblem:
    """One problem: the numbers to add."""

    terms: tuple[int, ...]

    @property
    def question(self) -> str:
        return f"What is {' + '.join(map(str, self.terms))}?"

    @property
    def answer(self) -> int:
        return sum(self.terms)

    def steps(self) -> list[str]:
        """One line per addition: `running + term = new running`."""
        lines, total = [], self.terms[0]
        for term in self.terms[1:]:
            lines.append(f"{total} + {term} = {total + term}")
            total += term
        return lines

    def completion(self) -> str:
        """The worked solution the models are trained to write, ending with the end-of-turn token."""
        return "\n".join(self.steps()) + MATH.answer_cue + f"{self.answer}}}{EOT}"


def render_prompt(question: str) -> str:
    """The prompt the runtime builds for `question` under the math preset."""
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(LLAMA3_CHAT_TEMPLATE)
    messages = [{"role": "system", "content": MATH.system_prompt}, {"role": "user", "content": question}]
    return template.render(messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=True)


def problems(count: int, seed: int, terms: tuple[int, int] = (MIN_TERMS, MAX_TERMS)) -> list[SumProblem]:
    """`count` seeded random problems with a number of terms in the inclusive range `terms`."""
    rng = random.Random(seed)
    return [SumProblem(tuple(rng.randint(LOW, HIGH) for _ in range(rng.randint(*terms)))) for _ in range(count)]


def training_examples() -> list[Example]:
    """(prompt, completion) pairs of the training set."""
    return [(render_prompt(p.question), p.completion()) for p in problems(2000, seed=1)]


@functools.cache
def trained_pair() -> dict[str, Path]:
    """Checkpoint folders of the trained target and draft models."""
    examples = training_examples()
    return {
        role: trained_checkpoint(f"sum-{role}", shape, examples, steps=TRAINING_STEPS[role], lr=LEARNING_RATE)
        for role, shape in (("target", TARGET_SHAPE), ("draft", DRAFT_SHAPE))
    }


def write_problems(path: Path, items: list[SumProblem]) -> Path:
    """A GSM8K-style JSONL problems file (question, answer `#### N`)."""
    path.write_text(
        "".join(json.dumps({"question": p.question, "answer": f"#### {p.answer}"}) + "\n" for p in items),
        encoding="utf-8",
    )
    return path


def converted_pair(outdir: Path) -> dict[str, Path]:
    """The trained target and draft converted to F32 GGUF files in `outdir`."""
    from mllm_cpu.convert.pipeline import convert_checkpoint
    from mllm_cpu.convert.quant_types import parse_quant_list

    return {
        role: convert_checkpoint(folder, parse_quant_list("f32"), outdir / role)[0].summary.path
        for role, folder in trained_pair().items()
    }
