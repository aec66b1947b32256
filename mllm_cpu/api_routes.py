"""The OpenAI routes of `serve`, answered by the batched engine in its runner process.

`server.Guard` checks a request and fills in its defaults; `Routes` answers it: `/v1/models`,
`/v1/chat/completions` and `/v1/completions` (JSON, or an SSE stream), and the token routes under
`/extras`. A generation request becomes a `BatchRequest` for the runner of its model
(`runner.RunnerPool`), so up to `--parallel` requests decode together, and the runner's events
become the reply. A chat reply carries its reasoning in `reasoning_content` and its answer in
`content` (`mllm_cpu.reasoning`; `"reasoning_format": "none"` keeps the whole reply in `content`).
A request naming a `task` splits at that task's answer mark; with a `budget` the runner forces the
task's answer as `solve --budget` does, and the reply carries an `x_mllm_cpu` report. A grammar
(given, or made from a JSON schema or the parameters of the tool a request chooses) constrains
the reply in the runner. When the runner crashes, the reply ends with HTTP 500 (in a stream, an
error event) naming why, and the runner starts again for later requests.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_cpu.batched import BatchRequest, Failed, Finished, Piece
from mllm_cpu.budget import ThinkingBudget
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log
from mllm_cpu.engine import PromptTooLong, StopReason, context_length
from mllm_cpu.grammar_check import GrammarChecker, gbnf_text
from mllm_cpu.load_check import prepare_load
from mllm_cpu.model_file import ModelFile, validate_model_file
from mllm_cpu.prompt_format import PromptFormat
from mllm_cpu.reasoning import ReasoningSplitter, Split
from mllm_cpu.request_checks import CHAT_PATH, RequestError, chosen_tool, grammar_sources
from mllm_cpu.runner import RunnerPool, RunnerStream, RunnerUnavailable
from mllm_cpu.sampling import FILE_FIELDS, SamplingOptions, sampling_defaults
from mllm_cpu.store import ConversionDisplay, resolve_model
from mllm_cpu.tasks import TaskPreset

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

REASONING_FORMATS = ("deepseek", "none")
"""`reasoning_format` values: split the reply (the default), or keep it whole in `content`."""


@dataclass
class ServedModel:
    """A model the server answers for: its name in requests, its file, context and sampling defaults.

    `prompt_format` and `vocab` are a vocabulary-only copy of the model, so prompts are rendered,
    counted and tokenized here, whichever model the runner has loaded; `grammars` checks the
    grammars of requests against that vocabulary.
    """

    name: str
    model: ModelFile
    n_ctx: int
    defaults: SamplingOptions
    prompt_format: PromptFormat
    vocab: Any
    grammars: GrammarChecker

    @property
    def n_vocab(self) -> int:
        """The size of the vocabulary: token ids are 0 to n_vocab - 1."""
        return int(self.vocab.n_vocab())


def load_served_models(
    specs: list[str], n_ctx: int | None, display: ConversionDisplay | None = None
) -> list[ServedModel]:
    """Resolve and validate each `--model` (store name, file or checkpoint folder, its conversion shown by
    `display`); names must differ."""
    served: list[ServedModel] = []
    for spec in specs or [""]:
        model = served_model(resolve_model(spec, display), n_ctx)
        if any(other.name == model.name for other in served):
            raise InputError(f"two models are named {model.name}; serve files with different names")
        served.append(model)
    return served


def served_model(path: Path, n_ctx: int | None) -> ServedModel:
    """A validated model file (its first load checked) with a vocabulary-only copy of it loaded."""
    import llama_cpp

    model = validate_model_file(path)
    prepare_load(path)
    with captured_llama_log():
        vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    return ServedModel(
        name=path.stem,
        model=model,
        n_ctx=context_length(model, n_ctx),
        defaults=sampling_defaults(model.header.metadata),
        prompt_format=PromptFormat(model.header, vocab),
        vocab=vocab,
        grammars=GrammarChecker(path),
    )


@dataclass(frozen=True)
class RequestTask:
    """A chat request's task (its answer mark, and the system prompt when the request has none) and budget."""

    preset: TaskPreset
    budget: ThinkingBudget | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A checked generation request: its route, model, fields (defaults filled in), prompt tokens and task."""

    path: str
    served: ServedModel
    request: dict[str, Any]
    tokens: list[int]
    task: RequestTask | None = None


def finish_reason(stop_reason: StopReason) -> str:
    """OpenAI's finish_reason: "stop" when the reply ended by itself or at the budget after its answer."""
    return "stop" if stop_reason in (StopReason.EOS, StopReason.BUDGET) else "length"


class Routes:
    """Answers the checked requests of `Guard` from a RunnerPool; `stop()` ends every reply in flight."""

    def __init__(self, served: list[ServedModel], pool: RunnerPool) -> None:
        self.served = served
        self.pool = pool
        self._live: set[RunnerStream] = set()
        self._stopping = False

    def stop(self) -> None:
        """End the replies in flight at their next token (shutdown); later ones are refused."""
        self._stopping = True
        for stream in list(self._live):
            stream.cancel()

    async def models(self, send: Send) -> None:
        data = [{"id": m.name, "object": "model", "owned_by": "mllm-cpu", "permissions": []} for m in self.served]
        await send_json(send, 200, {"object": "list", "data": data})

    async def tokens(self, path: str, request: dict[str, Any], served: ServedModel, send: Send) -> None:
        """/extras/tokenize, /extras/tokenize/count and /extras/detokenize (checked by Guard)."""
        if path.endswith("detokenize"):
            text = served.vocab.detokenize(request["tokens"]).decode("utf-8")
            await send_json(send, 200, {"text": text})
            return
        tokens = served.prompt_format.tokenize(request["input"])
        await send_json(send, 200, {"count": len(tokens)} if path.endswith("count") else {"tokens": tokens})

    async def generate(self, work: GenerationRequest, receive: Receive, send: Send) -> None:
        """Send the request to its model's runner and answer with the reply, streamed or whole."""
        reply = _Reply(work)
        try:
            if self._stopping:
                raise RunnerUnavailable("the server is shutting down")
            stream = await asyncio.to_thread(self.pool.submit, work.served.name, batch_request(work))
        except RunnerUnavailable as error:
            await send_error(send, RequestError(503, str(error), "engine_unavailable"))
            return
        self._live.add(stream)
        try:
            events = stream.events()
            try:
                first = await anext(events)
            except InputError as error:
                code = "context_length_exceeded" if isinstance(error, PromptTooLong) else "invalid_value"
                await send_error(send, RequestError(400, str(error), code))
                return
            if work.request.get("stream"):
                await _send_stream(send, receive, reply.chunks(first, events))
                return
            async for event in _chain(first, events):
                if isinstance(event, Failed):
                    await send_error(send, RequestError(500, event.reason, "engine_failed"))
                    return
                if isinstance(event, Finished):
                    await send_json(send, 200, reply.whole(event))
                    return
                reply.add(event)
        finally:
            stream.close()
            self._live.discard(stream)


def batch_request(work: GenerationRequest) -> BatchRequest:
    """The runner's request for a checked generation request."""
    request, served = work.request, work.served
    options = SamplingOptions(
        **{field: request[field] for field in FILE_FIELDS},
        seed=request.get("seed"),
        max_tokens=request["max_tokens"],
        logit_bias=_logit_bias(request, served),
    )
    stop = request.get("stop") or ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if work.path == CHAT_PATH:
        stops = (*stops, *served.prompt_format.stop_texts)
    task = work.task
    budget = task.budget if task else None
    return BatchRequest(
        work.tokens,
        options,
        stops,
        budget=budget,
        preset=task.preset if budget and task else None,
        grammar=_grammar(work),
    )


def _logit_bias(request: dict[str, Any], served: ServedModel) -> dict[int, float]:
    """Token id -> bias; with `logit_bias_type: "tokens"` the keys are texts, biasing each of their tokens."""
    bias = request.get("logit_bias") or {}
    if request.get("logit_bias_type") != "tokens":
        return {int(key): float(value) for key, value in bias.items()}
    return {
        token: float(value)
        for key, value in bias.items()
        for token in served.vocab.tokenize(key.encode("utf-8"), add_bos=False, special=False)
    }


def _grammar(work: GenerationRequest) -> str | None:
    """The GBNF the reply must follow: the chosen tool's parameters, else the response format, else `grammar`
    (llama-cpp-python's order); JSON of any shape for `response_format: json_object` without a schema."""
    sources = grammar_sources(work.path, work.request)
    if sources:
        return gbnf_text(sources[-1][1])
    response_format = work.request.get("response_format")
    if work.path == CHAT_PATH and isinstance(response_format, dict) and response_format.get("type") == "json_object":
        from llama_cpp import llama_grammar

        return str(llama_grammar.JSON_GBNF)
    return None


class _Reply:
    """The OpenAI shapes of one reply: a chat message (answer and reasoning apart, or a tool call) or a text."""

    def __init__(self, work: GenerationRequest) -> None:
        self.work = work
        self.chat = work.path == CHAT_PATH
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        request = work.request
        self.tool = chosen_tool(request) if self.chat else None
        whole = request.get("reasoning_format") == "none" or self.tool is not None or not self.chat
        self.splitter = None if whole else ReasoningSplitter(work.task.preset if work.task else None)
        self.parts: list[Split] = []
        self.usage = bool((request.get("stream_options") or {}).get("include_usage"))

    def add(self, event: Piece) -> list[Split]:
        """The settled parts of the reply after `event`."""
        parts = self._split(event.text) if event.text else []
        self.parts += parts
        return parts

    def _split(self, text: str) -> list[Split]:
        return [Split(text, False)] if self.splitter is None else self.splitter.feed(text)

    def _rest(self) -> list[Split]:
        parts = [] if self.splitter is None else self.splitter.finish()
        self.parts += parts
        return parts

    def whole(self, finished: Finished) -> dict[str, Any]:
        """The `chat.completion` or `text_completion` object."""
        self._rest()
        answer = "".join(p.text for p in self.parts if not p.reasoning)
        reasoning = "".join(p.text for p in self.parts if p.reasoning)
        generation = finished.generation
        if self.chat:
            message = self._message(answer, reasoning)
            reason = self._finish_reason(finished)
            choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        else:
            choice = {
                "index": 0,
                "text": answer,
                "logprobs": None,
                "finish_reason": finish_reason(generation.stop_reason),
            }
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        body["usage"] = _usage(finished)
        return self._with_report(body, finished)

    def _message(self, answer: str, reasoning: str) -> dict[str, Any]:
        if self.tool is not None:
            field, name = self.tool
            call = {"name": name, "arguments": answer}
            if field == "function_call":
                return {"role": "assistant", "content": None, "function_call": call}
            tool_call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": call}
            return {"role": "assistant", "content": None, "tool_calls": [tool_call]}
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if reasoning:
            message["reasoning_content"] = reasoning
        return message

    def _finish_reason(self, finished: Finished) -> str:
        reason = finish_reason(finished.generation.stop_reason)
        if self.tool is not None and reason == "stop":
            return "function_call" if self.tool[0] == "function_call" else "tool_calls"
        return reason

    async def chunks(self, first: Any, events: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        """The SSE events of a streamed reply: deltas, the finishing chunk, usage when asked, [DONE]."""
        if self.chat:
            yield _event(self._chunk(self._opening()))
        async for event in _chain(first, events):
            if isinstance(event, Failed):
                yield _event(RequestError(500, event.reason, "engine_failed").to_dict())
                return
            if isinstance(event, Finished):
                for delta in self._deltas(self._rest()):
                    yield _event(self._chunk(delta))
                yield _event(self._with_report(self._chunk({}, self._finish_reason(finished=event)), event))
                if self.usage:
                    yield _event({**self._envelope(self._chunk_object(), []), "usage": _usage(event)})
                yield b"data: [DONE]\n\n"
                return
            for delta in self._deltas(self.add(event)):
                yield _event(self._chunk(delta))

    def _opening(self) -> dict[str, Any]:
        if self.tool is None:
            return {"role": "assistant"}
        field, name = self.tool
        if field == "function_call":
            return {"role": "assistant", "content": None, "function_call": {"name": name, "arguments": ""}}
        call = {"index": 0, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**call, "function": {"name": name, "arguments": ""}}],
        }

    def _deltas(self, parts: list[Split]) -> list[dict[str, Any]]:
        if not self.chat:
            return [{"text": part.text} for part in parts]
        if self.tool is not None:
            field = self.tool[0]
            if field == "function_call":
                return [{"function_call": {"arguments": part.text}} for part in parts]
            return [{"tool_calls": [{"index": 0, "function": {"arguments": part.text}}]} for part in parts]
        return [{"reasoning_content" if part.reasoning else "content": part.text} for part in parts]

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": delta.get("text", ""), "logprobs": None, "finish_reason": reason}
        return self._envelope(self._chunk_object(), [choice])

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.work.served.name,
            "choices": choices,
        }

    def _with_report(self, body: dict[str, Any], finished: Finished) -> dict[str, Any]:
        """`body` with the budget's `x_mllm_cpu` report when the request had a budget."""
        task, budgeted = self.work.task, finished.budgeted
        if task is None or task.budget is None or budgeted is None:
            return body
        body["x_mllm_cpu"] = {
            "task": task.preset.name,
            "budget": task.budget.tokens,
            "forced": budgeted.forced,
            "reasoning_tokens": budgeted.reasoning_tokens,
            "answer_tokens": budgeted.answer_tokens,
        }
        return body


def _usage(finished: Finished) -> dict[str, int]:
    generation = finished.generation
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.generated_tokens,
        "total_tokens": generation.prompt_tokens + generation.generated_tokens,
    }


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for event in rest:
        yield event


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def _send_stream(send: Send, receive: Receive, chunks: AsyncIterator[bytes]) -> None:
    """Send an SSE body as `chunks` yields it; a client that leaves ends it at the next chunk."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    gone = asyncio.Event()

    async def listen() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    listener = asyncio.create_task(listen())
    try:
        async for data in chunks:
            if gone.is_set():
                return
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:  # the client left while a chunk was sent
        return
    finally:
        listener.cancel()


async def send_json(send: Send, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
    """A whole JSON response."""
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: RequestError) -> None:
    """A refused request, in OpenAI's error shape."""
    await send_json(send, error.status, error.to_dict(), error.headers)
