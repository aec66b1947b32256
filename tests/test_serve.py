"""`mllm-cpu serve` as a real process on loopback, used through the official `openai` client."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from helpers.cli_runner import error_lines, run_cli
from helpers.serve_process import ServeProcess, get, post, post_declaring
from mllm_cpu.engine import Engine
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages, solve
from mllm_cpu.tasks import get_preset

KEY = "test-key-1"
CTX = 256
QUEUE = 8
PARALLEL = 4
PROBLEM = "What is 7 times 6?"


@pytest.fixture(scope="module")
def model(tiny_ggufs: dict[str, Path]) -> Path:
    return tiny_ggufs["q8_0"]


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server for the module: API key, a small context and a queue of 8."""
    process = ServeProcess(
        "--model",
        str(model),
        "--threads",
        "1",
        "--ctx",
        str(CTX),
        "--queue",
        str(QUEUE),
        "--parallel",
        str(PARALLEL),
        "--api-key",
        KEY,
        home=tmp_path_factory.mktemp("serve_home"),
    )
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def engine(model: Path) -> Engine:
    return Engine(model, n_ctx=CTX, threads=1)


def _client(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def _printable_only(engine: Engine) -> dict[int, float]:
    """A logit bias that bans tokens whose text is not printable UTF-8 on its own.

    Random weights write many byte tokens; solve shows a byte that does not decode as U+FFFD,
    llama-cpp-python's server drops it. Banning them on both sides compares whole texts.
    """
    banned: dict[int, float] = {}
    for token in range(engine.model.n_vocab):
        try:
            printable = engine.llama.detokenize([token]).decode("utf-8").isprintable()
        except UnicodeDecodeError:
            printable = False
        if not printable:
            banned[token] = -100.0
    return banned


def test_greedy_chat_stream_and_completion_equal_local_generation(server: ServeProcess, engine: Engine) -> None:
    bias = _printable_only(engine)
    options = SamplingOptions(temperature=0.0, max_tokens=24, logit_bias=bias)
    local = solve(engine, PROBLEM, "math", options, reuse_prefix=False)
    assert local.output.strip()
    client = _client(server)
    name = engine.model.path.stem
    assert [m.id for m in client.models.list().data] == [name]
    request = {
        "model": name,
        "messages": problem_messages(PROBLEM, get_preset("math")),
        "temperature": 0.0,
        "max_tokens": 24,
        "logit_bias": {str(token): value for token, value in bias.items()},
    }
    reply = client.chat.completions.create(**request)  # type: ignore[call-overload]
    assert reply.choices[0].message.content == local.output
    assert reply.usage.completion_tokens == local.tokens
    assert reply.usage.prompt_tokens == local.prompt_tokens
    assert reply.choices[0].finish_reason == ("length" if local.stop_reason == "length" else "stop")

    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == local.output
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == local.tokens

    text = engine.generate("The answer is", options, reuse_prefix=False)
    completion = client.completions.create(
        model=name, prompt="The answer is", temperature=0.0, max_tokens=24, logit_bias=request["logit_bias"]
    )
    assert completion.choices[0].text == text.text
    assert completion.usage.completion_tokens == text.generated_tokens


def test_bad_requests_get_the_right_4xx_and_the_server_still_answers(server: ServeProcess) -> None:
    chat = f"{server.url}/chat/completions"
    message = [{"role": "user", "content": "hi"}]

    def body(**fields: object) -> bytes:
        return json.dumps({"messages": message, "max_tokens": 4, **fields}).encode()

    status, data, _ = post(chat, b'{"messages": [', KEY)
    assert status == 400 and data["error"]["code"] == "invalid_json"
    status, data, _ = post(chat, body(model="no-such-model"), KEY)
    assert status == 404 and "no-such-model" in data["error"]["message"]
    status, data, _ = post(chat, body(messages=[{"role": "user", "content": "seven " * 2 * CTX}]), KEY)
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    assert f"holds {CTX}" in data["error"]["message"]
    status, data, _ = post(chat, body(max_tokens=-1), KEY)
    assert status == 400 and "max_tokens" in data["error"]["message"]
    status, data = post_declaring(chat, 2 << 20, KEY)
    assert status == 413 and data["error"]["code"] == "body_too_large"
    assert post(chat, body(), None)[0] == 401
    assert post(chat, body(), "wrong-key")[0] == 401
    assert get(f"{server.url}/models")[0] == 401
    assert get(f"{server.base}/health") == (
        200,
        {"status": "ok", "models": [server_model(server)], "requests": 0, "queue": QUEUE, "parallel": PARALLEL},
    )
    status, data, _ = post(chat, body(), KEY)
    assert status == 200 and data["choices"][0]["finish_reason"] in ("length", "stop")


def server_model(server: ServeProcess) -> str:
    """The one model a server lists."""
    return str(get(f"{server.url}/models", KEY)[1]["data"][0]["id"])


def test_eight_concurrent_clients_all_get_complete_answers(server: ServeProcess) -> None:
    client = _client(server)
    name = server_model(server)

    def ask(number: int) -> tuple[str, int, str | None]:
        chunks = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": f"Count to {number}."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, tokens, finish = "", 0, None
        for chunk in chunks:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return text, tokens, finish

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert all(finish in ("length", "stop") and 1 <= tokens <= 16 for _, tokens, finish in answers)
    assert all(text for text, _, _ in answers)


def test_requests_beyond_the_queue_get_503_with_retry_after(server: ServeProcess) -> None:
    chat = f"{server.url}/chat/completions"
    body = json.dumps({"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 64}).encode()
    start = threading.Barrier(QUEUE + 6)

    def ask(_: int) -> tuple[int, str | None]:
        start.wait()
        status, _, headers = post(chat, body, KEY)
        return status, headers.get("Retry-After")

    with ThreadPoolExecutor(QUEUE + 6) as pool:
        results = list(pool.map(ask, range(QUEUE + 6)))
    statuses = sorted(status for status, _ in results)
    assert set(statuses) == {200, 503} and statuses.count(200) >= QUEUE
    assert all(retry == "5" for status, retry in results if status == 503)
    assert post(chat, body, KEY)[0] == 200


def test_sigterm_ends_the_stream_in_flight_and_exits_zero(model: Path, tmp_path: Path) -> None:
    process = ServeProcess("--model", str(model), "--threads", "1", home=tmp_path)
    client = openai.OpenAI(base_url=process.url, api_key="none", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model=model.stem, messages=[{"role": "user", "content": "Write a long story."}], max_tokens=3000, stream=True
    )
    finish = None
    for number, chunk in enumerate(stream):
        if number == 2:
            process.process.send_signal(signal.SIGTERM)
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
    assert finish is not None
    assert process.stop() == 0


def test_other_addresses_need_an_api_key(model: Path) -> None:
    result = run_cli("serve", "--model", str(model), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "--api-key" in result.stderr


def _printable_ascii(text: str) -> str:
    """The printable ASCII of a text (solve shows undecodable bytes as U+FFFD, the server drops them)."""
    return "".join(c for c in text if " " <= c <= "~" or c == "\n")


def test_solve_and_chat_use_the_server(server: ServeProcess, engine: Engine, model: Path) -> None:
    local = solve(engine, PROBLEM, "math", SamplingOptions(temperature=0.0, max_tokens=16), reuse_prefix=False)
    remote = run_cli(
        "solve",
        PROBLEM,
        "--endpoint",
        server.url,
        "--api-key",
        KEY,
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        "--json",
    )
    assert remote.returncode == 0, remote.stderr
    theirs = json.loads(remote.stdout)
    assert (theirs["tokens"], theirs["prompt_tokens"], theirs["stop_reason"]) == (
        local.tokens,
        local.prompt_tokens,
        str(local.stop_reason),
    )
    assert _printable_ascii(theirs["output"]) == _printable_ascii(local.output)
    assert theirs["model"] == {
        "model": model.stem,
        "size_bytes": None,
        "fingerprint": None,
        "endpoint": server.url,
        "family": None,
    }

    chat = run_cli("chat", "--endpoint", server.url, "--api-key", KEY, "--max-tokens", "8", input_text="Hi\n/stats\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() and "last reply: " in chat.stderr

    refused = run_cli("solve", PROBLEM, "--endpoint", server.url, "--api-key", "wrong", "--model", model.stem)
    assert refused.returncode == 2
    assert error_lines(refused) == [error_lines(refused)[-1]] and "HTTP 401" in refused.stderr
