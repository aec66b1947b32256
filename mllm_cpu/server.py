"""An OpenAI-compatible HTTP server: llama-cpp-python's server app, guarded and fed by mllm-cpu's models.

llama_cpp.server provides the routes (/v1/models, /v1/chat/completions, /v1/completions, streaming
and usage). This module loads each model as an `Engine` (validated file, the file's chat template
and stop tokens) and wraps the app in `Guard`, an ASGI middleware that checks every request before
llama.cpp sees it: bearer token, body size, JSON, model name, max_tokens, prompt length against the
context, the file's sampling defaults for unset fields, and a bounded queue (503 + Retry-After).
"""

from __future__ import annotations

import contextvars
import json
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log
from mllm_cpu.engine import Engine, SamplingOptions, context_length, sampling_defaults
from mllm_cpu.model_file import ModelFile, validate_model_file
from mllm_cpu.prompt_format import PromptFormat
from mllm_cpu.store import resolve_model

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_QUEUE = 32
MAX_BODY_BYTES = 1 << 20
RETRY_AFTER_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 30
HEALTH_PATH = "/health"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")


@dataclass
class Usage:
    """The tokens of the request being served: its max_tokens, and the counts its generation fills in."""

    max_tokens: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


# The request being served; the threads that generate for it inherit the context.
_USAGE: contextvars.ContextVar[Usage] = contextvars.ContextVar("usage")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type and code, and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}

    @property
    def error_type(self) -> str:
        """OpenAI's error type for the status."""
        if self.status == 401:
            return "authentication_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"


@dataclass
class ServedModel:
    """A model the server answers for: its name in requests, its file, context and sampling defaults.

    `prompt_format` runs on a vocabulary-only copy of the model, so a request's prompt length is
    checked whichever model is loaded at the moment.
    """

    name: str
    model: ModelFile
    n_ctx: int
    defaults: SamplingOptions
    prompt_format: PromptFormat


def load_served_models(specs: list[str], n_ctx: int | None) -> list[ServedModel]:
    """Resolve and validate each `--model` (store name, file or checkpoint folder); names must differ."""
    import llama_cpp

    served: list[ServedModel] = []
    for spec in specs or [""]:
        path = resolve_model(spec)
        model = validate_model_file(path)
        name = path.stem
        if any(other.name == name for other in served):
            raise InputError(f"two models are named {name}; serve files with different names")
        with captured_llama_log():
            vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        served.append(
            ServedModel(
                name=name,
                model=model,
                n_ctx=context_length(model, n_ctx),
                defaults=sampling_defaults(model.header.metadata),
                prompt_format=PromptFormat(model.header, vocab),
            )
        )
    return served


def check_bind(host: str, api_key: str | None, insecure: bool) -> str | None:
    """None when the address may be bound; a warning to print for --insecure; InputError otherwise."""
    if host in LOOPBACK_HOSTS or api_key:
        return None
    if not insecure:
        raise InputError(
            f"--host {host} is reachable from other machines; give --api-key KEY (or --insecure to serve without one)"
        )
    return f"serving on {host} without an API key: anyone who can reach this machine can use it"


class Stopping(threading.Event):
    """Set when the server shuts down: generations in flight end at their next token."""


def _serving_engine(served: ServedModel, threads: int | None, stopping: Stopping) -> Any:
    """Load a model as an Engine and adapt its llama for llama_cpp.server; returns the `llama_cpp.Llama`.

    Chat prompts are rendered and tokenized exactly as `solve` and `chat` do; every prompt is
    evaluated afresh (no reuse of the previous request's cache), so a reply depends only on the
    request, as in a batch; a shutdown ends generations in flight at their next token. A reply
    ends at the request's max_tokens (llama-cpp-python alone may pass it while it holds back an
    incomplete UTF-8 character).
    """
    from llama_cpp.llama_chat_format import ChatFormatterResponse, chat_formatter_to_chat_completion_handler

    engine = Engine(served.model.path, n_ctx=served.n_ctx, threads=threads)
    llama = engine.llama
    prompt_format = engine.prompt_format

    def formatter(*, messages: Any, **_: Any) -> ChatFormatterResponse:
        return ChatFormatterResponse(prompt=prompt_format.with_bos(prompt_format.render(messages)), added_special=True)

    generate = llama.generate

    def generate_afresh(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        llama.reset()
        usage = _USAGE.get(None) or Usage(max_tokens=served.n_ctx)
        usage.prompt_tokens = len(tokens)
        for token in generate(tokens, *args, **kwargs):
            if stopping.is_set():
                return
            usage.completion_tokens += not engine.is_stop(token)
            yield token
            if usage.completion_tokens >= usage.max_tokens:
                return

    llama.chat_handler = chat_formatter_to_chat_completion_handler(formatter)
    llama.generate = generate_afresh  # type: ignore[method-assign,assignment]
    return llama


def create_server_app(served: list[ServedModel], threads: int | None, api_key: str | None, queue: int) -> Guard:
    """llama_cpp.server's FastAPI app over `served` (the first model loaded), wrapped in a `Guard`."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    stopping = Stopping()
    by_name = {model.name: model for model in served}

    class EngineProxy(LlamaProxy):
        """llama_cpp.server's model switcher, loading each model through `_serving_engine`."""

        def load_llama_from_model_settings(self, settings: ModelSettings) -> Any:  # type: ignore[override]
            return _serving_engine(by_name[str(settings.model_alias)], threads, stopping)

    settings = [
        ModelSettings(model=str(model.model.path), model_alias=model.name, n_ctx=model.n_ctx, verbose=False)
        for model in served
    ]
    server_settings = ServerSettings(interrupt_requests=False)
    import llama_cpp.server.app as server_app

    # create_app builds its model switcher by the module's name LlamaProxy: let it build ours.
    original_proxy = server_app.LlamaProxy
    server_app.LlamaProxy = EngineProxy  # type: ignore[misc]
    try:
        app = create_app(server_settings=server_settings, model_settings=settings)
    finally:
        server_app.LlamaProxy = original_proxy  # type: ignore[misc]
    return Guard(app, served, api_key, queue, stopping)


class Guard:
    """ASGI middleware in front of llama_cpp.server's app: auth, limits, validation, defaults, queue."""

    def __init__(
        self, app: ASGIApp, served: list[ServedModel], api_key: str | None, queue: int, stopping: Stopping
    ) -> None:
        self.app = app
        self.models = {model.name: model for model in served}
        self.default = served[0]
        self.api_key = api_key
        self.queue = queue
        self.active = 0
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            if path == HEALTH_PATH:
                await _send_json(send, 200, self.health())
                return
            self._authorize(scope)
            if scope["method"] != "POST" or path not in GENERATION_PATHS:
                await self.app(scope, receive, send)
                return
            body = await _read_body(receive)
            request = self._prepare(path, body)
            if self.active >= self.queue:
                raise RequestError(
                    503,
                    f"the server is busy ({self.active} requests in flight); retry later",
                    headers={"retry-after": str(RETRY_AFTER_SECONDS)},
                )
        except RequestError as error:
            await _send_error(send, error)
            return
        payload = json.dumps(request).encode("utf-8")
        usage = Usage(max_tokens=request["max_tokens"])
        options = request.get("stream_options")
        if request.get("stream") and isinstance(options, dict) and options.get("include_usage"):
            send = _usage_sender(send, usage, request["model"], path)
        self.active += 1
        context = _USAGE.set(usage)
        try:
            await self.app(_with_length(scope, len(payload)), _replay(payload, receive), send)
        finally:
            _USAGE.reset(context)
            self.active -= 1

    def health(self) -> dict[str, Any]:
        """The health report: status, models and requests in flight."""
        return {"status": "ok", "models": list(self.models), "requests": self.active, "queue": self.queue}

    def _authorize(self, scope: Scope) -> None:
        if not self.api_key:
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.api_key}":
            raise RequestError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "invalid_api_key")

    def _prepare(self, path: str, body: bytes) -> dict[str, Any]:
        """The request with the model's defaults filled in; RequestError when it must be refused."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"the request body is not valid JSON: {error}", "invalid_json") from None
        if not isinstance(request, dict):
            raise RequestError(400, "the request body must be a JSON object", "invalid_json")
        name = request.get("model") or self.default.name
        served = self.models.get(name) if isinstance(name, str) else None
        if served is None:
            raise RequestError(
                404, f"the model {name!r} does not exist; served: {', '.join(self.models)}", "model_not_found"
            )
        request["model"] = served.name
        max_tokens = request.get("max_tokens")
        if max_tokens is None:
            request["max_tokens"] = served.defaults.max_tokens
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, f"max_tokens must be a positive integer, got {max_tokens!r}", "invalid_value")
        for field in _SAMPLING_FIELDS:
            if request.get(field) is None:
                request[field] = getattr(served.defaults, field)
        prompt = self._prompt_tokens(path, request, served)
        if prompt >= served.n_ctx:
            raise RequestError(
                400,
                f"the prompt has {prompt} tokens; the context of {served.name} holds {served.n_ctx}",
                "context_length_exceeded",
            )
        return request

    @staticmethod
    def _prompt_tokens(path: str, request: dict[str, Any], served: ServedModel) -> int:
        prompt_format = served.prompt_format
        if path == "/v1/completions":
            prompt = request.get("prompt", "")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = request["prompt"] = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError(400, "prompt must be a string (one prompt per request)", "invalid_value")
            return len(prompt_format.tokenize(prompt))
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list", "invalid_value")
        for number, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(400, f"message {number} needs a string role", "invalid_value")
            if not isinstance(message.get("content"), str):
                raise RequestError(400, f"message {number} needs string content (text only)", "invalid_value")
        try:
            text = prompt_format.with_bos(prompt_format.render(messages))
        except Exception as error:  # the chat template rejected the conversation
            raise RequestError(
                400, f"the chat template cannot render these messages: {error}", "invalid_value"
            ) from None
        return len(prompt_format.tokenize(text))


def _usage_sender(send: Send, usage: Usage, model: str, path: str) -> Send:
    """`send` that puts a usage chunk before a stream's [DONE], as OpenAI does for include_usage."""
    kind = "chat.completion.chunk" if path == "/v1/chat/completions" else "text_completion"

    async def send_with_usage(message: Message) -> None:
        body = message.get("body", b"")
        done = body.find(b"data: [DONE]") if message["type"] == "http.response.body" else -1
        if done >= 0:
            chunk = {
                "id": f"usage-{uuid.uuid4().hex}",
                "object": kind,
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                },
            }
            event = b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n"
            message = {**message, "body": body[:done] + event + body[done:]}
        await send(message)

    return send_with_usage


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client closed the request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that yields `body` once, then the client's own messages (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode("ascii"))]}


async def _send_json(send: Send, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(data).encode("utf-8")
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: RequestError) -> None:
    data = {"error": {"message": str(error), "type": error.error_type, "param": None, "code": error.code}}
    await _send_json(send, error.status, data, error.headers)


@dataclass(frozen=True)
class ServeOptions:
    """What `mllm-cpu serve` was asked for."""

    models: list[str]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    insecure: bool = False
    n_ctx: int | None = None
    threads: int | None = None
    queue: int = DEFAULT_QUEUE

    def validate(self) -> None:
        """InputError for a port or queue out of range, or an empty API key."""
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be between 0 and 65535, got {self.port}")
        if self.queue < 1:
            raise InputError(f"--queue must be at least 1, got {self.queue}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("--api-key is empty")


def serve(options: ServeOptions, announce: Callable[[str], None], warn: Callable[[str], None]) -> int:
    """Load the models and serve until SIGTERM or Ctrl-C; returns the exit status (0, or 130 after Ctrl-C)."""
    import uvicorn

    options.validate()
    warning = check_bind(options.host, options.api_key, options.insecure)
    served = load_served_models(options.models, options.n_ctx)
    guard = create_server_app(served, options.threads, options.api_key, options.queue)
    config = uvicorn.Config(
        guard,
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )

    def started(port: int) -> None:
        host = f"[{options.host}]" if ":" in options.host else options.host
        auth = "API key required" if options.api_key else "no API key"
        announce(f"serving {', '.join(m.name for m in served)} at http://{host}:{port}/v1 ({auth})")

    if warning:
        warn(warning)
    signals: list[int] = []
    server = _uvicorn_server(config, guard.stopping, started, signals)
    server.run()
    if not server.started:
        raise InputError(f"cannot listen on {options.host}:{options.port} (in use, or not an address of this machine)")
    return 130 if signal.SIGINT in signals else 0


def _uvicorn_server(config: Any, stopping: Stopping, on_started: Callable[[int], None], signals: list[int]) -> Any:
    """uvicorn's server with a startup line, and a SIGTERM/Ctrl-C that ends in a normal exit.

    uvicorn re-raises a caught signal after its graceful shutdown (the process then dies by the
    signal); here the signal ends generations in flight, is noted in `signals`, and `serve` returns.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_started(self.servers[0].sockets[0].getsockname()[1])

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            signals.append(sig)
            stopping.set()
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server(config)
