"""What `mllm-cpu bench` was asked for, checked before anything is measured, and one function per mode:
local files or synthetic models (`bench_local`), OpenAI-compatible servers (`bench_endpoints`), batched
decoding of a local file (`bench_parallel`) and speculative decoding (`bench_draft`). The command shows
the progress and prints the results."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from mllm_cpu.convert.atomic_file import ensure_writable_file
from mllm_cpu.convert.quant_types import parse_quant_list
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.values import comma_list
from mllm_cpu.hardware import physical_cores
from mllm_cpu.model_file import validate_model_file
from mllm_cpu.store import DEFAULT_QUANT, ConversionDisplay, resolve_model

from .boards import parse_board
from .draft import DraftBench, run_draft_bench
from .endpoint import EndpointRun, run_endpoint_benchmark
from .llama_session import DEFAULT_FLASH_ATTN, parse_flash_attn
from .parallel import check_levels, run_parallel_benchmark
from .report import chosen_format
from .results import BenchRun
from .runner import BenchOptions, BenchProgress, bench_context, resolve_models, run_benchmark
from .synthetic_models import parse_sizes

BenchMode = Literal["local", "endpoint", "draft", "parallel"]


def int_list(text: str, option: str) -> list[int]:
    """ "1,2,4" -> [1, 2, 4]; anything else is an InputError naming the option."""
    try:
        values = [int(part) for part in comma_list(text)]
    except ValueError:
        raise InputError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"{option} is empty")
    return values


@dataclass(frozen=True)
class BenchRequest:
    """What `mllm-cpu bench` was asked for, the comma lists as given (each mode reads the ones it uses)."""

    models: tuple[str, ...] = ()
    synthetic: str | None = None
    quant: str | None = None
    n_prompt: str = "512"
    n_gen: str = "128"
    threads: str | None = None
    batch_size: str = "2048"
    ubatch_size: str = "512"
    n_depth: str = "0"
    flash_attn: str = DEFAULT_FLASH_ATTN
    repetitions: int = 5
    n_ctx: int | None = None
    """--ctx; None: each model's `runner.bench_context`."""
    board: str = "laptop"
    warmup: bool = True
    bandwidth: bool = True
    json_output: bool = False
    csv_output: bool = False
    md_output: bool = False
    out_file: Path | None = None
    concurrency: str = "1,2,4,8"
    endpoints: tuple[str, ...] = ()
    api_key: str | None = None
    draft: str | None = None
    parallel: str | None = None

    @property
    def mode(self) -> BenchMode:
        """Which measurement: drafting (--draft), servers (--endpoint), batched decoding (--parallel), else
        local files and synthetic models."""
        if self.draft is not None:
            return "draft"
        if self.endpoints:
            return "endpoint"
        return "parallel" if self.parallel is not None else "local"

    def output_format(self) -> str | None:
        """The report format (--json, --csv, --md or --out's suffix), None for tables."""
        return chosen_format(self.json_output, self.csv_output, self.md_output, self.out_file)

    def validate(self) -> None:
        """InputError for flags that do not go together, and for the local mode's impossible values."""
        self.output_format()
        if self.mode == "draft":
            if self.synthetic is not None or len(self.models) != 1 or self.endpoints:
                raise InputError(
                    "bench --draft DRAFT TARGET: name exactly one target model (no --synthetic, no --endpoint)"
                )
        elif self.mode == "endpoint":
            if self.synthetic is not None or len(self.models) > 1:
                raise InputError("with --endpoint, name at most one served model (no --synthetic)")
            if self.parallel is not None:
                raise InputError("--parallel measures a local model; with --endpoint, use --concurrency")
        elif self.mode == "parallel":
            if self.synthetic is not None or len(self.models) != 1:
                raise InputError("bench --parallel LEVELS MODEL: name exactly one model (no --synthetic)")
            check_levels(int_list(self.parallel or "", "--parallel"))
        else:
            self.bench_options().validate()
            if self.quant is not None and self.synthetic is None:
                raise InputError("--quant applies to --synthetic models only")

    def bench_options(self) -> BenchOptions:
        """The local mode's test grid and settings; InputError for a list that is not integers."""
        return BenchOptions(
            prompts=int_list(self.n_prompt, "-p/--n-prompt"),
            gens=int_list(self.n_gen, "-n/--n-gen"),
            threads=int_list(self.threads, "-t/--threads") if self.threads is not None else None,
            batches=int_list(self.batch_size, "-b/--batch-size"),
            ubatches=int_list(self.ubatch_size, "-ub/--ubatch-size"),
            depths=int_list(self.n_depth, "-d/--n-depth"),
            flash_attn=[parse_flash_attn(value) for value in comma_list(self.flash_attn)],
            repetitions=self.repetitions,
            n_ctx=self.n_ctx,
            board=self.board,
            warmup=self.warmup,
            bandwidth=self.bandwidth,
        )


class LocalProgress(Protocol):
    """Where a local benchmark reports progress: one receiver while models are resolved (and synthetic ones
    converted), another while they are measured."""

    def preparing(self) -> AbstractContextManager[BenchProgress]:
        """Progress of resolving and converting the models."""

    def measuring(self) -> AbstractContextManager[BenchProgress]:
        """Progress of the measurements (see BenchProgress)."""


def bench_local(request: BenchRequest, progress: LocalProgress, display: ConversionDisplay | None = None) -> BenchRun:
    """Measure the files and synthetic models of a validated request (synthetic ones converted once;
    a checkpoint folder converted once, shown by `display`)."""
    options = request.bench_options()
    if request.out_file is not None:
        ensure_writable_file(request.out_file, "--out")
    sizes = parse_sizes(request.synthetic) if request.synthetic is not None else []
    levels = parse_quant_list(request.quant or DEFAULT_QUANT)
    with progress.preparing() as preparing:
        paths = resolve_models(list(request.models), sizes, levels, preparing, display)
    with progress.measuring() as measuring:
        return run_benchmark(paths, options, measuring)


def bench_endpoints(request: BenchRequest, on_step: Callable[[str], None]) -> EndpointRun:
    """Measure the --endpoint servers of a validated request at each --concurrency."""
    if request.out_file is not None:
        ensure_writable_file(request.out_file, "--out")
    gens = int_list(request.n_gen, "-n/--n-gen")
    levels = int_list(request.concurrency, "--concurrency")
    return run_endpoint_benchmark(
        list(request.endpoints),
        request.api_key,
        request.models[0] if request.models else None,
        levels,
        gens[0],
        warmup=request.warmup,
        on_step=on_step,
    )


def bench_parallel(
    request: BenchRequest, on_step: Callable[[str], None], display: ConversionDisplay | None = None
) -> EndpointRun:
    """Batched decoding of the one model of a validated request at each --parallel level."""
    assert request.parallel is not None
    if request.out_file is not None:
        ensure_writable_file(request.out_file, "--out")
    threads = int_list(request.threads, "-t/--threads")[0] if request.threads is not None else physical_cores()
    path = resolve_model(request.models[0], display)
    return run_parallel_benchmark(
        path,
        int_list(request.parallel, "--parallel"),
        int_list(request.n_gen, "-n/--n-gen")[0],
        n_ctx=bench_context(validate_model_file(path), request.n_ctx),
        threads=threads,
        board=parse_board(request.board),
        warmup=request.warmup,
        on_step=on_step,
    )


def bench_draft(
    request: BenchRequest, on_step: Callable[[str], None], display: ConversionDisplay | None = None
) -> DraftBench:
    """Decode costs of the --draft model and the target of a validated request, predicted and measured speed-up."""
    assert request.draft is not None
    real_tokens = int_list(request.n_gen, "-n/--n-gen")[0]
    threads = int_list(request.threads, "-t/--threads")[0] if request.threads is not None else physical_cores()
    return run_draft_bench(
        resolve_model(request.draft, display),
        resolve_model(request.models[0], display),
        threads,
        repetitions=request.repetitions,
        real_tokens=real_tokens,
        on_step=on_step,
    )
