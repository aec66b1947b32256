"""A remote OpenAI-compatible server (mllm-cpu serve, llama-server, vLLM, Ollama) as a `Backend`.

Replies are streamed from /v1/chat/completions. Several endpoints serving the same model share
the requests in turn; a failed request (refused connection, timeout, 5xx, 401) is tried again,
after a growing pause and on the next endpoint, a bounded number of times before it is reported.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import Generation, SamplingOptions, StopReason
from mllm_cpu.identity import ModelIdentity
from mllm_cpu.prompt_format import Message

ENDPOINT_ENV = "MLLM_CPU_ENDPOINT"
API_KEY_ENV = "MLLM_CPU_API_KEY"
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5
TIMEOUT_SECONDS = 600.0
_STOP_REASONS = {"length": StopReason.LENGTH, "interrupted": StopReason.INTERRUPTED}
_RETRIED_STATUS = (401, 408, 409, 429)


class EndpointError(InputError):
    """A request an endpoint did not answer, after every attempt; the message names the endpoint."""


def endpoint_url(text: str) -> str:
    """The API base URL for what a user typed: http(s)://host[:port][/v1], trailing slash dropped."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"--endpoint {text!r}: expected a URL like http://host:8080/v1")
    return url if parts.path.endswith("/v1") else f"{url}/v1"


def describe_error(error: Exception) -> str:
    """A one-line description of an openai client error."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        return "cannot connect (is the server running?)"
    if isinstance(error, openai.APIStatusError):
        message = error.message
        if isinstance(error.body, dict):
            inner = error.body.get("error", error.body)
            message = str(inner.get("message", message)) if isinstance(inner, dict) else str(inner)
        return f"HTTP {error.status_code}: {message}"
    return str(error)


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

    def __init__(self, urls: list[str], api_key: str | None = None, model: str | None = None) -> None:
        import openai

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
        models: list[str] = self._attempt(lambda endpoint: [m.id for m in endpoint.client.models.list()])
        if model is not None and model not in models:
            raise EndpointError(f"{self.endpoints[0].url} does not serve {model}; it serves: {', '.join(models)}")
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
        first_at: float | None = None
        pieces: list[str] = []
        chunks = 0
        usage: Any = None
        finish: str | None = None
        stream = endpoint.client.chat.completions.create(
            model=self.model, messages=messages, stream=True, **request_options(options)
        )
        try:
            for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    text = choice.delta.content if choice.delta else None
                    if text:
                        if first_at is None:
                            first_at = time.perf_counter()
                        chunks += 1
                        pieces.append(text)
                        on_text(text)
                    finish = choice.finish_reason or finish
        except KeyboardInterrupt:
            finish = "interrupted"
        finally:
            stream.close()
        end = time.perf_counter()
        first_at = first_at or end
        return Generation(
            text="".join(pieces),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            generated_tokens=usage.completion_tokens if usage else chunks,
            prompt_seconds=first_at - start,
            generation_seconds=end - first_at,
            stop_reason=_STOP_REASONS.get(str(finish), StopReason.EOS),
        )


def request_options(options: SamplingOptions) -> dict[str, Any]:
    """The request fields for sampling options; top-k, min-p and the repeat penalty only when set.

    Servers differ in the names of the fields outside OpenAI's API (llama.cpp: repeat_penalty,
    vLLM: repetition_penalty); both are sent, and each server ignores the other's.
    """
    extra: dict[str, Any] = {}
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
    if extra:
        fields["extra_body"] = extra
    return fields
