"""An OpenAI-compatible HTTP server over the batched engine, which runs in a process of its own.

`Guard`, an ASGI app, checks every request before any model sees it: bearer token, body size,
JSON, model name, max_tokens, prompt length against the context, the file's sampling defaults for
unset fields, the request's grammars, and a bounded queue (503 + Retry-After). The checks of a
request's fields are `mllm_cpu.request_checks`; grammars are checked by `mllm_cpu.grammar_check`.
`api_routes.Routes` answers what passes, from the runner of the model (`mllm_cpu.runner`): up to
`--parallel` requests decode together, and a crash in llama.cpp ends the replies in flight with
an error while the runner starts again. A chat request may name a `task` (its system prompt when
the conversation has none, and where its answer begins) and a thinking `budget`, as `solve` does.
`GET /` is the tutor page (`mllm_cpu.tutor_page`), which renders replies through /extras/render
(`mllm_cpu.render`).
"""

from __future__ import annotations

import asyncio
import hmac
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from mllm_cpu.api_routes import (
    REASONING_FORMATS,
    GenerationRequest,
    Receive,
    RequestTask,
    Routes,
    Scope,
    Send,
    ServedModel,
    load_served_models,
    send_error,
    send_json,
)
from mllm_cpu.batched import default_parallel
from mllm_cpu.budget import ThinkingBudget
from mllm_cpu.core.errors import InputError
from mllm_cpu.grammar_check import GrammarCheckFailed
from mllm_cpu.render import render_reply
from mllm_cpu.request_checks import (
    CHAT_PATH,
    COMPLETION_PATH,
    DETOKENIZE_PATH,
    GENERATION_PATHS,
    MAX_BODY_BYTES,
    RENDER_PATH,
    RenderRequest,
    RequestError,
    Route,
    check_generation_fields,
    check_messages,
    check_positive,
    check_render_request,
    check_schema,
    check_token_ids,
    content_type_error,
    find_route,
    grammar_sources,
    parse_json_object,
)
from mllm_cpu.runner import RunnerPool, RunnerSpec
from mllm_cpu.sampling import FILE_FIELDS
from mllm_cpu.solver import choose_task
from mllm_cpu.store import ConversionDisplay
from mllm_cpu.tutor_page import is_page, send_page

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_QUEUE = 32
RETRY_AFTER_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 30
HEALTH_PATH = "/health"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RENDER_THREADS = 2
"""Renders of /extras/render run at once (each takes at most about `render.RENDER_SECONDS`)."""
MAX_RENDER_WAITING = 64
"""Renders that may wait for a thread; more get 503 with Retry-After."""
TASK_FIELDS = ("budget", "answer_tokens", "task")
DEFAULT_BUDGET_TASK = "math"
# Request fields a budgeted chat does not apply; refused rather than ignored.
_NOT_WITH_BUDGET = ("stop", "tools", "functions", "response_format", "grammar", "logprobs", "logit_bias")


def check_bind(host: str, api_key: str | None, insecure: bool) -> str | None:
    """None when the address may be bound; a warning to print for --insecure; InputError otherwise."""
    if host in LOOPBACK_HOSTS or api_key:
        return None
    if not insecure:
        raise InputError(
            f"--host {host} is reachable from other machines; give --api-key KEY (or --insecure to serve without one)"
        )
    return f"serving on {host} without an API key: anyone who can reach this machine can use it"


class Guard:
    """The server's ASGI app: auth, routes, limits, validation, defaults and the queue, in front of `Routes`.

    Every request but /health and the tutor page's files (`mllm_cpu.tutor_page`, public: they hold no
    data) is authorized and bounded in size; only the routes of `request_checks.ROUTES` are served
    (others are 404), each body checked as that route's request model declares it and within the
    bounds llama.cpp needs; every request served but a render (/extras/render, bounded by threads of
    its own) counts against the queue.
    """

    def __init__(self, routes: Routes, api_key: str | None, queue: int) -> None:
        self.routes = routes
        self.models = {model.name: model for model in routes.served}
        self.default = routes.served[0]
        self.api_key = api_key
        self.queue = queue
        self.active = 0
        self.renders = 0
        self._render_threads = asyncio.Semaphore(RENDER_THREADS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websocket routes: refuse the handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        path, method = scope["path"], scope["method"]
        body: bytes | None = None
        render: RenderRequest | None = None
        try:
            if path == HEALTH_PATH:
                await send_json(send, 200, self.health())
                return
            if is_page(path):  # public: the page holds no data, and asks for the key itself
                if await send_page(scope, send):
                    return
                raise RequestError(405, f"{path} takes GET, not {method}", "method_not_allowed")
            self._authorize(scope)
            route = find_route(method, path)
            body = await _read_body(scope, receive)
            if path == RENDER_PATH:
                render = self._render_request(scope, body)
            else:
                request, served, work = self._prepare(path, route, scope, body)
            if render is None and self.active >= self.queue:
                raise RequestError(
                    503,
                    f"the server is busy ({self.active} requests in flight); retry later",
                    headers={"retry-after": str(RETRY_AFTER_SECONDS)},
                )
        except RequestError as error:
            if body is None:  # refused unread: the connection cannot carry another request
                error.headers.setdefault("connection", "close")
            await send_error(send, error)
            return
        if render is not None:
            await self._render(render, send)
            return
        self.active += 1
        try:
            if work is not None:
                await self._generate(work, receive, send)
            elif request is None:
                await self.routes.models(send)
            else:
                await self.routes.tokens(path, request, served, send)
        finally:
            self.active -= 1

    async def _generate(self, work: GenerationRequest, receive: Receive, send: Send) -> None:
        """Check the request's grammars (in a child process), then generate the reply."""
        try:
            await self._check_grammars(work)
        except RequestError as error:
            await send_error(send, error)
            return
        await self.routes.generate(work, receive, send)

    @staticmethod
    def _render_request(scope: Scope, body: bytes) -> RenderRequest:
        problem = content_type_error(dict(scope["headers"]).get(b"content-type", b"").decode("latin-1") or None)
        if problem is not None:
            raise problem
        return check_render_request(parse_json_object(body))

    async def _render(self, request: RenderRequest, send: Send) -> None:
        """The text of a render request as HTML (`render.render_reply`), on one of RENDER_THREADS threads;
        503 when MAX_RENDER_WAITING renders already wait. Renders do not count against --queue."""
        if self.renders >= RENDER_THREADS + MAX_RENDER_WAITING:
            error = RequestError(503, "the server is busy rendering; retry later", headers={"retry-after": "1"})
            await send_error(send, error)
            return
        self.renders += 1
        try:
            async with self._render_threads:
                reply = await asyncio.to_thread(render_reply, request.text, request.task)
        finally:
            self.renders -= 1
        await send_json(send, 200, reply)

    def health(self) -> dict[str, Any]:
        """The health report: status, models, requests in flight, the queue and sequences decoded together."""
        return {
            "status": "ok",
            "models": list(self.models),
            "requests": self.active,
            "queue": self.queue,
            "parallel": self.routes.pool.parallel,
        }

    def _authorize(self, scope: Scope) -> None:
        if not self.api_key:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode("ascii")):
            raise RequestError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "invalid_api_key")

    def _prepare(
        self, path: str, route: Route, scope: Scope, body: bytes
    ) -> tuple[dict[str, Any] | None, ServedModel, GenerationRequest | None]:
        """The request (None for a route without a body) with the model's defaults filled in, the model
        it is for, and for a generation route what to generate; RequestError to refuse it."""
        if route.request_model is None:
            return None, self.default, None
        problem = content_type_error(dict(scope["headers"]).get(b"content-type", b"").decode("latin-1") or None)
        if problem is not None:
            raise problem
        request = parse_json_object(body)
        served = self._served(request)
        if path == CHAT_PATH:
            check_messages(request)
        if path in GENERATION_PATHS:
            if request.get("max_tokens") is None:
                request["max_tokens"] = served.defaults.max_tokens
            check_positive(request, "max_tokens")
            for field in FILE_FIELDS:
                if request.get(field) is None:
                    request[field] = getattr(served.defaults, field)
        checked = check_schema(route, request)
        if path == DETOKENIZE_PATH:
            self._check_detokenize(checked.tokens, served)
        if path not in GENERATION_PATHS:
            return request, served, None
        check_generation_fields(path, request, served.n_vocab)
        task = _request_task(path, request)
        tokens = self._prompt_tokens(path, request, served)
        if len(tokens) >= served.n_ctx:
            raise RequestError(
                400,
                f"the prompt has {len(tokens)} tokens; the context of {served.name} holds {served.n_ctx}",
                "context_length_exceeded",
            )
        return request, served, GenerationRequest(path, served, request, tokens, task)

    def _served(self, request: dict[str, Any]) -> ServedModel:
        """The model a request names (the first served when it names none); 404 for another name."""
        name = request.get("model") or self.default.name
        served = self.models.get(name) if isinstance(name, str) else None
        if served is None:
            shown = name[:80] if isinstance(name, str) else name
            raise RequestError(
                404,
                f"the model {shown!r} does not exist; served: {', '.join(self.models)}",
                "model_not_found",
                param="model",
            )
        request["model"] = served.name
        return served

    @staticmethod
    def _check_detokenize(tokens: list[int], served: ServedModel) -> None:
        """RequestError unless the tokens are in the vocabulary and their text is UTF-8."""
        check_token_ids(tokens, served.n_vocab)
        try:
            served.vocab.detokenize(tokens).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(
                400, "these tokens do not make whole UTF-8 characters", "invalid_value", param="tokens"
            ) from None

    async def _check_grammars(self, work: GenerationRequest) -> None:
        """RequestError for a grammar the request would generate with that llama.cpp cannot take."""
        for param, source in grammar_sources(work.path, work.request):
            try:
                problem = await asyncio.to_thread(work.served.grammars.problem, source)
            except GrammarCheckFailed as error:
                retry = {"retry-after": str(RETRY_AFTER_SECONDS)}
                raise RequestError(503, f"{error}; retry later", headers=retry) from None
            if problem is not None:
                raise RequestError(400, problem, "invalid_grammar", param=param)

    @staticmethod
    def _prompt_tokens(path: str, request: dict[str, Any], served: ServedModel) -> list[int]:
        prompt_format = served.prompt_format
        if path == COMPLETION_PATH:
            prompt = request.get("prompt", "")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = request["prompt"] = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError(400, "prompt must be a string (one prompt per request)", "invalid_value")
            return prompt_format.tokenize(prompt)
        messages = request["messages"]
        try:
            text = prompt_format.render(messages)
        except Exception as error:  # the chat template rejected the conversation
            raise RequestError(
                400, f"the chat template cannot render these messages: {error}", "invalid_value"
            ) from None
        return prompt_format.tokenize(text)


def _request_task(path: str, request: dict[str, Any]) -> RequestTask | None:
    """The task and thinking budget a chat request asks for (fields removed from it; the task's system
    prompt put first when the conversation has none), None without a task; RequestError when invalid."""
    given = {field: request.pop(field) for field in TASK_FIELDS if field in request}
    reasoning_format = request.get("reasoning_format")
    if reasoning_format is not None and reasoning_format not in REASONING_FORMATS:
        message = f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}, got {reasoning_format!r}"
        raise RequestError(400, message[:200], "invalid_value", param="reasoning_format")
    if not given:
        return None
    if path != CHAT_PATH:
        raise RequestError(400, f"{', '.join(TASK_FIELDS)} are fields of /v1/chat/completions only", "invalid_value")
    if given.get("budget") is None and "answer_tokens" in given:
        raise RequestError(400, "give a budget (a positive integer) with answer_tokens", "invalid_value")
    for field in ("budget", "answer_tokens"):
        check_positive(given, field)
    task = given.get("task") or DEFAULT_BUDGET_TASK
    if not isinstance(task, str):
        raise RequestError(400, f"task must be a string, got {task!r}", "invalid_value")
    messages = request["messages"]
    problem = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    try:
        preset = choose_task(task, problem)
    except InputError as error:
        raise RequestError(400, str(error), "invalid_value") from None
    if not any(m["role"] == "system" for m in messages):
        request["messages"] = [{"role": "system", "content": preset.system_prompt}, *messages]
    if given.get("budget") is None:
        return RequestTask(preset)
    refused = [field for field in _NOT_WITH_BUDGET if request.get(field)]
    if refused:
        raise RequestError(400, f"a thinking budget cannot be combined with {', '.join(refused)}", "invalid_value")
    budget = given["budget"]
    answer_tokens = given.get("answer_tokens") or preset.answer_tokens
    room = request["max_tokens"] - budget  # max_tokens bounds reasoning and forced answer together
    return RequestTask(preset, ThinkingBudget(budget, min(answer_tokens, room) if room >= 1 else answer_tokens))


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The request's body, refused (413) past MAX_BODY_BYTES: at once when its Content-Length says so,
    else as soon as that much has arrived."""
    too_large = RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "the client closed the request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


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
    parallel: int | None = None
    """Sequences each model's runner decodes together; None: `batched.default_parallel`."""

    def validate(self) -> None:
        """InputError for a port or queue out of range, or an API key that is empty or that no client
        can send (an HTTP header carries ASCII, and a server strips the spaces around it)."""
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be between 0 and 65535, got {self.port}")
        if self.queue < 1:
            raise InputError(f"--queue must be at least 1, got {self.queue}")
        if self.api_key is None:
            return
        if not self.api_key.strip():
            raise InputError("--api-key is empty")
        unsendable = next((number for number, c in enumerate(self.api_key, 1) if not "!" <= c <= "~"), None)
        if unsendable is not None:
            raise InputError(
                f"--api-key must be printable ASCII without spaces (HTTP headers carry it): "
                f"character {unsendable} is not"
            )


def serve(
    options: ServeOptions,
    announce: Callable[[str], None],
    warn: Callable[[str], None],
    display: ConversionDisplay | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> int:
    """Load the models (a checkpoint folder's conversion shown by `display`), start the first one's runner
    and serve until SIGTERM or Ctrl-C; returns the exit status (0, or 130 after Ctrl-C). `on_listening`
    is given the tutor page's URL on this machine once the server takes requests."""
    import uvicorn

    options.validate()
    warning = check_bind(options.host, options.api_key, options.insecure)
    served = load_served_models(options.models, options.n_ctx, display)
    specs = {
        model.name: RunnerSpec(
            model.model.path,
            options.parallel or default_parallel(model.model, model.n_ctx),
            model.n_ctx,
            options.threads,
        )
        for model in served
    }
    pool = RunnerPool(specs, warn)
    try:
        pool.start(served[0].name)
        routes = Routes(served, pool)
        guard = Guard(routes, options.api_key, options.queue)
        config = uvicorn.Config(
            guard,
            host=options.host,
            port=options.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )

        def started(port: int) -> None:
            host = f"[{options.host}]" if ":" in options.host else options.host
            auth = "API key required" if options.api_key else "no API key"
            together = f"{pool.parallel} request{'s' if pool.parallel != 1 else ''} decode together"
            announce(f"serving {', '.join(m.name for m in served)} at http://{host}:{port}/v1 ({auth}; {together})")
            announce(f"the tutor page: {page_url(options.host, port)}")
            if on_listening is not None:
                on_listening(local_page_url(options.host, port))

        if warning:
            warn(warning)
        signals: list[int] = []
        server = _uvicorn_server(config, routes.stop, started, signals)
        server.run()
    finally:
        pool.close()
    if not server.started:
        raise InputError(f"cannot listen on {options.host}:{options.port} (in use, or not an address of this machine)")
    return 130 if signal.SIGINT in signals else 0


_WILDCARD_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
"""The wildcard addresses a server may listen on, each with the loopback address a local browser uses."""


def page_url(host: str, port: int) -> str:
    """The tutor page's URL to tell users: for a wildcard address, with this machine's name."""
    if host in _WILDCARD_LOOPBACK:
        return f"http://{socket.gethostname()}:{port}/ (or this machine's address on your network)"
    return local_page_url(host, port)


def local_page_url(host: str, port: int) -> str:
    """The tutor page's URL for a browser on this machine (loopback for a wildcard address)."""
    host = _WILDCARD_LOOPBACK.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _uvicorn_server(
    config: Any, on_exit: Callable[[], None], on_started: Callable[[int], None], signals: list[int]
) -> Any:
    """uvicorn's server with a startup line, and a SIGTERM/Ctrl-C that ends in a normal exit.

    uvicorn re-raises a caught signal after its graceful shutdown (the process then dies by the
    signal); here the signal ends the replies in flight (`on_exit`), is noted in `signals`, and
    `serve` returns.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_started(self.servers[0].sockets[0].getsockname()[1])

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            signals.append(sig)
            on_exit()
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server(config)
