"""The endpoint client against a misbehaving OpenAI-compatible server (a stand-in on loopback).

Each case is what a broken or hostile server can do: a stream that never ends, chunks of the
wrong shape, error text with terminal escapes, a reply that is not an event stream. The client
must stop at --max-tokens and at its time limit, in bounded memory, and turn the rest into one
`error:` line (exit 2).
"""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from helpers.cli_runner import MLLM_CPU, error_lines
from mllm_cpu.core.errors import InputError
from mllm_cpu.endpoint import SERVER_TEXT_CHARS, EndpointBackend, EndpointError, server_text
from mllm_cpu.engine import StopReason
from mllm_cpu.sampling import SamplingOptions

MODEL = "stand-in"
MAX_EVENTS = 200_000
"""The most events the stand-in sends on one stream (a client that never stops ends the test, not the machine)."""
CHILD_MEMORY = 1 << 30
"""Address space for the CLI in a child: the endless stream grew past 1.2 GB before it was bounded."""


def _chunk(content: Any = None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice], **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    reply: Callable[[_Handler], None]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]}).encode()
        self.send(200, "application/json", body)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.requests += 1  # type: ignore[attr-defined]
        type(self).reply(self)

    def send(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()

    def stream(self, events: Iterator[bytes], pause: float = 0.0) -> None:
        """Write events until they run out or the client hangs up (at most MAX_EVENTS)."""
        self.start_stream()
        self.close_connection = True
        try:
            for _, event in zip(range(MAX_EVENTS), events, strict=False):
                self.wfile.write(event)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            self.server.hung_up += 1  # type: ignore[attr-defined]


def _forever(event: bytes) -> Iterator[bytes]:
    while True:
        yield event


class StandInServer:
    """An OpenAI-compatible stand-in on 127.0.0.1 whose chat replies are `reply(handler)`."""

    def __init__(self, reply: Callable[[_Handler], None]) -> None:
        handler = type("_Bound", (_Handler,), {"reply": staticmethod(reply)})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.requests = 0  # type: ignore[attr-defined]
        self.server.hung_up = 0  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        return int(self.server.requests)  # type: ignore[attr-defined]

    @property
    def hung_up(self) -> int:
        return int(self.server.hung_up)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@contextmanager
def serving(reply: Callable[[_Handler], None]) -> Iterator[StandInServer]:
    """A stand-in answering chat requests with `reply`, stopped on leaving the block."""
    server = StandInServer(reply)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def endless() -> Iterator[StandInServer]:
    """Text chunks forever, whatever max_tokens says."""
    with serving(lambda handler: handler.stream(_forever(_chunk("x")))) as server:
        yield server


def _limited_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def _solve(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`mllm-cpu solve --endpoint URL` in a child process with its address space limited."""
    return subprocess.run(
        [MLLM_CPU, "solve", "--endpoint", url, "What is 1 plus 2?", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limited_child,
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a failed run (solve first names the model on stderr)."""
    assert result.returncode == 2, result.stdout
    lines = error_lines(result)
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], lines
    assert len(lines) <= 2 and "Traceback" not in result.stderr, lines
    return lines[-1]


def test_a_stream_that_never_ends_stops_at_max_tokens(endless: StandInServer) -> None:
    start = time.monotonic()
    result = _solve(endless.url, "--max-tokens", "10")
    assert time.monotonic() - start < 60
    assert result.returncode == 0, result.stderr
    assert "x" * 10 in result.stdout and "x" * 11 not in result.stdout
    assert "Traceback" not in result.stderr
    deadline = time.monotonic() + 10
    while endless.hung_up < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert endless.hung_up == 1, "the client did not close the connection"


def test_the_stream_stops_at_max_tokens_in_the_library(endless: StandInServer) -> None:
    backend = EndpointBackend([endless.url])
    pieces: list[str] = []
    generation = backend.chat([{"role": "user", "content": "hi"}], SamplingOptions(max_tokens=25), pieces.append)
    assert generation.text == "x" * 25 and pieces == ["x"] * 25
    assert generation.generated_tokens == 25
    assert generation.stop_reason == StopReason.LENGTH


def test_a_stream_of_empty_events_stops_at_the_time_limit() -> None:
    keep_alive = b": ping\n\n"
    with serving(lambda handler: handler.stream(_forever(keep_alive), pause=0.01)) as server:
        backend = EndpointBackend([server.url], reply_seconds=1.5)
        start = time.monotonic()
        with pytest.raises(EndpointError, match=r"took longer than 1\.5 s \(the limit\)"):
            backend.chat([{"role": "user", "content": "hi"}], SamplingOptions(max_tokens=100_000))
        assert time.monotonic() - start < 10
        assert server.requests == 1


def test_one_endless_event_is_refused_at_its_size_limit() -> None:
    def one_line_forever(handler: _Handler) -> None:
        handler.stream(itertools.chain([b'data: {"choices": [{"delta": {"content": "'], _forever(b"y" * 4096)))

    with serving(one_line_forever) as server:
        result = _solve(server.url, "--max-tokens", "10")
        assert _error_line(result) == f"error: {server.url}: a streamed event is larger than 1 MiB"


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([_chunk(5)], "a streamed delta.content is an integer, not text"),
        ([_chunk(["a"])], "a streamed delta.content is a list, not text"),
        ([b"data: [1, 2]\n\n"], "a streamed chunk is a list, not a JSON object"),
        ([b"data: {not json\n\n"], "a streamed chunk is not JSON: {not json"),
        ([b'data: {"choices": 7}\n\n'], "a streamed chunk's choices are an integer, not a list of objects"),
        ([_chunk("a"), _chunk(None, "stop", usage={"prompt_tokens": "9", "completion_tokens": 1})], "usage"),
        ([b'data: {"error": {"message": "\\u001b[31mmodel\\nexploded\\u001b[0m"}}\n\n'], "model exploded"),
        ([b": only comments\n\n"], "the reply stream ended without a chunk"),
        ([_chunk("a"), _chunk("b")], "the reply stream ended before the reply did"),
    ],
)
def test_chunks_of_the_wrong_shape_are_one_error_line(events: list[bytes], problem: str) -> None:
    with serving(lambda handler: handler.stream(iter(events))) as server:
        line = _error_line(_solve(server.url, "--max-tokens", "10"))
        assert line.startswith(f"error: {server.url}: ") and problem in line, line


def test_a_good_stream_still_works() -> None:
    events = [
        _chunk("Three"),
        _chunk("."),
        _chunk(None, "stop"),
        b'data: {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    with serving(lambda handler: handler.stream(iter(events))) as server:
        generation = EndpointBackend([server.url]).chat([{"role": "user", "content": "1+2?"}], SamplingOptions())
        assert generation.text == "Three."
        assert (generation.prompt_tokens, generation.generated_tokens) == (12, 2)
        assert generation.stop_reason == StopReason.EOS


def test_events_split_anywhere_are_joined_again() -> None:
    """Event boundaries fall anywhere in the transport's chunks, CRLF included."""
    stream = (_chunk("ab") + _chunk("cd", "stop")).replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"

    def byte_by_byte(handler: _Handler) -> None:
        handler.stream(iter(bytes([b]) for b in stream))

    with serving(byte_by_byte) as server:
        generation = EndpointBackend([server.url]).chat([{"role": "user", "content": "hi"}], SamplingOptions())
        assert generation.text == "abcd"


def test_a_servers_error_text_is_one_safe_line() -> None:
    message = "\x1b[31mcontext\nfull\x1b[0m\r\x07 " + "x" * 5000
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    with serving(lambda handler: handler.send(400, "application/json", body)) as server:
        result = _solve(server.url, "--max-tokens", "10")
        line = _error_line(result)
        assert line.startswith(f"error: {server.url}: HTTP 400: context full xxx") and line.endswith("…"), line
        assert not any(c in result.stderr for c in "\x1b\x07\r")
        assert len(line) < SERVER_TEXT_CHARS + 100


def test_server_text_drops_escapes_and_control_characters() -> None:
    assert server_text("\x1b]0;title\x07a\x1b[1;31mb\x1b[0m\tc\n\nd\u202ee\x00") == "ab c d e"
    assert server_text("y" * 1000, 10) == "y" * 9 + "…"


def test_a_reply_that_is_not_an_event_stream_is_an_error() -> None:
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "3"}, "finish_reason": "stop"}],
    }
    body = json.dumps(completion).encode()
    with serving(lambda handler: handler.send(200, "application/json", body)) as server:
        result = _solve(server.url, "--max-tokens", "10")
        line = _error_line(result)
        assert line.startswith(
            f"error: {server.url}: the reply is application/json, not an event stream (text/event-stream): "
        ), line
        assert '"content": "3"' in line and result.stdout.strip() == ""


def test_a_model_list_of_the_wrong_shape_is_one_line() -> None:
    def models_with_numbers(handler: _Handler) -> None:
        raise AssertionError("no chat request is expected")

    class NumberModels(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            self.send(200, "application/json", json.dumps({"object": "list", "data": [{"id": 7}]}).encode())

    server = StandInServer(models_with_numbers)
    server.server.RequestHandlerClass = type("_Bound", (NumberModels,), {"reply": staticmethod(models_with_numbers)})
    try:
        with pytest.raises(InputError, match="the server's model list is not a list of names"):
            EndpointBackend([server.url])
    finally:
        server.stop()
