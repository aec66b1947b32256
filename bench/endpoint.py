"""Serving speed of OpenAI-compatible endpoints: time to first token, per-request and aggregate decode t/s.

At each concurrency N, N streamed chat requests (the TTFT test's question, the math task's
system prompt) are sent at once; each request's first and last text chunk (answer or reasoning) give its time to
first token and its decode speed, and all tokens over the wall time give the aggregate speed.
"""

from __future__ import annotations

import datetime
import io
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.endpoint import EndpointBackend, describe_error, request_options
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages
from mllm_cpu.tasks import get_preset

from .boards import FitCheck
from .speed import CHAT_PROBLEM

SCHEMA = "mllm-cpu-bench-endpoint/1"
MAX_CONCURRENCY = 256


@dataclass
class RequestTiming:
    """One streamed request: nanoseconds to the first content chunk and from it to the last, tokens."""

    ttft_ns: int
    decode_ns: int
    prompt_tokens: int
    tokens: int

    @property
    def decode_ts(self) -> float:
        """Tokens per second after the first one, as the user of this request sees it."""
        return (self.tokens - 1) / (self.decode_ns / 1e9) if self.tokens > 1 and self.decode_ns > 0 else 0.0


@dataclass
class ConcurrencyResult:
    """All requests of one endpoint at one concurrency, the wall time from the first send to the last chunk."""

    endpoint: str
    model: str
    concurrency: int
    n_gen: int
    wall_ns: int
    requests: list[RequestTiming] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ttft_ms(self) -> float:
        """Mean time to first token, milliseconds."""
        return statistics.fmean(r.ttft_ns for r in self.requests) / 1e6 if self.requests else 0.0

    @property
    def ttft_stdev_ms(self) -> float:
        """Standard deviation of the time to first token, milliseconds."""
        return statistics.stdev(r.ttft_ns for r in self.requests) / 1e6 if len(self.requests) > 1 else 0.0

    @property
    def decode_ts(self) -> float:
        """Mean per-request decode speed, tokens/s."""
        return statistics.fmean(r.decode_ts for r in self.requests) if self.requests else 0.0

    @property
    def decode_stdev_ts(self) -> float:
        """Standard deviation of the per-request decode speed."""
        return statistics.stdev(r.decode_ts for r in self.requests) if len(self.requests) > 1 else 0.0

    @property
    def aggregate_ts(self) -> float:
        """Every generated token over the wall time, tokens/s."""
        return sum(r.tokens for r in self.requests) / (self.wall_ns / 1e9) if self.wall_ns > 0 else 0.0

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens, as the server counted it (0 when it does not say)."""
        return max((r.prompt_tokens for r in self.requests), default=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, derived values included."""
        return {
            **asdict(self),
            "prompt_tokens": self.prompt_tokens,
            "ttft_ms": self.ttft_ms,
            "ttft_stdev_ms": self.ttft_stdev_ms,
            "decode_ts": self.decode_ts,
            "decode_stdev_ts": self.decode_stdev_ts,
            "aggregate_ts": self.aggregate_ts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConcurrencyResult:
        """The inverse of `to_dict`."""
        values = {name: data[name] for name in cls.__dataclass_fields__}
        values["requests"] = [RequestTiming(**r) for r in data["requests"]]
        return cls(**values)


@dataclass
class EndpointRun:
    """A whole endpoint benchmark: when, the parameters and every concurrency's result."""

    created: str
    parameters: dict[str, Any]
    results: list[ConcurrencyResult] = field(default_factory=list)
    schema: str = SCHEMA
    fits: list[FitCheck] = field(default_factory=list)
    """The memory fit at each level of a local run (`bench --parallel`); empty for servers."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data: dict[str, Any] = {
            "schema": self.schema,
            "created": self.created,
            "parameters": self.parameters,
            "results": [r.to_dict() for r in self.results],
        }
        if self.fits:
            data["fits"] = [fit.to_dict() for fit in self.fits]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointRun:
        """The inverse of `to_dict`."""
        return cls(
            created=data["created"],
            parameters=data["parameters"],
            results=[ConcurrencyResult.from_dict(r) for r in data["results"]],
            schema=data.get("schema", SCHEMA),
            fits=[FitCheck.from_dict(fit) for fit in data.get("fits", [])],
        )


def check_concurrency(levels: list[int]) -> None:
    """InputError for a concurrency outside 1..256."""
    for level in levels:
        if not 1 <= level <= MAX_CONCURRENCY:
            raise InputError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {level}")


def _timed_request(backend: EndpointBackend, options: SamplingOptions) -> RequestTiming:
    """Stream one chat request; at least `options.max_tokens` tokens are asked for where the server allows."""
    import openai

    endpoint = backend.endpoints[0]
    fields = request_options(options)
    fields["extra_body"] = {**fields.get("extra_body", {}), "min_tokens": options.max_tokens}
    start = time.perf_counter_ns()
    first = last = 0
    chunks = 0
    usage: Any = None
    try:
        stream = endpoint.client.chat.completions.create(
            model=backend.model,
            messages=problem_messages(CHAT_PROBLEM, get_preset("math")),
            stream=True,
            **fields,
        )
        for chunk in stream:
            usage = chunk.usage or usage
            if any(choice.delta and _delta_text(choice.delta) for choice in chunk.choices):
                last = time.perf_counter_ns()
                first = first or last
                chunks += 1
    except openai.OpenAIError as error:
        raise InputError(f"{endpoint.url}: {describe_error(error)}") from None
    first = first or time.perf_counter_ns()
    return RequestTiming(
        ttft_ns=first - start,
        decode_ns=max(last - first, 0),
        prompt_tokens=usage.prompt_tokens if usage else 0,
        tokens=usage.completion_tokens if usage else chunks,
    )


def _delta_text(delta: Any) -> str | None:
    """A stream delta's text: the answer, or the reasoning where the server splits it off
    (`reasoning_content`: mllm-cpu serve, llama-server's deepseek format, vLLM)."""
    return delta.content or getattr(delta, "reasoning_content", None)


def measure_concurrency(backend: EndpointBackend, concurrency: int, options: SamplingOptions) -> ConcurrencyResult:
    """`concurrency` requests sent at once; failed requests are counted as errors."""
    timings: list[RequestTiming] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(concurrency + 1)

    def one() -> None:
        ready.wait()
        try:
            timing = _timed_request(backend, options)
        except InputError as error:
            with lock:
                errors.append(str(error))
            return
        with lock:
            timings.append(timing)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter_ns()
    for thread in threads:
        thread.join()
    wall = time.perf_counter_ns() - start
    return ConcurrencyResult(
        endpoint=backend.endpoints[0].url,
        model=backend.model,
        concurrency=concurrency,
        n_gen=options.max_tokens,
        wall_ns=wall,
        requests=timings,
        errors=errors,
    )


def run_endpoint_benchmark(
    urls: list[str],
    api_key: str | None,
    model: str | None,
    concurrency: list[int],
    n_gen: int,
    warmup: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> EndpointRun:
    """Measure each endpoint at each concurrency (greedy, `n_gen` tokens per request)."""
    check_concurrency(concurrency)
    if n_gen < 2:
        raise InputError(f"-n/--n-gen must be at least 2 to time decoding, got {n_gen}")
    options = SamplingOptions(temperature=0.0, top_k=0, top_p=1.0, max_tokens=n_gen)
    run = EndpointRun(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        parameters={"concurrency": concurrency, "n_gen": n_gen, "warmup": warmup, "question": CHAT_PROBLEM},
    )
    for url in urls:
        backend = EndpointBackend([url], api_key, model)
        if warmup:
            if on_step:
                on_step(f"{url}: warm-up")
            _timed_request(backend, SamplingOptions(temperature=0.0, max_tokens=2))
        for level in concurrency:
            if on_step:
                on_step(f"{url}: {level} at once")
            run.results.append(measure_concurrency(backend, level, options))
    return run


COLUMNS = [
    "endpoint",
    "model",
    "concurrency",
    "prompt",
    "n_gen",
    "TTFT ms",
    "decode t/s per request",
    "aggregate t/s",
    "errors",
]


def endpoint_rows(run: EndpointRun) -> tuple[list[str], list[list[str]]]:
    """Column names and text cells of the endpoint table."""
    rows = [
        [
            r.endpoint,
            r.model,
            str(r.concurrency),
            str(r.prompt_tokens) if r.prompt_tokens else "-",
            str(r.n_gen),
            f"{r.ttft_ms:.1f} ± {r.ttft_stdev_ms:.1f}",
            f"{r.decode_ts:.2f} ± {r.decode_stdev_ts:.2f}",
            f"{r.aggregate_ts:.2f}",
            str(len(r.errors)),
        ]
        for r in run.results
    ]
    return COLUMNS, rows


def endpoint_caption(run: EndpointRun) -> str:
    """One line on what was measured."""
    if "parallel" in run.parameters:
        return (
            f"greedy requests of exactly {run.parameters['n_gen']} tokens, all of a level submitted at once to one "
            f"batched engine ({run.parameters['threads']} threads, a {run.parameters['n_ctx']}-token context each); "
            "TTFT and decode speed from token times; aggregate = all tokens / wall time"
        )
    return (
        f"greedy chat requests of up to {run.parameters['n_gen']} tokens, all of a concurrency sent at once; "
        "TTFT and decode speed from streamed chunk times; aggregate = all tokens / wall time"
    )


CSV_FIELDS = [
    "endpoint",
    "model",
    "concurrency",
    "prompt_tokens",
    "n_gen",
    "requests",
    "errors",
    "ttft_ms",
    "ttft_stdev_ms",
    "decode_ts",
    "decode_stdev_ts",
    "aggregate_ts",
    "wall_seconds",
]


def to_csv(run: EndpointRun) -> str:
    """CSV with a header row, one row per endpoint and concurrency."""
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in run.results:
        writer.writerow(
            {
                "endpoint": r.endpoint,
                "model": r.model,
                "concurrency": r.concurrency,
                "prompt_tokens": r.prompt_tokens,
                "n_gen": r.n_gen,
                "requests": len(r.requests),
                "errors": len(r.errors),
                "ttft_ms": repr(r.ttft_ms),
                "ttft_stdev_ms": repr(r.ttft_stdev_ms),
                "decode_ts": repr(r.decode_ts),
                "decode_stdev_ts": repr(r.decode_stdev_ts),
                "aggregate_ts": repr(r.aggregate_ts),
                "wall_seconds": repr(r.wall_ns / 1e9),
            }
        )
    return buffer.getvalue()


def render_endpoint(run: EndpointRun, output_format: str) -> str:
    """The run as json, csv or md (the formats of local bench)."""
    from .report import FORMATS, _markdown_table

    if output_format == "json":
        return json.dumps(run.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if output_format == "csv":
        return to_csv(run)
    if output_format == "md":
        columns, rows = endpoint_rows(run)
        text = _markdown_table(columns, rows) + "\n\n" + endpoint_caption(run) + "\n"
        if run.fits:
            from .parallel import fit_rows

            text += "\n" + _markdown_table(*fit_rows(run.fits)) + "\n"
        return text
    raise InputError(f"unknown output format {output_format}; choose from: {', '.join(FORMATS)}")
