"""What a request to `mllm-cpu serve` must be before llama_cpp.server (and so llama.cpp) sees it.

Every check answers with a `RequestError` (an HTTP status and OpenAI's error shape) naming the
field at fault, never a traceback or a file path: the routes served, the body's type, JSON that
is finite and at most `MAX_JSON_DEPTH` deep, the fields as llama_cpp.server's own request models
declare them, and what those models let through but llama-cpp-python or llama.cpp cannot take
(token ids outside the vocabulary, logprobs, a tool_choice naming no tool, a long grammar).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from mllm_cpu.grammar_check import MAX_GRAMMAR_CHARS, GrammarSource
from mllm_cpu.render import MAX_RENDER_CHARS
from mllm_cpu.tasks import TASK_NAMES

MAX_BODY_BYTES = 1 << 20
"""The largest request body read, for every route."""
MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects a request body may have."""
MAX_LOGIT_BIAS = 100.0
"""The largest logit_bias value either way (OpenAI's range; past it a float32 logit overflows)."""
MESSAGE_ROLES = ("system", "user", "assistant", "tool", "function")
"""The chat roles llama-cpp-python's request model knows."""
CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"
GENERATION_PATHS = (CHAT_PATH, COMPLETION_PATH)
DETOKENIZE_PATH = "/extras/detokenize"
RENDER_PATH = "/extras/render"


class RequestError(Exception):
    """A request the server refuses: HTTP status, OpenAI error type and code, the field at fault, a message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.param = param

    @property
    def error_type(self) -> str:
        """OpenAI's error type for the status."""
        if self.status == 401:
            return "authentication_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return {"error": {"message": str(self), "type": self.error_type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Route:
    """A route of llama_cpp.server that `serve` answers: its method and the request model of its body."""

    method: str
    request_model: str | None = None
    """The name of the body's model in `llama_cpp.server.types`; None for a route without a body."""


ROUTES: dict[str, Route] = {
    CHAT_PATH: Route("POST", "CreateChatCompletionRequest"),
    COMPLETION_PATH: Route("POST", "CreateCompletionRequest"),
    "/v1/models": Route("GET"),
    "/extras/tokenize": Route("POST", "TokenizeInputRequest"),
    "/extras/tokenize/count": Route("POST", "TokenizeInputRequest"),
    DETOKENIZE_PATH: Route("POST", "DetokenizeInputRequest"),
    RENDER_PATH: Route("POST"),  # the tutor page's renderer: its body is checked by `check_render_request`
}
"""The routes served; llama_cpp.server's others (embeddings, the copilot-codex alias, its docs) are not.
The tutor page's files (`mllm_cpu.tutor_page`) are served apart, before the API key check."""


def find_route(method: str, path: str) -> Route:
    """The route for a request; 404 for a path not served, 405 for another method."""
    route = ROUTES.get(path)
    if route is None:
        raise RequestError(404, f"no such route: {path}; see /v1/models", "not_found")
    if method != route.method:
        raise RequestError(405, f"{path} takes {route.method}, not {method}", "method_not_allowed")
    return route


def content_type_error(content_type: str | None) -> RequestError | None:
    """A 400 unless the body is declared as JSON (`application/json`, parameters allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return None
    given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return RequestError(400, f"send the body as JSON with Content-Type: application/json ({given})", "invalid_json")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object: finite numbers, valid Unicode text, at most MAX_JSON_DEPTH deep."""
    try:
        request = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise RequestError(
            400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", "invalid_json"
        ) from None
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"the request body is not valid JSON: {error}", "invalid_json") from None
    if not isinstance(request, dict):
        raise RequestError(400, "the request body must be a JSON object", "invalid_json")
    _check_values(request)
    return request


def _check_values(document: dict[str, Any]) -> None:
    """RequestError for nesting beyond MAX_JSON_DEPTH or a string that is not Unicode text (a lone surrogate)."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(
                    400, "the request body has a string with a lone surrogate (\\ud800-\\udfff)", "invalid_json"
                ) from None
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise RequestError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        pending.extend((item, depth + 1) for item in items)


def check_schema(route: Route, request: dict[str, Any]) -> Any:
    """The request as llama_cpp.server's request model for the route reads it; RequestError for a
    field that the model rejects."""
    import pydantic
    from llama_cpp.server import types

    try:
        return getattr(types, str(route.request_model)).model_validate(request)
    except pydantic.ValidationError as error:
        problems = error.errors(include_url=False, include_input=False, include_context=False)
        param = _param(problems[0]["loc"])
        reasons = list(dict.fromkeys(p["msg"] for p in problems if _param(p["loc"]) == param))
        raise RequestError(400, f"invalid {param}: {' or '.join(reasons[:3])}", "invalid_value", param=param) from None


def _param(location: tuple[str | int, ...]) -> str:
    """The field a pydantic error location points at: its name and list positions ("messages.0"),
    without the names of union members that pydantic inserts."""
    parts = [str(location[0])]
    parts += [str(part) for part in location[1:] if isinstance(part, int)]
    return ".".join(parts)


def check_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat request's messages: a non-empty list of {role, content} with a known role and text content."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "invalid_value", param="messages")
    for number, message in enumerate(messages, start=1):
        param = f"messages.{number - 1}"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"message {number} needs a string role", "invalid_value", param=param)
        if message["role"] not in MESSAGE_ROLES:
            raise RequestError(
                400,
                f"message {number} has the role {message['role']!r}; roles are {', '.join(MESSAGE_ROLES)}",
                "invalid_value",
                param=f"{param}.role",
            )
        if not isinstance(message.get("content"), str):
            raise RequestError(400, f"message {number} needs string content (text only)", "invalid_value", param=param)
    return messages


def check_generation_fields(path: str, request: dict[str, Any], n_vocab: int) -> None:
    """RequestError for what the request models accept but generation cannot do: logprobs (the served
    models keep no logits for them), logit_bias keys that are not token ids of the vocabulary, and a
    tool_choice or function_call naming a tool the request does not give; logit_bias values beyond
    MAX_LOGIT_BIAS."""
    logprobs = request.get("logprobs")
    if (path == COMPLETION_PATH and logprobs is not None) or logprobs is True:
        raise RequestError(400, "logprobs are not supported by this server", "unsupported_value", param="logprobs")
    if request.get("top_logprobs") is not None:
        raise RequestError(400, "logprobs are not supported by this server", "unsupported_value", param="top_logprobs")
    bias = request.get("logit_bias") or {}
    if any(not -MAX_LOGIT_BIAS <= float(value) <= MAX_LOGIT_BIAS for value in bias.values()):
        message = f"logit_bias values must be from {-MAX_LOGIT_BIAS:g} to {MAX_LOGIT_BIAS:g}"
        raise RequestError(400, message, "invalid_value", param="logit_bias")
    if request.get("logit_bias_type") != "tokens":
        for key in bias:
            if not (key.isascii() and key.isdigit() and int(key) < n_vocab):
                raise RequestError(
                    400,
                    f"logit_bias keys must be token ids from 0 to {n_vocab - 1}, got {key[:40]!r}",
                    "invalid_value",
                    param="logit_bias",
                )
    for field in ("tool_choice", "function_call"):
        name = _named_tool(request.get(field))
        if name is not None and not any(name == tool_name for tool_name, _ in _tools(request)):
            message = f"{field} names {name[:80]!r}, which is not among the tools"
            raise RequestError(400, message, "invalid_value", param=field)


def _named_tool(choice: Any) -> str | None:
    """The tool a tool_choice ({"function": {"name": N}}) or a function_call ({"name": N}) names."""
    if not isinstance(choice, dict):
        return None
    function = choice.get("function", choice)
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def chosen_tool(request: dict[str, Any]) -> tuple[str, str] | None:
    """(field, name) of the tool a chat request's tool_choice or legacy function_call names, else None."""
    for field in ("tool_choice", "function_call"):
        name = _named_tool(request.get(field))
        if name is not None:
            return field, name
    return None


def _tools(request: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The (name, parameters schema) of each tool or legacy function a chat request gives."""
    tools = [tool.get("function") for tool in request.get("tools") or [] if isinstance(tool, dict)]
    functions = [*tools, *(request.get("functions") or [])]
    return [(f.get("name"), f.get("parameters")) for f in functions if isinstance(f, dict)]


def grammar_sources(path: str, request: dict[str, Any]) -> list[tuple[str, GrammarSource]]:
    """The grammars generation would build for a request, as llama-cpp-python builds them: the
    `grammar` field, a chat's `response_format` JSON schema, and the parameters of the tool that a
    chat's tool_choice (or function_call) names, each with the field it comes from; RequestError for a
    given grammar over MAX_GRAMMAR_CHARS."""
    sources: list[tuple[str, GrammarSource]] = []
    grammar = request.get("grammar")
    if isinstance(grammar, str):
        if len(grammar) > MAX_GRAMMAR_CHARS:
            raise RequestError(
                400,
                f"the grammar has {len(grammar)} characters; the most is {MAX_GRAMMAR_CHARS}",
                "invalid_value",
                param="grammar",
            )
        sources.append(("grammar", GrammarSource("gbnf", grammar)))
    if path != CHAT_PATH:
        return sources
    response_format = request.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_object":
        response_format = {}
    if "schema" in response_format:
        sources.append(("response_format", GrammarSource("json_schema", json.dumps(response_format["schema"]))))
    chosen = chosen_tool(request)
    if chosen is not None:
        field, choice = chosen
        schema = next(parameters for name, parameters in _tools(request) if name == choice)
        sources.append((field, GrammarSource("json_schema", json.dumps(schema))))
    return sources


def check_token_ids(tokens: list[int], n_vocab: int) -> None:
    """RequestError unless every token id is in the vocabulary (0 to n_vocab - 1)."""
    bad = next((token for token in tokens if not 0 <= token < n_vocab), None)
    if bad is not None:
        raise RequestError(
            400, f"token {bad} is not in the vocabulary (0 to {n_vocab - 1})", "invalid_value", param="tokens"
        )


def check_positive(request: dict[str, Any], field: str) -> None:
    """RequestError unless `request[field]` (when given) is a positive integer."""
    value = request.get(field)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise RequestError(400, f"{field} must be a positive integer, got {value!r}", "invalid_value", param=field)


@dataclass(frozen=True)
class RenderRequest:
    """A request of /extras/render: the text to render, and the task whose answer to find in it."""

    text: str
    task: str | None


def check_render_request(request: dict[str, Any]) -> RenderRequest:
    """The render request in a JSON body: `text` a string of at most MAX_RENDER_CHARS characters, `task`
    absent, null or a task name; RequestError otherwise."""
    text = request.get("text")
    if not isinstance(text, str):
        raise RequestError(400, "text must be a string", "invalid_value", param="text")
    if len(text) > MAX_RENDER_CHARS:
        message = f"text has {len(text)} characters; the most is {MAX_RENDER_CHARS}"
        raise RequestError(400, message, "invalid_value", param="text")
    task = request.get("task")
    if task is not None and task not in TASK_NAMES:
        shown = task[:40] if isinstance(task, str) else task
        raise RequestError(
            400, f"task must be one of {', '.join(TASK_NAMES)}, got {shown!r}", "invalid_value", param="task"
        )
    unknown = sorted(set(request) - {"text", "task"})
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0][:40]!r}", "invalid_value", param=unknown[0][:40])
    return RenderRequest(text, task)
