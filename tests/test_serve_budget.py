"""Thinking budgets as a request field of `mllm-cpu serve`, on the tiny model trained to add with worked steps."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from helpers.arithmetic_task import MATH, converted_pair, problems
from helpers.cli_runner import run_cli
from helpers.serve_process import ServeProcess, get, post
from mllm_cpu.convert.pipeline import convert_checkpoint
from mllm_cpu.convert.quant_types import parse_quant_list

BUDGET, ANSWER_TOKENS = 6, 8


@pytest.fixture(scope="module")
def target_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return converted_pair(tmp_path_factory.mktemp("trained"))["target"]


@pytest.fixture(scope="module")
def server(target_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess("--model", str(target_gguf), "--threads", "1", home=tmp_path_factory.mktemp("serve_home"))
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def question() -> str:
    """A sum whose worked trace is longer than the budget."""
    return problems(1, seed=11, terms=(5, 5))[0].question


def _local_solve(model: Path, question: str, *args: str) -> dict[str, Any]:
    options = ("--threads", "1", "--temperature", "0", "--task", "math", "--json")
    result = run_cli("solve", question, "--model", str(model), *options, *args)
    assert result.returncode == 0, result.stderr
    solution: dict[str, Any] = json.loads(result.stdout)
    return solution


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": MATH.system_prompt}, {"role": "user", "content": question}]


def _client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_a_budgeted_request_forces_the_same_answer_as_solve(
    server: ServeProcess, target_gguf: Path, question: str
) -> None:
    local = _local_solve(target_gguf, question, "--budget", str(BUDGET), "--answer-tokens", str(ANSWER_TOKENS))
    assert local["forced"] is True
    client = _client(server)
    fields = {"budget": BUDGET, "answer_tokens": ANSWER_TOKENS}

    reply = client.chat.completions.create(
        model=target_gguf.stem,
        messages=_messages(question),
        temperature=0,
        extra_body=fields,  # type: ignore[arg-type]
    )
    message = reply.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning_content", "")
    assert message.content is not None and message.content.startswith("\\boxed{")  # the answer apart
    text = reasoning + message.content
    assert text == local["output"]
    assert MATH.answer_cue in text
    assert reply.choices[0].finish_reason in ("stop", "length")
    report = reply.model_extra["x_mllm_cpu"] if reply.model_extra else None
    assert report == {
        "task": "math",
        "budget": BUDGET,
        "forced": True,
        "reasoning_tokens": local["reasoning_tokens"],
        "answer_tokens": local["answer_tokens"],
    }
    assert report["reasoning_tokens"] == BUDGET and 1 <= report["answer_tokens"] <= ANSWER_TOKENS
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == local["prompt_tokens"]
    assert reply.usage.completion_tokens == local["tokens"] == BUDGET + report["answer_tokens"]

    stream = client.chat.completions.create(
        model=target_gguf.stem,
        messages=_messages(question),  # type: ignore[arg-type]
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=fields,
    )
    chunks = list(stream)
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    reasoning_pieces = [(delta.model_extra or {}).get("reasoning_content", "") for delta in deltas]
    answer_pieces = [delta.content or "" for delta in deltas]
    assert "".join(reasoning_pieces) == reasoning and "".join(answer_pieces) == message.content
    finished = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == reply.choices[0].finish_reason
    assert finished[0].model_extra and finished[0].model_extra["x_mllm_cpu"] == report
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == local["tokens"]
    assert usage.prompt_tokens == local["prompt_tokens"]


def test_a_budget_above_the_trace_leaves_the_answer_unforced(
    server: ServeProcess, target_gguf: Path, question: str
) -> None:
    local = _local_solve(target_gguf, question, "--budget", "200")
    assert local["forced"] is False
    reply = _client(server).chat.completions.create(
        model=target_gguf.stem,
        messages=_messages(question),  # type: ignore[arg-type]
        temperature=0,
        extra_body={"budget": 200},
    )
    message = reply.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content", "") + (message.content or "") == local["output"]
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model_extra and reply.model_extra["x_mllm_cpu"]["forced"] is False
    assert reply.usage is not None and reply.usage.completion_tokens == local["tokens"]


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        ("chat/completions", {"budget": 0}, "budget must be a positive integer, got 0"),
        ("chat/completions", {"budget": -5}, "budget must be a positive integer, got -5"),
        ("chat/completions", {"budget": "many"}, "budget must be a positive integer, got 'many'"),
        ("chat/completions", {"budget": True}, "budget must be a positive integer, got True"),
        ("chat/completions", {"budget": 8, "answer_tokens": 2.5}, "answer_tokens must be a positive integer"),
        ("chat/completions", {"answer_tokens": 8}, "give a budget (a positive integer) with answer_tokens"),
        ("chat/completions", {"budget": 8, "task": "poetry"}, "unknown task 'poetry'"),
        ("chat/completions", {"budget": 8, "stop": ["\n"]}, "cannot be combined with stop"),
        ("completions", {"budget": 8}, "fields of /v1/chat/completions only"),
    ],
)
def test_a_bad_budget_is_a_400_and_the_server_still_answers(
    server: ServeProcess, question: str, path: str, fields: dict[str, Any], message: str
) -> None:
    request: dict[str, Any] = {"max_tokens": 4, **fields}
    if path == "completions":
        request["prompt"] = question
    else:
        request["messages"] = _messages(question)
    status, body, _ = post(f"{server.url}/{path}", json.dumps(request).encode("utf-8"))
    assert status == 400
    assert message in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    status, body, _ = post(
        f"{server.url}/chat/completions",
        json.dumps({"messages": _messages(question), "max_tokens": 3, "budget": 2}).encode("utf-8"),
    )
    assert status == 200 and body["x_mllm_cpu"]["budget"] == 2
    assert body["usage"]["completion_tokens"] <= 3


def test_a_client_leaving_a_budgeted_stream_does_not_disturb_the_next_request(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A random-weight model writes until the budget, so the client can leave mid-stream."""
    gguf = convert_checkpoint(tiny_checkpoint, parse_quant_list("f32"), tmp_path_factory.mktemp("random"))[
        0
    ].summary.path
    process = ServeProcess(
        "--model", str(gguf), "--threads", "1", "--ctx", "2048", home=tmp_path_factory.mktemp("serve_home")
    )
    try:
        request = {"messages": [{"role": "user", "content": "What is 1 + 2?"}], "temperature": 0, "budget": 1500}
        status, reference, _ = post(f"{process.url}/chat/completions", json.dumps(request).encode("utf-8"))
        assert status == 200 and reference["x_mllm_cpu"]["forced"] is True

        host, port = process.base.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({**request, "stream": True})
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.read(100).startswith(b"data: ")
        connection.close()

        status, again, _ = post(f"{process.url}/chat/completions", json.dumps(request).encode("utf-8"))
        assert status == 200
        assert again["choices"] == reference["choices"] and again["usage"] == reference["usage"]
        deadline = time.monotonic() + 30
        while get(f"{process.base}/health")[1]["requests"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(f"{process.base}/health")[1]["requests"] == 0
    finally:
        assert process.stop() == 0
