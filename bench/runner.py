"""A whole benchmark run: resolve models, measure bandwidth, then each model in turn.

Per model: peak memory in a fresh subprocess (at the fit context), then, in this process,
load time, every pp/tg test of the grid and the time to first token, then the fit check.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from mllm_cpu.convert.gguf_summary import summarize_header
from mllm_cpu.convert.pipeline import ConvertProgress, SilentProgress
from mllm_cpu.convert.quant_types import QuantLevel
from mllm_cpu.core.errors import InputError
from mllm_cpu.engine import MIN_CONTEXT
from mllm_cpu.hardware import logical_cores
from mllm_cpu.model_file import ModelFile, validate_model_file
from mllm_cpu.store import ConversionDisplay, resolve_model

from .bandwidth import Bandwidth, measure_read_bandwidth
from .boards import Board, fit_check, parse_board
from .llama_session import DEFAULT_BATCH, DEFAULT_FLASH_ATTN, DEFAULT_UBATCH, loaded_model, parse_flash_attn
from .machine import machine_info, package_versions
from .memory import measure_memory
from .results import BenchRun, ModelResult, SpeedResult
from .roofline import bytes_per_token, roofline_tokens_per_second
from .speed import SpeedTest, run_speed_test, speed_tests, time_to_first_token
from .synthetic_models import synthetic_model_files

BENCH_CONTEXT = 4096
"""The context of the fit check, memory and TTFT when --ctx is not given (a model trained on fewer tokens, such
as MobileLLM v1's 2048, is measured at its own)."""


def bench_context(model: ModelFile, n_ctx: int | None) -> int:
    """The context `model` is measured at: `n_ctx` (--ctx), else BENCH_CONTEXT or the model's trained context."""
    return n_ctx or min(BENCH_CONTEXT, model.n_ctx_train)


class BenchProgress(ConvertProgress, Protocol):
    """Receives conversion progress and the benchmark's steps (the CLI draws bars)."""

    def begin(self, total_steps: int) -> None:
        """The measurements start; they take `total_steps` steps."""

    def stage(self, description: str) -> None:
        """Say what is being measured now."""

    def advance(self) -> None:
        """One step is done."""

    def note(self, text: str) -> None:
        """A short status before the measurements, e.g. a checkpoint being written."""


class _Silent(SilentProgress):
    def begin(self, total_steps: int) -> None:
        pass

    def stage(self, description: str) -> None:
        pass

    def advance(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class BenchOptions:
    """What to measure; the defaults are llama-bench's (pp512, tg128, depth 0, flash attention auto, 5 repetitions)."""

    prompts: list[int] = field(default_factory=lambda: [512])
    gens: list[int] = field(default_factory=lambda: [128])
    threads: list[int] | None = None
    batches: list[int] = field(default_factory=lambda: [DEFAULT_BATCH])
    ubatches: list[int] = field(default_factory=lambda: [DEFAULT_UBATCH])
    depths: list[int] = field(default_factory=lambda: [0])
    flash_attn: list[str] = field(default_factory=lambda: [DEFAULT_FLASH_ATTN])
    repetitions: int = 5
    n_ctx: int | None = None
    """--ctx; None: each model's `bench_context`."""
    board: str = "laptop"
    warmup: bool = True
    bandwidth: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise InputError on any impossible value, before anything is measured."""
        for name, values, least in (
            ("-p/--n-prompt", self.prompts, 0),
            ("-n/--n-gen", self.gens, 0),
            ("-t/--threads", self.threads or [1], 1),
            ("-b/--batch-size", self.batches, 1),
            ("-ub/--ubatch-size", self.ubatches, 1),
            ("-d/--n-depth", self.depths, 0),
        ):
            if not values:
                raise InputError(f"{name} is empty")
            bad = [v for v in values if v < least]
            if bad:
                raise InputError(f"{name} must be at least {least}, got {bad[0]}")
        if not self.flash_attn:
            raise InputError("-fa/--flash-attn is empty")
        for value in self.flash_attn:
            parse_flash_attn(value)
        if not any(self.prompts) and not any(self.gens):
            raise InputError("nothing to measure: -p and -n are both 0")
        if self.repetitions < 1:
            raise InputError(f"-r/--repetitions must be at least 1, got {self.repetitions}")
        if self.n_ctx is not None and self.n_ctx < MIN_CONTEXT:
            raise InputError(f"--ctx must be at least {MIN_CONTEXT}, got {self.n_ctx}")
        parse_board(self.board)

    def thread_counts(self, board: Board) -> list[int]:
        """-t values, or the board's threads capped at this machine's logical cores."""
        return list(self.threads) if self.threads else [min(board.threads, logical_cores())]


def resolve_models(
    specs: list[str],
    synthetic_sizes: list[str],
    levels: list[QuantLevel],
    progress: BenchProgress,
    display: ConversionDisplay | None = None,
) -> list[Path]:
    """GGUF paths from files/store names (a checkpoint folder converted once, shown by `display`),
    then the synthetic ones (converted once into the store, shown by `progress`)."""
    paths = [resolve_model(spec, display) for spec in specs]
    for path in paths:
        validate_model_file(path)
    if synthetic_sizes:
        paths += synthetic_model_files(
            synthetic_sizes,
            levels,
            progress,
            lambda size: progress.note(f"random-weight {size} checkpoint (written once)"),
        )
    if not paths:
        raise InputError("give GGUF files (or store names) to measure, or --synthetic SIZES")
    return list(dict.fromkeys(paths))


def run_benchmark(paths: list[Path], options: BenchOptions, progress: BenchProgress | None = None) -> BenchRun:
    """Measure every model with every test; returns the complete run."""
    progress = progress or _Silent()
    options.validate()
    board = parse_board(options.board)
    threads = options.thread_counts(board)
    files = [validate_model_file(path) for path in paths]
    tests = list(
        speed_tests(
            options.prompts,
            options.gens,
            threads,
            options.batches,
            options.ubatches,
            options.depths,
            options.flash_attn,
        )
    )
    longest = max(test.n_tokens + test.n_depth for test in tests)
    for model_file in files:
        if options.n_ctx is not None and options.n_ctx > model_file.n_ctx_train:
            raise InputError(
                f"--ctx {options.n_ctx} exceeds the training context of {model_file.path.name} "
                f"({model_file.n_ctx_train})"
            )
        if longest > model_file.n_ctx_train:
            raise InputError(
                f"a test of {longest} tokens (depth included) exceeds the training context of "
                f"{model_file.path.name} ({model_file.n_ctx_train})"
            )
    runs_per_test = options.repetitions + (1 if options.warmup else 0)
    progress.begin((1 if options.bandwidth else 0) + len(paths) * (2 + len(tests) * runs_per_test + runs_per_test))
    bandwidth = None
    if options.bandwidth:
        progress.stage("memory bandwidth")
        bandwidth = measure_read_bandwidth()
        progress.advance()
    run = BenchRun(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_info().to_dict(),
        versions=package_versions(),
        bandwidth=bandwidth,
        parameters={
            **asdict(options),
            "threads": threads,
            "board": asdict(board),
            "type_k": "f16",
            "type_v": "f16",
            "memory_threads": threads[0],
        },
    )
    for model_file in files:
        _bench_model(run, model_file, tests, options, board, threads[0], bandwidth, progress)
    return run


def _bench_model(
    run: BenchRun,
    model_file: ModelFile,
    tests: list[SpeedTest],
    options: BenchOptions,
    board: Board,
    threads: int,
    bandwidth: Bandwidth | None,
    progress: BenchProgress,
) -> None:
    path = model_file.path
    name = path.stem
    n_ctx = bench_context(model_file, options.n_ctx)
    progress.stage(f"{name}: peak memory in a fresh process")
    memory = measure_memory(path, n_ctx, threads, options.ubatches[0])
    progress.advance()
    progress.stage(f"{name}: loading")
    summary = summarize_header(model_file.header)
    with loaded_model(path) as model:
        progress.advance()
        token_bytes = bytes_per_token(model.file.header)
        roofline = roofline_tokens_per_second(bandwidth.best, token_bytes) if bandwidth else None
        for test in tests:
            progress.stage(f"{name}: {test.name}, {test.threads} threads")
            samples = run_speed_test(
                model, test, options.repetitions, options.warmup, options.seed, on_run=progress.advance
            )
            run.results.append(
                SpeedResult(
                    model=str(path),
                    test=test.name,
                    n_prompt=test.n_prompt,
                    n_gen=test.n_gen,
                    threads=test.threads,
                    n_batch=test.n_batch,
                    n_ubatch=test.n_ubatch,
                    samples_ns=samples.samples_ns,
                    counted_tokens=samples.counted_tokens,
                    avg_ts=samples.mean_ts,
                    stdev_ts=samples.stdev_ts,
                    roofline_ts=roofline if test.kind == "tg" else None,
                    n_depth=test.n_depth,
                    flash_attn=test.flash_attn,
                )
            )
        progress.stage(f"{name}: time to first token")
        first_token = time_to_first_token(
            model, threads, n_ctx, options.repetitions, options.warmup, on_run=progress.advance
        )
        compute = memory.logged_bytes("compute") + memory.logged_bytes("output")
        spec = model.file
        run.models.append(
            ModelResult(
                name=_display_name(path, summary.file_type),
                path=str(path),
                file_type=summary.file_type,
                type_mix=summary.type_mix,
                file_bytes=summary.file_bytes,
                tensor_bytes=model.tensor_bytes,
                n_params=model.n_params,
                bytes_per_token=token_bytes,
                n_layer=spec.n_layer,
                n_head_kv=spec.n_head_kv,
                head_dim=spec.head_dim,
                n_ctx_train=spec.n_ctx_train,
                load_seconds=model.load_seconds,
                ttft_prompt_tokens=first_token.prompt_tokens,
                ttft_samples_ns=first_token.samples_ns,
                memory=memory,
                fit=fit_check(
                    board,
                    spec.n_layer,
                    spec.n_head_kv,
                    spec.head_dim,
                    spec.n_ctx_train,
                    model.tensor_bytes,
                    compute,
                    n_ctx,
                ),
            )
        )


def _display_name(path: Path, file_type: str) -> str:
    """The file name without ".gguf" and without a trailing quant label such as "-Q4_0"."""
    stem = path.stem
    suffix = f"-{file_type}".lower()
    return stem[: -len(suffix)] if stem.lower().endswith(suffix) and len(stem) > len(suffix) else stem
