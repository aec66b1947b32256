"""Prompt processing (pp), generation (tg) and time to first token, as llama-bench defines them.

Followed from llama.cpp's tools/llama-bench/llama-bench.cpp (the sources llama-cpp-python
vendors):

- a fresh context per test with n_ctx = n_prompt + n_gen + n_depth, F16 KV cache, flash
  attention as asked ("auto" by default), the given n_batch/n_ubatch and threads
  (llama-bench's `to_llama_cparams`);
- pp N: N random tokens (the first is BOS when the vocabulary adds one) decoded in chunks of
  n_batch from an empty cache, logits only for the last token of each chunk (`test_prompt`);
- tg N: N tokens decoded one at a time, BOS then random tokens, each followed by
  llama_synchronize (`test_gen`);
- warm-up: one full prompt run for pp, one generated token for tg, not timed;
- each repetition starts with llama_memory_clear, then (with a depth, `-d`) decodes n_depth
  random tokens untimed, so the test runs after that much context ("tg128 @ d512"); a sample
  is the time of the test itself;
- t/s of a sample = tokens / seconds; the result is the mean of the per-sample t/s and their
  sample standard deviation (n - 1), as llama-bench's `avg_ts` / `stdev_ts`.

Only the llama_decode (and llama_synchronize) calls are timed: batches are filled before
the clock starts, so Python adds nothing to the numbers.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from mllm_cpu.core.errors import InputError
from mllm_cpu.prompt_format import PromptFormat
from mllm_cpu.solver import problem_messages
from mllm_cpu.tasks import get_preset

from .llama_session import (
    DEFAULT_BATCH,
    DEFAULT_FLASH_ATTN,
    DEFAULT_UBATCH,
    FLASH_ATTN_TYPES,
    ContextSettings,
    LoadedModel,
    OpenContext,
    decode,
    fill_batch,
    logits_argmax,
    open_context,
    perf_counts,
    token_batch,
)

CHAT_PROBLEM = (
    "A train covers 120 km in 1.5 hours, then 80 km in 1 hour. What is its average speed over the whole trip, in km/h?"
)
"""The question of the time-to-first-token test (asked with the math task's system prompt)."""


@dataclass(frozen=True)
class SpeedTest:
    """One llama-bench test: pp (n_gen == 0) or tg (n_prompt == 0), after n_depth tokens of context."""

    n_prompt: int
    n_gen: int
    threads: int
    n_batch: int = DEFAULT_BATCH
    n_ubatch: int = DEFAULT_UBATCH
    n_depth: int = 0
    flash_attn: str = DEFAULT_FLASH_ATTN

    def __post_init__(self) -> None:
        if (self.n_prompt > 0) == (self.n_gen > 0):
            raise InputError("a speed test is either a prompt (pp) or a generation (tg) test")
        if self.threads < 1 or self.n_batch < 1 or self.n_ubatch < 1:
            raise InputError("threads, batch and ubatch sizes must be at least 1")
        if self.n_depth < 0:
            raise InputError(f"-d/--n-depth must be at least 0, got {self.n_depth}")
        if self.flash_attn not in FLASH_ATTN_TYPES:
            raise InputError(f"flash attention is one of {', '.join(FLASH_ATTN_TYPES)}, got {self.flash_attn!r}")

    @property
    def kind(self) -> str:
        """ "pp" or "tg"."""
        return "pp" if self.n_prompt else "tg"

    @property
    def name(self) -> str:
        """llama-bench's test label, e.g. "pp512", "tg128" or "tg128 @ d512"."""
        return f"{self.kind}{self.n_tokens}" + (f" @ d{self.n_depth}" if self.n_depth else "")

    @property
    def n_tokens(self) -> int:
        """Tokens processed per repetition."""
        return self.n_prompt + self.n_gen


@dataclass
class SpeedSamples:
    """The timed repetitions of one test, with llama.cpp's own token count for each."""

    test: SpeedTest
    samples_ns: list[int]
    counted_tokens: list[int] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> list[float]:
        """t/s of each repetition."""
        return [1e9 * self.test.n_tokens / ns for ns in self.samples_ns]

    @property
    def mean_ts(self) -> float:
        """Mean of the per-repetition t/s (llama-bench's avg_ts)."""
        return statistics.fmean(self.tokens_per_second) if self.samples_ns else 0.0

    @property
    def stdev_ts(self) -> float:
        """Sample standard deviation of the per-repetition t/s (llama-bench's stdev_ts)."""
        values = self.tokens_per_second
        return statistics.stdev(values) if len(values) > 1 else 0.0


def run_speed_test(
    model: LoadedModel,
    test: SpeedTest,
    repetitions: int,
    warmup: bool = True,
    seed: int = 0,
    on_run: Callable[[], None] | None = None,
) -> SpeedSamples:
    """Run one pp or tg test on a fresh context: warm-up, then `repetitions` timed runs.

    `on_run` is called after the warm-up and after each repetition (for progress bars).
    """
    on_run = on_run or _nothing
    if repetitions < 1:
        raise InputError(f"repetitions must be at least 1, got {repetitions}")
    rng = random.Random(seed)
    settings = ContextSettings(test.n_tokens + test.n_depth, test.threads, test.n_batch, test.n_ubatch, test.flash_attn)
    result = SpeedSamples(test, [])
    with open_context(model, settings) as context:
        _clear(context)
        run = _time_prompt if test.n_prompt else _time_generation
        if warmup:
            if test.n_prompt:
                _time_prompt(context, model, test, rng)
            else:
                _time_generation(context, model, test, rng, n_tokens=1)
            on_run()
        for _ in range(repetitions):
            _clear(context)
            _decode_prompt(context, model, test.n_depth, test.n_batch, rng)
            _reset_perf(context)
            result.samples_ns.append(run(context, model, test, rng))
            prompt_count, generated_count = perf_counts(context)
            # llama.cpp counts what it evaluates between two synchronizations: several tokens
            # as prompt tokens, a single one as a generated token
            result.counted_tokens.append(prompt_count if test.n_prompt > 1 else generated_count)
            on_run()
    return result


def _nothing() -> None:
    pass


def _random_tokens(model: LoadedModel, rng: random.Random, count: int, with_bos: bool) -> list[int]:
    tokens = [rng.randrange(model.n_vocab) for _ in range(count)]
    if with_bos and model.add_bos and tokens:
        tokens[0] = model.bos
    return tokens


def _time_prompt(context: OpenContext, model: LoadedModel, test: SpeedTest, rng: random.Random) -> int:
    """The pp test: n_prompt tokens after whatever the cache holds."""
    return _decode_prompt(context, model, test.n_prompt, test.n_batch, rng)


def _decode_prompt(context: OpenContext, model: LoadedModel, n_tokens: int, n_batch: int, rng: random.Random) -> int:
    """Decode `n_tokens` random tokens (BOS first) in chunks of n_batch after whatever the cache
    holds, as llama-bench's test_prompt; nanoseconds spent in llama.cpp."""
    import llama_cpp

    if n_tokens == 0:
        return 0
    first_pos = llama_cpp.llama_memory_seq_pos_max(context.memory, 0) + 1
    chunks = []
    for start in range(0, n_tokens, n_batch):
        size = min(n_batch, n_tokens - start)
        chunks.append((first_pos + start, _random_tokens(model, rng, size, with_bos=start == 0)))
    with ExitStack() as stack:
        batches = []
        for start, tokens in chunks:
            batch = stack.enter_context(token_batch(len(tokens)))
            fill_batch(batch, tokens, start)
            batches.append(batch)
        elapsed = 0
        for batch in batches:
            begin = time.perf_counter_ns()
            decode(context, batch)
            elapsed += time.perf_counter_ns() - begin
        begin = time.perf_counter_ns()
        llama_cpp.llama_synchronize(context.handle)
        return elapsed + time.perf_counter_ns() - begin


def _time_generation(
    context: OpenContext, model: LoadedModel, test: SpeedTest, rng: random.Random, n_tokens: int | None = None
) -> int:
    """Decode tokens one at a time after whatever the cache holds; nanoseconds in llama.cpp."""
    import llama_cpp

    count = test.n_gen if n_tokens is None else n_tokens
    first_pos = llama_cpp.llama_memory_seq_pos_max(context.memory, 0) + 1
    tokens = _random_tokens(model, rng, count, with_bos=True)
    elapsed = 0
    with token_batch(1) as batch:
        for offset, token in enumerate(tokens):
            fill_batch(batch, [token], first_pos + offset)
            begin = time.perf_counter_ns()
            decode(context, batch)
            llama_cpp.llama_synchronize(context.handle)
            elapsed += time.perf_counter_ns() - begin
    return elapsed


def _clear(context: OpenContext) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(context.memory, False)


def _reset_perf(context: OpenContext) -> None:
    import llama_cpp

    llama_cpp.llama_perf_context_reset(context.handle)


@dataclass
class FirstTokenSamples:
    """Time to first token for a chat prompt: tokenize, decode as one batch, pick greedily."""

    prompt_tokens: int
    samples_ns: list[int]


def prompt_format(model: LoadedModel) -> PromptFormat:
    """The runtime's chat rendering and tokenization (Engine's), over the loaded model's vocabulary."""
    return PromptFormat(model.file.header, model, model.vocab)


def chat_prompt_text(prompts: PromptFormat) -> str:
    """The math task's prompt for a short question, rendered by the file's chat template."""
    return prompts.render(problem_messages(CHAT_PROBLEM, get_preset("math")))


def time_to_first_token(
    model: LoadedModel,
    threads: int,
    n_ctx: int,
    repetitions: int,
    warmup: bool = True,
    on_run: Callable[[], None] | None = None,
) -> FirstTokenSamples:
    """Tokenize the chat prompt, decode it as one batch from an empty cache and pick a token.

    Timed end to end as a user waits for it (the runtime's tokenizer and a greedy pick included), on a
    context of `n_ctx` tokens; each repetition starts from an empty cache.
    """
    import llama_cpp

    on_run = on_run or _nothing
    prompts = prompt_format(model)
    text = chat_prompt_text(prompts)
    n_prompt = len(prompts.tokenize(text))
    n_ctx = max(n_ctx, n_prompt + 1)
    settings = ContextSettings(n_ctx, threads, max(DEFAULT_BATCH, n_prompt), DEFAULT_UBATCH)
    samples: list[int] = []
    with open_context(model, settings) as context, token_batch(n_prompt) as batch:
        for repetition in range(repetitions + (1 if warmup else 0)):
            _clear(context)
            begin = time.perf_counter_ns()
            tokens = prompts.tokenize(text)
            fill_batch(batch, tokens, 0)
            decode(context, batch)
            llama_cpp.llama_synchronize(context.handle)
            logits_argmax(context, len(tokens) - 1, model.n_vocab)
            elapsed = time.perf_counter_ns() - begin
            if repetition or not warmup:
                samples.append(elapsed)
            on_run()
    return FirstTokenSamples(n_prompt, samples)


def speed_tests(
    prompts: Sequence[int],
    gens: Sequence[int],
    threads: Sequence[int],
    batches: Sequence[int],
    ubatches: Sequence[int],
    depths: Sequence[int] = (0,),
    flash_attn: Sequence[str] = (DEFAULT_FLASH_ATTN,),
) -> Iterator[SpeedTest]:
    """Every combination, in llama-bench's order (flash attention, threads, depth), pp tests before tg.

    tg decodes one token at a time, so it runs once per thread count and depth, with the first
    batch sizes.
    """
    for fa in flash_attn:
        for n_threads in threads:
            for n_depth in depths:
                for n_batch in batches:
                    for n_ubatch in ubatches:
                        for n_prompt in prompts:
                            if n_prompt > 0:
                                yield SpeedTest(n_prompt, 0, n_threads, n_batch, n_ubatch, n_depth, fa)
                for n_gen in gens:
                    if n_gen > 0:
                        yield SpeedTest(0, n_gen, n_threads, batches[0], ubatches[0], n_depth, fa)
