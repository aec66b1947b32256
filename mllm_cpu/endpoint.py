"""A remote OpenAI-compatible server (mllm-cpu serve, llama-server, vLLM, Ollama) as a `Backend`.

Replies are streamed from /v1/chat/completions. Several endpoints serving the same model share
the requests in turn; a failed request (refused connection, timeout, 5xx, 401) is tried again,
after a growing pause and on the next endpoint, a bounded number of times before it is reported.

A server is not trusted to behave: the event stream is read here (not by the client library),
with a bound on each event's size, on the text pieces (`max_tokens`) and events, and on the
reply's total time; a reply that is not an event stream, or chunks of the wrong shape, are one
error line; a server's error text is shown on one line, without escape sequences.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from mllm_cpu.backend import ReplyFailed
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.user_files import size_text
from mllm_cpu.core.values import MIB
from mllm_cpu.engine import Generation, StopReason
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.prompt_format import Message
from mllm_cpu.sampling import SamplingOptions

ENDPOINT_ENV = "MLLM_CPU_ENDPOINT"
API_KEY_ENV = "MLLM_CPU_API_KEY"
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5
TIMEOUT_SECONDS = 600.0
"""How long the client waits for the server to connect or send the next bytes."""
REPLY_SECONDS = 3600.0
"""The longest one streamed reply may take (an 8192-token trace at 2.3 tokens/s); past it the stream is closed."""
EVENT_LIMIT = 1 * MIB
"""The largest server-sent event taken (a chunk of one token is a few hundred bytes)."""
EVENTS_PER_TOKEN = 4
"""Events a stream may send per requested token (text, reasoning and empty chunks) before it is cut."""
TRAILING_EVENTS = 8
"""Events read after `max_tokens` pieces of text (for the finish reason and usage) before the stream is closed."""
SERVER_TEXT_CHARS = 300
"""The most characters of a server's error text shown (on one line)."""
_STOP_REASONS = {"length": StopReason.LENGTH, "interrupted": StopReason.INTERRUPTED}
_RETRIED_STATUS = (401, 408, 409, 429)
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
"""Terminal escape sequences: CSI (colours, cursor), OSC (titles, links) and the two-character ones."""


class EndpointError(ReplyFailed):
    """A request an endpoint did not answer, after every attempt; the message names the endpoint."""


def endpoint_url(text: str) -> str:
    """The API base URL for what a user typed: http(s)://host[:port][/v1], trailing slash dropped."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--endpoint {text!r}: expected a URL like http://host:8080/v1")
    return url if parts.path.endswith("/v1") else f"{url}/v1"


def server_text(text: object, limit: int = SERVER_TEXT_CHARS) -> str:
    """Text from a server fit for one line: escape sequences dropped, control characters as spaces,
    whitespace collapsed, at most `limit` characters."""
    shown = _ESCAPE_SEQUENCE.sub("", str(text)[: limit * 8])
    shown = " ".join("".join(c if c.isprintable() else " " for c in shown).split())
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def describe_error(error: Exception) -> str:
    """A one-line description of an openai client error (the server's own text made safe to print)."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        return "cannot connect (is the server running?)"
    if isinstance(error, openai.APIStatusError):
        message: object = error.message
        if isinstance(error.body, dict):
            inner = error.body.get("error", error.body)
            message = inner.get("message", message) if isinstance(inner, dict) else inner
        return f"HTTP {error.status_code}: {server_text(message)}"
    return server_text(error)


def is_retried(error: Exception) -> bool:
    """Whether a failed request may succeed when tried again: no connection, timeout, 5xx, 401, 429."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # timeouts too
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code >= 500 or error.status_code in _RETRIED_STATUS
    return False


@dataclass
class _Endpoint:
    url: str
    client: Any
    failed_at: float = 0.0


class EndpointBackend:
    """One model served by one or more OpenAI-compatible endpoints; thread-safe, for parallel batches."""

    def __init__(
        self,
        urls: list[str],
        api_key: str | None = None,
        model: str | None = None,
        *,
        reply_seconds: float = REPLY_SECONDS,
    ) -> None:
        """`reply_seconds` bounds each streamed reply, end to end."""
        import openai

        self.reply_seconds = reply_seconds

        if not urls:
            raise InputError("no --endpoint given")
        self.endpoints = [
            _Endpoint(
                url, openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=0, timeout=TIMEOUT_SECONDS)
            )
            for url in dict.fromkeys(endpoint_url(url) for url in urls)
        ]
        self._turns = itertools.count()
        self._lock = threading.Lock()
        self.model = self._served_model(model)

    def _served_model(self, model: str | None) -> str:
        """`model` if the endpoints serve it, else the first model they list; checks the address and key."""
        models: list[str] = self._attempt(_served_models)
        if model is not None and model not in models:
            served = server_text(", ".join(models))
            raise EndpointError(f"{self.endpoints[0].url} does not serve {model}; it serves: {served}")
        if not models:
            raise EndpointError(f"{self.endpoints[0].url}: the server lists no models")
        return model or models[0]

    def identity(self) -> ModelIdentity:
        """The served model's name and the endpoint URLs."""
        return ModelIdentity(model=self.model, endpoint=", ".join(e.url for e in self.endpoints))

    def default_options(self) -> SamplingOptions:
        """mllm-cpu's sampling defaults (the server's own apply to what a request leaves out)."""
        return SamplingOptions()

    def chat(
        self,
        messages: list[Message],
        options: SamplingOptions | None = None,
        on_text: Callable[[str], None] | None = None,
        *,
        reuse_prefix: bool = True,
    ) -> Generation:
        """Stream the reply to a conversation. Each request stands alone, so `reuse_prefix` has no effect.

        A request is tried again only while nothing of it was shown through `on_text`.
        """
        options = options or self.default_options()
        shown = False

        def show(text: str) -> None:
            nonlocal shown
            shown = True
            if on_text:
                on_text(text)

        return self._attempt(lambda endpoint: self._stream(endpoint, messages, options, show), lambda: shown)

    def _attempt(self, call: Callable[[_Endpoint], Any], started: Callable[[], bool] = lambda: False) -> Any:
        """`call` on the endpoints in turn, with a growing pause between failed attempts."""
        errors: list[str] = []
        for attempt in range(ATTEMPTS):
            endpoint = self._next_endpoint()
            try:
                return call(endpoint)
            except Exception as error:
                if not is_retried(error):
                    if isinstance(error, InputError):
                        raise
                    raise EndpointError(f"{endpoint.url}: {describe_error(error)}") from None
                errors.append(f"{endpoint.url}: {describe_error(error)}")
                endpoint.failed_at = time.monotonic()
                if started() or attempt == ATTEMPTS - 1:
                    break
                time.sleep(BACKOFF_SECONDS * 2**attempt)
        raise EndpointError(f"{errors[-1]} ({len(errors)} attempts)")

    def _next_endpoint(self) -> _Endpoint:
        """The next endpoint in turn, passing over ones that failed lately while others did not."""
        with self._lock:
            turn = next(self._turns)
        order = [self.endpoints[(turn + i) % len(self.endpoints)] for i in range(len(self.endpoints))]
        return min(order, key=lambda endpoint: endpoint.failed_at)

    def _stream(
        self, endpoint: _Endpoint, messages: list[Message], options: SamplingOptions, on_text: Callable[[str], None]
    ) -> Generation:
        start = time.perf_counter()
        stream = endpoint.client.chat.completions.create(
            model=self.model,
            messages=messages,
            stream=True,
            timeout=min(TIMEOUT_SECONDS, self.reply_seconds),
            **request_options(options),
        )
        reply = _Reply(endpoint.url, options.max_tokens, on_text)
        try:
            for data in _event_data(stream.response, endpoint.url, self.reply_seconds):
                if reply.take(data):
                    break
            reply.check_complete()
        except KeyboardInterrupt:
            reply.finish = "interrupted"
        finally:
            stream.close()
        end = time.perf_counter()
        first_at = reply.first_at or end
        usage = reply.usage
        return Generation(
            text="".join(reply.pieces),
            prompt_tokens=usage[0] if usage else 0,
            generated_tokens=usage[1] if usage else len(reply.pieces),
            prompt_seconds=first_at - start,
            generation_seconds=end - first_at,
            stop_reason=_STOP_REASONS.get(str(reply.finish), StopReason.EOS),
        )


def _served_models(endpoint: _Endpoint) -> list[str]:
    """The model names an endpoint lists; one error line when the list is not what the API says."""
    ids = [getattr(model, "id", None) for model in endpoint.client.models.list()]
    names = [name for name in ids if isinstance(name, str) and name.isprintable() and name]
    if len(names) < len(ids):
        raise EndpointError(f"{endpoint.url}: the server's model list is not a list of names: {server_text(ids)}")
    return names


def _body_start(response: Any) -> str:
    """The first bytes of a reply's body, as text for an error message (empty when they cannot be read)."""
    start = bytearray()
    try:
        for chunk in response.iter_bytes():
            start += chunk
            if len(start) >= SERVER_TEXT_CHARS:
                break
    except Exception:  # the body is only quoted in the error; a failure to read it changes nothing
        return ""
    return start[:SERVER_TEXT_CHARS].decode("utf-8", errors="replace")


def _event_data(response: Any, where: str, seconds: float) -> Iterator[str]:
    """The data of each server-sent event of a streamed reply, read with bounds on size and time.

    Lines end with LF, CRLF or CR; `data:` lines of one event are joined; comments and the other
    fields are skipped. Transport failures become the openai client's errors (so they are retried).
    """
    import openai

    kind = str(response.headers.get("content-type", ""))
    if kind.split(";")[0].strip().lower() != "text/event-stream":
        start = _body_start(response)
        raise EndpointError(
            f"{where}: the reply is {server_text(kind) or 'untyped'}, not an event stream (text/event-stream)"
            + (f": {server_text(start)}" if start else "")
        )
    transport = sys.modules[type(response).__module__.split(".")[0]]  # httpx or httpx2, as the client uses
    deadline = time.monotonic() + seconds
    pending = bytearray()
    data: list[bytes] = []
    try:
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise EndpointError(f"{where}: the reply took longer than {seconds:g} s (the limit); stopped")
            pending += chunk
            held = b"\r" if pending.endswith(b"\r") else b""  # a CR at the end may be the first half of a CRLF
            lines = re.split(rb"\r\n|\r|\n", pending[:-1] if held else pending)
            pending = bytearray(lines.pop() + held)
            for line in lines:
                if not line:
                    if data:
                        yield b"\n".join(data).decode("utf-8", errors="replace")
                        data = []
                elif line.startswith(b"data:"):
                    data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            if len(pending) + sum(len(d) for d in data) > EVENT_LIMIT:
                raise EndpointError(f"{where}: a streamed event is larger than {size_text(EVENT_LIMIT)}")
    except transport.TimeoutException:
        raise openai.APITimeoutError(request=response.request) from None
    except transport.TransportError:
        raise openai.APIConnectionError(request=response.request) from None
    if pending.startswith(b"data:"):
        data.append(bytes(pending[6:] if pending.startswith(b"data: ") else pending[5:]))
    if data:
        yield b"\n".join(data).decode("utf-8", errors="replace")


class _Reply:
    """A streamed reply as its chunks arrive: text pieces, finish reason, usage, and when to stop reading."""

    def __init__(self, where: str, max_tokens: int, on_text: Callable[[str], None]) -> None:
        self.where = where
        self.max_tokens = max_tokens
        self.on_text = on_text
        self.pieces: list[str] = []
        self.first_at: float | None = None
        self.finish: str | None = None
        self.usage: tuple[int, int] | None = None
        self.events = 0
        self.done = False
        self._after_limit = 0

    def fail(self, problem: str) -> EndpointError:
        return EndpointError(f"{self.where}: {problem}")

    def take(self, data: str) -> bool:
        """Take one event's data; True when reading should stop (`[DONE]`, or the bounds reached)."""
        if data.strip() == "[DONE]":
            self.done = True
            return True
        self.events += 1
        texts = self._chunk(data)
        if len(self.pieces) >= self.max_tokens:
            self._after_limit += 1
            if texts or self._after_limit > TRAILING_EVENTS:
                self.finish = "length"  # the server went on past max_tokens: stop reading
                return True
            return False
        for text in texts:
            if self.first_at is None:
                self.first_at = time.perf_counter()
            self.pieces.append(text)
            self.on_text(text)
        if self.events > EVENTS_PER_TOKEN * self.max_tokens + TRAILING_EVENTS:
            self.finish = "length"
            return True
        return False

    def check_complete(self) -> None:
        """One error line for a stream that ended without an event, or before its reply did."""
        if self.events == 0:
            raise self.fail("the reply stream ended without a chunk (is it an OpenAI-compatible server?)")
        if not self.done and self.finish is None:
            raise self.fail("the reply stream ended before the reply did (no finish_reason and no [DONE])")

    def _chunk(self, data: str) -> list[str]:
        """The text pieces of one chunk; its finish reason and usage are kept. Wrong shapes are errors."""
        try:
            chunk = json.loads(data)
        except (json.JSONDecodeError, RecursionError):
            raise self.fail(f"a streamed chunk is not JSON: {server_text(data)}") from None
        if not isinstance(chunk, dict):
            raise self.fail(f"a streamed chunk is {_kind(chunk)}, not a JSON object")
        if chunk.get("error") is not None:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise self.fail(f"the server reported an error: {server_text(message)}")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
            raise self.fail(f"a streamed chunk's choices are {_kind(choices)}, not a list of objects")
        texts = []
        for choice in choices:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise self.fail(f"a streamed delta is {_kind(delta)}, not an object")
            content = delta.get("content")
            if content is not None and not isinstance(content, str):
                raise self.fail(f"a streamed delta.content is {_kind(content)}, not text")
            if content:
                texts.append(content)
            finish = choice.get("finish_reason")
            if finish is not None and not isinstance(finish, str):
                raise self.fail(f"a streamed finish_reason is {_kind(finish)}, not text")
            self.finish = finish or self.finish
        usage = chunk.get("usage")
        if usage is not None:
            prompt, completion = (usage.get(key) if isinstance(usage, dict) else None for key in _USAGE_KEYS)
            if not (_is_count(prompt) and _is_count(completion)):
                raise self.fail(f"a streamed usage is not token counts: {server_text(usage)}")
            self.usage = (prompt, completion)
        return texts


_USAGE_KEYS = ("prompt_tokens", "completion_tokens")
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: Any) -> str:
    """A JSON value's kind for an error: "an integer", "a string", "null"..."""
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def request_options(options: SamplingOptions) -> dict[str, Any]:
    """The request fields for sampling options; top-k, min-p and the repeat penalty only when set.

    Servers differ in the names of the fields outside OpenAI's API (llama.cpp: repeat_penalty,
    vLLM: repetition_penalty); both are sent, and each server ignores the other's. The reply's
    whole text is asked for in `content` (`reasoning_format` "none": mllm-cpu serve and llama-server
    otherwise put the reasoning in `reasoning_content`).
    """
    extra: dict[str, Any] = {"reasoning_format": "none"}
    if options.top_k:
        extra["top_k"] = options.top_k
    if options.min_p:
        extra["min_p"] = options.min_p
    if options.repeat_penalty != 1.0:
        extra["repeat_penalty"] = extra["repetition_penalty"] = options.repeat_penalty
    fields: dict[str, Any] = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "max_tokens": options.max_tokens,
        "stream_options": {"include_usage": True},
    }
    if options.seed is not None:
        fields["seed"] = options.seed
    if options.logit_bias:
        fields["logit_bias"] = {str(token): bias for token, bias in options.logit_bias.items()}
    fields["extra_body"] = extra
    return fields
