"""The batched engine in its runner process, and `serve --parallel` with the official openai client:
concurrent streams graded as one stream alone, a budget in the batch, usage counts, reasoning apart,
and a runner killed by SIGSEGV (directly and under a real server). A client leaving a stream is in
tests/test_serve_budget.py."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from helpers.arithmetic_task import MATH, SumProblem, converted_pair, problems, render_prompt
from helpers.cli_runner import child_pids
from helpers.serve_process import ServeProcess, get
from mllm_cpu.answers import extract_answer
from mllm_cpu.batched import BatchRequest, Failed, Finished, Piece
from mllm_cpu.core import gguf_keys
from mllm_cpu.engine import Engine, StopReason
from mllm_cpu.model_file import validate_model_file
from mllm_cpu.prompt_format import PromptFormat, load_vocabulary
from mllm_cpu.runner import Runner, RunnerSpec
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages, solve

CTX = 512
PARALLEL = 4
BUDGET, ANSWER_TOKENS = 6, 8
GREEDY = SamplingOptions(temperature=0.0, max_tokens=80)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_pair(tmp_path_factory.mktemp("trained"))["target"]


@pytest.fixture(scope="module")
def prompts(target: Path) -> PromptFormat:
    header = validate_model_file(target).header
    return PromptFormat(header, load_vocabulary(header))


def test_a_runner_killed_mid_stream_fails_the_stream_and_serves_the_next_request(
    target: Path, prompts: PromptFormat
) -> None:
    lines: list[str] = []
    runner = Runner(RunnerSpec(target, parallel=2, n_ctx=CTX, threads=1), "target", lines.append)
    runner.start()
    try:
        first_pid = runner.pid
        assert first_pid is not None and first_pid != os.getpid()
        request = BatchRequest(prompts.tokenize(render_prompt("What is 1 + 2?")), GREEDY)
        endless = BatchRequest(
            request.tokens,
            SamplingOptions(temperature=1.0, max_tokens=CTX - 100, seed=1, logit_bias=_never_stop(target)),
        )
        events = iter(runner.submit(endless))
        for _ in range(3):
            assert isinstance(next(events), Piece)
        os.kill(first_pid, signal.SIGSEGV)
        rest = list(events)
        assert isinstance(rest[-1], Failed)
        assert rest[-1].reason == "the model runner crashed (ended with SIGSEGV); the reply is incomplete"
        finished = list(runner.submit(request))[-1]  # waits while the runner starts again
        assert isinstance(finished, Finished) and finished.generation.stop_reason == StopReason.EOS
        assert "\\boxed{3}" in finished.generation.text
        assert runner.pid != first_pid and runner.restarts == 1
        assert lines[0] == (
            f"the model runner of target (PID {first_pid}) ended with SIGSEGV; "
            "1 request(s) in flight ended with an error; starting it again"
        )
        assert lines[1] == f"the model runner of target is running again (PID {runner.pid})"
    finally:
        runner.close()


@pytest.fixture(scope="module")
def server(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess(
        "--model",
        str(target),
        "--threads",
        "1",
        "--ctx",
        str(CTX),
        "--parallel",
        str(PARALLEL),
        home=tmp_path_factory.mktemp("serve_home"),
    )
    yield process
    assert process.stop() == 0


def _client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def _stream(server: ServeProcess, question: str, **fields: Any) -> dict[str, Any]:
    """One streamed chat reply of the math task: its reasoning, answer, finish reason, usage and report."""
    chunks = _client(server).chat.completions.create(
        model=server_model(server),
        messages=problem_messages(question, MATH),  # type: ignore[arg-type]
        temperature=0,
        max_tokens=80,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"task": "math", **fields},
    )
    reply: dict[str, Any] = {"reasoning": "", "answer": "", "finish": None, "usage": None, "report": None}
    for chunk in chunks:
        for choice in chunk.choices:
            reply["reasoning"] += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            reply["answer"] += choice.delta.content or ""
            reply["finish"] = choice.finish_reason or reply["finish"]
        reply["report"] = (chunk.model_extra or {}).get("x_mllm_cpu") or reply["report"]
        reply["usage"] = chunk.usage or reply["usage"]
    return reply


def server_model(server: ServeProcess) -> str:
    return str(get(f"{server.url}/models")[1]["data"][0]["id"])


def test_eight_streams_decoded_four_at_a_time_grade_as_each_alone(server: ServeProcess, target: Path) -> None:
    items: list[SumProblem] = problems(8, seed=21)
    engine = Engine(target, n_ctx=CTX, threads=1)
    greedy = SamplingOptions(temperature=0.0, max_tokens=80)
    alone = [solve(engine, p.question, "math", greedy, reuse_prefix=False) for p in items]
    budgeted_alone = solve(engine, items[0].question, "math", greedy, reuse_prefix=False, budget=BUDGET,
                           answer_tokens=ANSWER_TOKENS)  # fmt: skip
    assert budgeted_alone.forced

    with ThreadPoolExecutor(len(items) + 1) as pool:
        budgeted = pool.submit(_stream, server, items[0].question, budget=BUDGET, answer_tokens=ANSWER_TOKENS)
        replies = list(pool.map(lambda p: _stream(server, p.question), items))
    identical = 0
    for reply, local in zip(replies, alone, strict=True):
        text = reply["reasoning"] + reply["answer"]
        assert reply["answer"].startswith("\\boxed{")  # the answer apart from the worked steps
        assert extract_answer(text, MATH).text == local.answer  # graded as alone, right or wrong
        assert reply["finish"] == "stop" and reply["usage"].prompt_tokens == local.prompt_tokens
        if text == local.output:
            identical += 1
            assert reply["usage"].completion_tokens == local.tokens
    assert identical >= 6, f"only {identical} of {len(items)} replies match the single stream token for token"
    forced = budgeted.result()
    assert forced["reasoning"] + forced["answer"] == budgeted_alone.output
    assert forced["report"] == {
        "task": "math",
        "budget": BUDGET,
        "forced": True,
        "reasoning_tokens": budgeted_alone.reasoning_tokens,
        "answer_tokens": budgeted_alone.answer_tokens,
    }
    assert forced["usage"].completion_tokens == budgeted_alone.tokens
    assert get(f"{server.base}/health")[1]["parallel"] == PARALLEL


def test_a_runner_killed_under_the_server_ends_its_stream_with_an_error_and_the_next_request_is_served(
    server: ServeProcess, target: Path
) -> None:
    runner = _only_child(server.process.pid)
    chunks = _client(server).chat.completions.create(
        model=server_model(server),
        messages=[{"role": "user", "content": render_prompt("What is 1 + 2?")}],
        temperature=1.0,
        seed=1,
        logit_bias={str(token): -100 for token in _never_stop(target)},
        max_tokens=CTX - 200,
        stream=True,
    )
    with pytest.raises(openai.APIError, match="the model runner crashed \\(ended with SIGSEGV\\)"):
        for number, _ in enumerate(chunks):
            if number == 1:
                os.kill(runner, signal.SIGSEGV)
    reply = _stream(server, "What is 1 + 2?")
    assert reply["answer"] == "\\boxed{3}" and server.process.poll() is None
    assert _only_child(server.process.pid) != runner
    assert any(f"(PID {runner}) ended with SIGSEGV" in line for line in server.stderr)


def _never_stop(model: Path) -> dict[int, float]:
    """A logit bias that keeps the model's end tokens out, so a stream goes on until it is killed."""
    header = validate_model_file(model).header
    ends = {header.get(key) for key in (gguf_keys.EOS_ID, gguf_keys.EOT_ID)} - {None}
    return {int(token): -100.0 for token in ends}


def _only_child(pid: int) -> int:
    """The one child process of `pid` (the model runner)."""
    children = child_pids(pid)
    assert len(children) == 1, children
    return children[0]
