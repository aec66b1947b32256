"""The batched engine on the tiny trained model: the single-stream engine's answers, per-sequence settings,
thinking budgets, seeds, cancellation and the shared prompt prefix, with many sequences in one context."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.arithmetic_task import EOT, MATH, converted_pair, problems, render_prompt
from mllm_cpu.answers import extract_answer
from mllm_cpu.batched import BatchedEngine, BatchRequest, Failed, Finished, Piece, Stream
from mllm_cpu.budget import ThinkingBudget, generate_with_budget
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Engine, PromptTooLong, StopReason
from mllm_cpu.sampling import SamplingOptions

CTX = 512
PARALLEL = 4
GREEDY = SamplingOptions(temperature=0.0, max_tokens=80)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_pair(tmp_path_factory.mktemp("trained"))["target"]


@pytest.fixture(scope="module")
def single(target: Path) -> Engine:
    return Engine(target, n_ctx=CTX, threads=1)


@pytest.fixture(scope="module")
def batched(target: Path) -> Iterator[BatchedEngine]:
    engine = BatchedEngine(target, parallel=PARALLEL, n_ctx=CTX, threads=1)
    yield engine
    engine.close()


def _finish(stream: Stream) -> tuple[Finished, list[Piece]]:
    """The stream's pieces and its Finished event (a Failed one fails the test)."""
    pieces: list[Piece] = []
    for event in stream:
        if isinstance(event, Piece):
            pieces.append(event)
        elif isinstance(event, Failed):
            raise AssertionError(event.reason)
        else:
            return event, pieces
    raise AssertionError("the stream ended without Finished")


def _eot(engine: Engine) -> int:
    """The tiny tokenizer's end-of-turn token."""
    (token,) = engine.llama.tokenize(EOT.encode(), add_bos=False, special=True)
    return int(token)


def _prompt(engine: BatchedEngine, question: str) -> list[int]:
    return engine.tokenize(render_prompt(question))


def test_greedy_replies_grade_as_the_single_stream_engine_and_mostly_match_token_for_token(
    single: Engine, batched: BatchedEngine
) -> None:
    items = problems(40, seed=7)
    alone = [single.generate(render_prompt(p.question), GREEDY, reuse_prefix=False) for p in items]
    before = batched.decoded_tokens
    streams = [batched.submit(BatchRequest(_prompt(batched, p.question), GREEDY)) for p in items]
    together = [_finish(stream) for stream in streams]
    identical = 0
    for one, (finished, pieces) in zip(alone, together, strict=True):
        generation = finished.generation
        assert extract_answer(generation.text, MATH).text == extract_answer(one.text, MATH).text
        assert "".join(piece.text for piece in pieces) == generation.text
        assert [piece.token for piece in pieces] == generation.token_ids
        assert generation.stop_reason == one.stop_reason
        identical += generation.token_ids == one.token_ids
    assert identical >= 0.9 * len(items), f"{identical} of {len(items)} token-identical"
    # the prompts share the system prompt and the template's header: evaluated once, then copied
    full = sum(f.generation.prompt_tokens + f.generation.generated_tokens for f, _ in together)
    shared = len(items) - 1
    assert batched.decoded_tokens - before <= full - 30 * shared
    assert batched.in_flight == 0


def test_each_sequence_keeps_its_own_limits_bias_and_stop_texts(single: Engine, batched: BatchedEngine) -> None:
    prompt = _prompt(batched, "What is 3 + 1 + 4?")
    seven, eot_id = single.tokenize("7")[-1], _eot(single)
    requests = {
        "plain": BatchRequest(prompt, GREEDY),
        "short": BatchRequest(prompt, replace(GREEDY, max_tokens=3)),
        "biased": BatchRequest(prompt, replace(GREEDY, max_tokens=4, logit_bias={seven: 100.0})),
        "stopped": BatchRequest(prompt, GREEDY, stop_texts=(" = ",)),
        "eot": BatchRequest(prompt, replace(GREEDY, logit_bias={eot_id: 100.0})),
    }
    streams = {name: batched.submit(request) for name, request in requests.items()}
    results = {name: _finish(stream)[0] for name, stream in streams.items()}
    plain = single.generate(prompt, GREEDY, reuse_prefix=False)
    assert results["plain"].generation.token_ids == plain.token_ids
    assert results["plain"].generation.stop_reason == StopReason.EOS
    assert results["short"].generation.token_ids == plain.token_ids[:3]
    assert results["short"].generation.stop_reason == StopReason.LENGTH
    assert results["biased"].generation.text == "7777"
    assert results["stopped"].generation.text == plain.text.split(" = ")[0]
    assert results["stopped"].generation.stop_reason == StopReason.EOS
    eot = results["eot"]
    assert (eot.generation.generated_tokens, eot.generation.stop_reason, eot.stop_token) == (0, StopReason.EOS, eot_id)


@pytest.mark.parametrize("budget", [6, 1000])
def test_a_thinking_budget_in_the_batch_gives_what_generate_with_budget_gives(
    single: Engine, batched: BatchedEngine, budget: int
) -> None:
    question = "What is 2 + 3 + 4 + 1?"
    limits = ThinkingBudget(budget, 12)
    alone = generate_with_budget(single, render_prompt(question), MATH, limits, GREEDY, reuse_prefix=False)
    prompt = _prompt(batched, question)
    budgeted = batched.submit(BatchRequest(prompt, GREEDY, budget=limits, preset=MATH))
    plain = batched.submit(BatchRequest(_prompt(batched, "What is 1 + 1?"), GREEDY))
    finished, pieces = _finish(budgeted)
    assert finished.budgeted is not None
    result = finished.budgeted
    assert result.generation.text == alone.generation.text
    assert "".join(piece.text for piece in pieces) == alone.generation.text  # the cue is streamed too
    assert result.generation.token_ids == alone.generation.token_ids
    assert result.generation.stop_reason == alone.generation.stop_reason
    assert (result.forced, result.reasoning_tokens, result.answer_tokens) == (
        alone.forced,
        alone.reasoning_tokens,
        alone.answer_tokens,
    )
    assert result.forced == (budget == 6)
    alone_plain = single.generate(render_prompt("What is 1 + 1?"), GREEDY, reuse_prefix=False)
    assert _finish(plain)[0].generation.token_ids == alone_plain.token_ids


def test_a_seed_gives_the_same_tokens_for_the_same_arrival_order(single: Engine, batched: BatchedEngine) -> None:
    items = problems(8, seed=3)
    warm = SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, max_tokens=24)

    def run(seed: int) -> list[list[int]]:
        streams = [
            batched.submit(BatchRequest(_prompt(batched, p.question), replace(warm, seed=seed + i)))
            for i, p in enumerate(items)
        ]
        return [_finish(stream)[0].generation.token_ids for stream in streams]

    first = run(11)
    assert run(11) == first
    assert run(12) != first
    # a lone sequence draws exactly what the single-stream engine draws for that seed
    prompt = render_prompt(items[0].question)
    lone = _finish(batched.submit(BatchRequest(batched.tokenize(prompt), replace(warm, seed=5))))[0]
    assert lone.generation.token_ids == single.generate(prompt, replace(warm, seed=5), reuse_prefix=False).token_ids


def test_a_cancelled_sequence_ends_interrupted_and_frees_its_slot(single: Engine, batched: BatchedEngine) -> None:
    endless = SamplingOptions(temperature=0.0, max_tokens=200, logit_bias={_eot(single): -100.0})
    streams = [batched.submit(BatchRequest(_prompt(batched, f"What is {n} + 1?"), endless)) for n in range(1, 6)]
    events = iter(streams[0])
    for _ in range(3):
        assert isinstance(next(events), Piece)
    streams[0].cancel()
    rest = list(events)
    assert isinstance(rest[-1], Finished)
    generation = rest[-1].generation
    assert generation.stop_reason == StopReason.INTERRUPTED
    assert 3 <= generation.generated_tokens < 200
    for stream in streams[1:]:  # the fifth waited for a free slot
        finished = _finish(stream)[0]
        assert finished.generation.generated_tokens == 200
    assert batched.in_flight == 0


def test_bad_requests_are_refused_before_they_are_queued(target: Path, batched: BatchedEngine) -> None:
    with pytest.raises(PromptTooLong, match=f"the context holds {CTX}"):
        batched.submit(BatchRequest([1] * CTX, GREEDY))
    with pytest.raises(InputError, match="outside the vocabulary"):
        batched.submit(BatchRequest([1, 2], replace(GREEDY, logit_bias={10**7: 1.0})))
    with pytest.raises(InputError, match="--parallel must be between 1 and 64"):
        BatchedEngine(target, parallel=0)
