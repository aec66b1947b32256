"""The batched engine in its runner process, and `serve --parallel` with the official openai client:
concurrent streams, a client leaving, budgets in the batch, usage counts, and a runner killed by SIGSEGV."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from helpers.arithmetic_task import converted_pair, render_prompt
from mllm_cpu.batched import BatchRequest, Failed, Finished, Piece
from mllm_cpu.engine import StopReason
from mllm_cpu.model_file import validate_model_file
from mllm_cpu.prompt_format import PromptFormat, load_vocabulary
from mllm_cpu.runner import Runner, RunnerSpec
from mllm_cpu.sampling import SamplingOptions

CTX = 512
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
        endless = BatchRequest(request.tokens, SamplingOptions(temperature=1.0, max_tokens=CTX - 100, seed=1))
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
