"""Hostile requests to a real `mllm-cpu serve` on loopback: each gets a 4xx in OpenAI's error shape,
with no internals, and the server still serves a normal request afterwards."""

from __future__ import annotations

import http.client
import json
import re
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.cli_runner import error_lines, run_cli
from helpers.serve_process import ServeProcess
from mllm_cpu.grammar_check import MAX_GRAMMAR_CHARS
from mllm_cpu.request_checks import MAX_JSON_DEPTH

KEY = "hostile-key-1"
CTX = 256
JSON_TYPE = {"Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HUGE_BODY = 60 << 20
"""The body size that made llama.cpp's tokenizer take 4.3 GB."""
SENT_BEFORE_ANSWER = 16 << 20
"""More than MAX_BODY_BYTES plus what loopback sockets buffer on both sides."""
MEMORY_HEADROOM = 1 << 30
"""Address space the server may add while refusing a huge body (the old path took 4.3 GB)."""
INTERNALS = re.compile(r"Traceback|File \"|\.py\b|site-packages|/usr/|/tmp/|/work/|llama_cpp\.")


@pytest.fixture(scope="module")
def model(tiny_ggufs: dict[str, Path]) -> Path:
    return tiny_ggufs["f16"]


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess(
        "--model",
        str(model),
        "--threads",
        "1",
        "--ctx",
        str(CTX),
        "--api-key",
        KEY,
        home=tmp_path_factory.mktemp("serve_home"),
    )
    yield process
    assert process.stop() == 0


def _address(server: ServeProcess) -> tuple[str, int]:
    host, port = server.base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def call(
    server: ServeProcess, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request with the API key; (status, body)."""
    connection = http.client.HTTPConnection(*_address(server), timeout=120)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def chat_body(**fields: Any) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}).encode()


def completion_body(**fields: Any) -> bytes:
    return json.dumps({"prompt": "The answer is", "max_tokens": 4, **fields}).encode()


def assert_refused(status: int, data: bytes, expected: int, param: str | None = None) -> dict[str, Any]:
    """The status, OpenAI's error shape (exactly message, type, param, code), one line, no internals."""
    assert status == expected, data[:300]
    body = json.loads(data)
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    kinds = {401: "authentication_error"}
    assert error["type"] == kinds.get(expected, "server_error" if expected >= 500 else "invalid_request_error")
    message = error["message"]
    assert isinstance(message, str) and message and "\n" not in message and len(message) <= 400
    assert not INTERNALS.search(message), message
    if param is not None:
        assert error["param"] == param
    return dict(error)


def assert_serving(server: ServeProcess) -> None:
    """The process is alive and answers a normal chat request."""
    assert server.process.poll() is None, "".join(server.stderr)[-2000:]
    status, data = call(server, "POST", CHAT, chat_body(), JSON_TYPE)
    assert status == 200, data[:300]
    choice = json.loads(data)["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["message"]["content"], str)


UNPARSABLE = ["root ::= (", "root ::= foo", 'root ::= root "a"']


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("grammar", UNPARSABLE)
def test_a_grammar_llama_cpp_cannot_parse_is_a_400(server: ServeProcess, path: str, grammar: str) -> None:
    body = chat_body(grammar=grammar) if path == CHAT else completion_body(grammar=grammar)
    error = assert_refused(*call(server, "POST", path, body, JSON_TYPE), 400, "grammar")
    assert error["message"].startswith("llama.cpp cannot parse this grammar: ")
    assert error["code"] == "invalid_grammar"
    assert_serving(server)


def test_a_grammar_that_crashes_llama_cpps_parser_crashes_only_the_check(server: ServeProcess) -> None:
    depth = (MAX_GRAMMAR_CHARS - 20) // 2  # the parser recurses once per parenthesis
    grammar = "root ::= " + "(" * depth + '"a"' + ")" * depth
    assert len(grammar) <= MAX_GRAMMAR_CHARS
    error = assert_refused(*call(server, "POST", CHAT, chat_body(grammar=grammar), JSON_TYPE), 400, "grammar")
    assert "SIGSEGV" in error["message"]
    too_long = "root ::= " + '"a" ' * MAX_GRAMMAR_CHARS
    error = assert_refused(*call(server, "POST", CHAT, chat_body(grammar=too_long), JSON_TYPE), 400, "grammar")
    assert str(MAX_GRAMMAR_CHARS) in error["message"]
    assert_serving(server)


@pytest.mark.parametrize("grammar", ["root ::= <[99999999]>", 'root ::= "a" [^\\x00-\\U0010FFFF]'])
def test_a_grammar_that_reaches_a_dead_end_ends_the_reply(server: ServeProcess, grammar: str) -> None:
    """llama.cpp aborts when its grammar sampler accepts a token after no token was allowed."""
    status, data = call(server, "POST", CHAT, chat_body(grammar=grammar, temperature=0, max_tokens=8), JSON_TYPE)
    assert status == 200, data[:300]
    choice = json.loads(data)["choices"][0]
    # bytes the grammar lets through that make no character show as U+FFFD, as solve shows them
    assert choice["finish_reason"] == "stop" and choice["message"]["content"].rstrip("\ufffd") in ("", "a")
    assert_serving(server)


def test_a_valid_grammar_constrains_the_reply(server: ServeProcess) -> None:
    for path, body in (
        (CHAT, chat_body(grammar='root ::= "yes" | "no"', max_tokens=8)),
        (COMPLETIONS, completion_body(grammar='root ::= [0-9]+ "."', max_tokens=8, temperature=0)),
    ):
        status, data = call(server, "POST", path, body, JSON_TYPE)
        assert status == 200, data[:300]
        choice = json.loads(data)["choices"][0]
        text = choice["message"]["content"] if path == CHAT else choice["text"]
        assert re.fullmatch(r"yes|no" if path == CHAT else r"[0-9]+\.?", text), text
    status, data = call(server, "POST", CHAT, chat_body(grammar='root ::= "ab"', stream=True), JSON_TYPE)
    assert status == 200 and data.rstrip().endswith(b"data: [DONE]")
    assert_serving(server)


def test_grammars_made_from_json_schemas_are_checked_too(server: ServeProcess) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_object", "schema": schema}
    status, data = call(server, "POST", CHAT, chat_body(response_format=fmt, max_tokens=12, temperature=0), JSON_TYPE)
    assert status == 200, data[:300]
    assert json.loads(data)["choices"][0]["message"]["content"].startswith("{")
    long_array = {"type": "array", "items": {"type": "string"}, "minItems": 100_000}
    body = chat_body(response_format={"type": "json_object", "schema": long_array})
    error = assert_refused(*call(server, "POST", CHAT, body, JSON_TYPE), 400, "response_format")
    assert str(MAX_GRAMMAR_CHARS) in error["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    choice = {"type": "function", "function": {"name": "f"}}
    status, data = call(server, "POST", CHAT, chat_body(tools=[tool], tool_choice=choice, max_tokens=12), JSON_TYPE)
    assert status == 200, data[:300]
    assert json.loads(data)["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "f"
    assert_serving(server)


def _tokenize(server: ServeProcess, text: str) -> list[int]:
    status, data = call(server, "POST", "/extras/tokenize", json.dumps({"input": text}).encode(), JSON_TYPE)
    assert status == 200, data[:300]
    tokens: list[int] = json.loads(data)["tokens"]
    return tokens


def test_detokenize_takes_only_tokens_of_the_vocabulary(server: ServeProcess) -> None:
    for tokens in ([99999999], [-5], [1, 2**40]):
        body = json.dumps({"tokens": tokens}).encode()
        error = assert_refused(*call(server, "POST", "/extras/detokenize", body, JSON_TYPE), 400, "tokens")
        assert "not in the vocabulary" in error["message"]
    pieces = _tokenize(server, "\u10f4")  # BOS, then the three bytes of the character in two or three tokens
    assert len(pieces) >= 3
    body = json.dumps({"tokens": pieces[-1:]}).encode()  # its last byte alone is no character
    assert_refused(*call(server, "POST", "/extras/detokenize", body, JSON_TYPE), 400, "tokens")
    tokens = _tokenize(server, "hello world")
    status, data = call(server, "POST", "/extras/detokenize", json.dumps({"tokens": tokens}).encode(), JSON_TYPE)
    assert status == 200 and json.loads(data)["text"].endswith("hello world")
    assert_serving(server)


def _send_huge(server: ServeProcess, path: str, *, chunked: bool, size: int = HUGE_BODY) -> tuple[int, bytes]:
    """POST `size` bytes (declared, or in chunks without a length) until the server answers."""
    sock = socket.create_connection(_address(server), timeout=60)
    try:
        length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        sock.sendall(f"{head}Content-Type: application/json\r\n{length}\r\n\r\n".encode())
        piece = b'{"input": "' + b"a" * (64 << 10)
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
        sent, deadline = 0, time.monotonic() + 60
        while sent < size and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        assert sent < SENT_BEFORE_ANSWER, f"{sent} bytes were sent before the server answered"
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 2 or not reply.endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    finally:
        sock.close()
    head_text, _, body = reply.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), body


def _address_space(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_a_huge_body_is_a_413_on_every_route(server: ServeProcess) -> None:
    pid = server.process.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_AS)
    resource.prlimit(pid, resource.RLIMIT_AS, (_address_space(pid) + MEMORY_HEADROOM, hard))
    try:
        for path in ("/extras/tokenize", "/extras/tokenize/count", CHAT, COMPLETIONS):
            for chunked in (False, True):
                assert_refused(*_send_huge(server, path, chunked=chunked), 413)
                assert server.process.poll() is None
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (soft, hard))
    assert_serving(server)


def test_routes_that_are_not_ours_are_not_served(server: ServeProcess) -> None:
    copilot = "/v1/engines/copilot-codex/completions"
    error = assert_refused(*_send_huge(server, copilot, chunked=False, size=10 << 20), 404)
    assert error["code"] == "not_found"
    for method, path, body in (
        ("POST", copilot, completion_body()),
        ("POST", "/v1/embeddings", json.dumps({"input": "a"}).encode()),
        ("GET", "/docs", b""),
        ("GET", "/openapi.json", b""),
    ):
        error = assert_refused(*call(server, method, path, body, JSON_TYPE), 404)
        assert error["code"] == "not_found"
    assert_refused(*call(server, "GET", CHAT), 405)
    status, data = call(server, "GET", "/v1/models")
    assert status == 200 and len(json.loads(data)["data"]) == 1
    assert_serving(server)


def _deep(depth: int) -> bytes:
    return b'{"messages": [{"role": "user", "content": "hi"}], "stop": ' + b"[" * depth + b"]" * depth + b"}"


INVALID: list[tuple[str, str, bytes, dict[str, str], str | None]] = [
    ("no content type", CHAT, chat_body(), {}, None),
    ("text content type", CHAT, chat_body(), {"Content-Type": "text/plain"}, None),
    ("form content type", COMPLETIONS, completion_body(), {"Content-Type": "application/x-www-form-urlencoded"}, None),
    ("unknown role", CHAT, chat_body(messages=[{"role": "wizard", "content": "x"}]), JSON_TYPE, "messages.0.role"),
    ("content not text", CHAT, chat_body(messages=[{"role": "user", "content": [1]}]), JSON_TYPE, "messages.0"),
    ("temperature hot", CHAT, chat_body(temperature="hot"), JSON_TYPE, "temperature"),
    ("temperature huge", CHAT, chat_body(temperature=1e999), JSON_TYPE, None),
    ("temperature NaN", CHAT, chat_body()[:-1] + b', "temperature": NaN}', JSON_TYPE, None),
    ("top_p 5", CHAT, chat_body(top_p=5), JSON_TYPE, "top_p"),
    ("top_p 5 completion", COMPLETIONS, completion_body(top_p=5), JSON_TYPE, "top_p"),
    ("stop 5", CHAT, chat_body(stop=5), JSON_TYPE, "stop"),
    ("stop 5 completion", COMPLETIONS, completion_body(stop=5), JSON_TYPE, "stop"),
    ("logit_bias word key", CHAT, chat_body(logit_bias={"abc": 1}), JSON_TYPE, "logit_bias"),
    ("logit_bias negative key", CHAT, chat_body(logit_bias={"-5": 1}), JSON_TYPE, "logit_bias"),
    ("logit_bias key past vocab", COMPLETIONS, completion_body(logit_bias={"99999999": 1}), JSON_TYPE, "logit_bias"),
    ("logit_bias value", CHAT, chat_body(logit_bias={"5": "x"}), JSON_TYPE, "logit_bias"),
    ("logit_bias huge value", CHAT, chat_body(logit_bias={"5": 1e308}), JSON_TYPE, "logit_bias"),
    ("chat logprobs", CHAT, chat_body(logprobs=True, top_logprobs=2), JSON_TYPE, "logprobs"),
    ("completion logprobs", COMPLETIONS, completion_body(logprobs=2), JSON_TYPE, "logprobs"),
    ("tool_choice word", CHAT, chat_body(tool_choice="sometimes"), JSON_TYPE, "tool_choice"),
    (
        "tool_choice unknown tool",
        CHAT,
        chat_body(tool_choice={"type": "function", "function": {"name": "nope"}}),
        JSON_TYPE,
        "tool_choice",
    ),
    ("function_call unknown", CHAT, chat_body(function_call={"name": "nope"}), JSON_TYPE, "function_call"),
    ("100k-deep JSON", CHAT, _deep(100_000), JSON_TYPE, None),
    ("just too deep JSON", CHAT, _deep(MAX_JSON_DEPTH), JSON_TYPE, None),
    ("lone surrogate", CHAT, chat_body(messages=[{"role": "user", "content": "\ud800"}]), JSON_TYPE, None),
    ("not JSON", CHAT, b'{"messages": [', JSON_TYPE, None),
    ("not an object", COMPLETIONS, b"[1, 2]", JSON_TYPE, None),
    ("not UTF-8", COMPLETIONS, b'{"prompt": "\xff"}', JSON_TYPE, None),
    ("tokenize a number", "/extras/tokenize", b'{"input": 5}', JSON_TYPE, "input"),
    ("detokenize words", "/extras/detokenize", b'{"tokens": ["a"]}', JSON_TYPE, "tokens.0"),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "param"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_requests_are_400_without_internals(
    server: ServeProcess, path: str, body: bytes, headers: dict[str, str], param: str | None
) -> None:
    assert_refused(*call(server, "POST", path, body, headers), 400, param)
    assert_serving(server)


def test_refused_requests_still_need_the_key(server: ServeProcess) -> None:
    connection = http.client.HTTPConnection(*_address(server), timeout=30)
    connection.request("POST", "/v1/engines/copilot-codex/completions", body=completion_body(), headers=JSON_TYPE)
    response = connection.getresponse()
    assert_refused(response.status, response.read(), 401)
    connection.close()
    assert_serving(server)


@pytest.mark.parametrize("key", ["cl\u00e9-secr\u00e8te", "two words", "tab\tkey"])
def test_an_api_key_no_client_can_send_is_refused_at_start(model: Path, key: str) -> None:
    result = run_cli("serve", "--model", str(model), "--port", "0", "--api-key", key)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: --api-key must be printable ASCII"), result.stderr
    assert key not in result.stderr
