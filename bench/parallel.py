"""Batched decoding on a local file: `bench --parallel 1,2,4,8`, the local counterpart of `--endpoint --concurrency`.

In the spirit of llama.cpp's llama-batched-bench: one `BatchedEngine` with as many sequences as
the largest level, and at each level N, N greedy requests of the time-to-first-token test's
question (the math task's system prompt, shared and evaluated once) submitted at once, each
generating exactly `n_gen` tokens (end-of-generation tokens are masked, as llama-bench ignores
EOS). Each request's first and last token give its time to first token and its decode speed; all
tokens over the wall time give the aggregate speed. The results have the endpoint benchmark's
shape (one `ConcurrencyResult` per level), plus the memory fit of N sequences' KV caches on the
chosen board.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mllm_cpu.batched import MAX_PARALLEL, BatchedEngine, BatchRequest, Finished, Piece, Stream
from mllm_cpu.core.errors import InputError
from mllm_cpu.model_file import ModelFile
from mllm_cpu.sampling import SamplingOptions
from mllm_cpu.solver import problem_messages
from mllm_cpu.tasks import get_preset

from .boards import Board, FitCheck, fit_check
from .endpoint import ConcurrencyResult, EndpointRun, RequestTiming
from .memory import measure_memory
from .speed import CHAT_PROBLEM

LOCAL = "local"
"""The endpoint column of a local run."""
MASKED = -1e30
"""The logit bias that keeps end-of-generation tokens from being sampled."""


class _StopTokens(Protocol):
    model: ModelFile

    def is_stop(self, token: int) -> bool: ...


def exact_length_options(engine: _StopTokens, n_gen: int) -> SamplingOptions:
    """Greedy sampling of exactly `n_gen` tokens: every end-of-generation token of the engine's model masked."""
    masked = {token: MASKED for token in range(engine.model.n_vocab) if engine.is_stop(token)}
    return SamplingOptions(temperature=0.0, top_k=0, top_p=1.0, max_tokens=n_gen, logit_bias=masked)


def check_levels(levels: list[int]) -> None:
    """InputError for a level outside 1..MAX_PARALLEL."""
    for level in levels:
        if not 1 <= level <= MAX_PARALLEL:
            raise InputError(f"--parallel must be between 1 and {MAX_PARALLEL}, got {level}")


def run_parallel_benchmark(
    path: Path,
    levels: list[int],
    n_gen: int,
    *,
    n_ctx: int,
    threads: int,
    board: Board,
    warmup: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> EndpointRun:
    """Measure `path` decoding 1..N sequences together at each level; `n_ctx` is each sequence's context."""
    check_levels(levels)
    if n_gen < 2:
        raise InputError(f"-n/--n-gen must be at least 2 to time decoding, got {n_gen}")
    run = EndpointRun(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        parameters={
            "parallel": levels,
            "n_gen": n_gen,
            "n_ctx": n_ctx,
            "threads": threads,
            "warmup": warmup,
            "question": CHAT_PROBLEM,
        },
    )
    if on_step:
        on_step(f"{path.name}: buffers at a {n_ctx}-token context, in a fresh process")
    memory = measure_memory(path, n_ctx, threads, 512)
    engine = BatchedEngine(path, parallel=max(levels), n_ctx=n_ctx, threads=threads)
    try:
        tokens = engine.tokenize(engine.render_chat(problem_messages(CHAT_PROBLEM, get_preset("math"))))
        if len(tokens) + n_gen > engine.n_ctx:
            raise InputError(f"-n/--n-gen {n_gen} and the {len(tokens)}-token prompt do not fit --ctx {n_ctx}")
        options = exact_length_options(engine, n_gen)
        request = BatchRequest(tokens, options)
        if warmup:
            if on_step:
                on_step(f"{path.name}: warm-up")
            _measure_level(engine, BatchRequest(tokens, SamplingOptions(temperature=0.0, max_tokens=2)), 1)
        for level in levels:
            if on_step:
                on_step(f"{path.name}: {level} at once")
            wall, timings = _measure_level(engine, request, level)
            run.results.append(
                ConcurrencyResult(
                    endpoint=LOCAL, model=path.stem, concurrency=level, n_gen=n_gen, wall_ns=wall, requests=timings
                )
            )
        weights = engine.weight_bytes
    finally:
        engine.close()
    compute = memory.logged_bytes("compute") + memory.logged_bytes("output")
    model = engine.model
    run.fits = [
        fit_check(
            board,
            model.n_layer,
            model.n_head_kv,
            model.head_dim,
            model.n_ctx_train,
            weights,
            compute,
            n_ctx,
            sequences=level,
        )
        for level in levels
    ]
    return run


def _measure_level(engine: BatchedEngine, request: BatchRequest, level: int) -> tuple[int, list[RequestTiming]]:
    """Submit `level` copies of `request` at once; the wall time and each one's timing."""
    timings: list[RequestTiming] = []
    lock = threading.Lock()
    start = time.perf_counter_ns()
    streams = [engine.submit(request) for _ in range(level)]

    def read(stream: Stream) -> None:
        first = last = 0
        generation = None
        for event in stream:
            if isinstance(event, Piece) and event.token is not None:
                last = time.perf_counter_ns()
                first = first or last
            elif isinstance(event, Finished):
                generation = event.generation
        if generation is None:
            raise InputError("a benchmark sequence failed")
        timing = RequestTiming(
            first - start, max(last - first, 0), generation.prompt_tokens, generation.generated_tokens
        )
        with lock:
            timings.append(timing)

    readers = [threading.Thread(target=read, args=(stream,), daemon=True) for stream in streams]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    wall = time.perf_counter_ns() - start
    if len(timings) != level:
        raise InputError(f"{level - len(timings)} of {level} benchmark sequences failed")
    return wall, timings


def fit_rows(fits: list[FitCheck]) -> tuple[list[str], list[list[str]]]:
    """Column names and text cells of the memory fit of N sequences."""
    from .report import fit_cells

    columns = ["sequences", "board", "ctx each", "weights", "KV cache", "compute", "total", "budget", "fits"]
    return columns, [[str(fit.sequences), *fit_cells(fit)] for fit in fits]
