"""llama.cpp's low-level C API for measuring: load a model, open contexts, fill batches.

Everything here mirrors what llama-bench passes to llama.cpp (default model parameters:
mmap on, CPU repacking on; context parameters: F16 KV cache, flash attention "auto" unless
asked otherwise, n_batch 2048, n_ubatch 512) so that a number measured here means the same
as llama-bench's.
The buffer sizes llama.cpp logs while loading are kept, as llama.cpp reports them.
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.core.errors import InputError
from mllm_cpu.core.llama_log import captured_llama_log, last_error
from mllm_cpu.engine import FLASH_ATTENTION
from mllm_cpu.load_check import prepare_load
from mllm_cpu.model_file import ModelFile, validate_model_file

DEFAULT_BATCH = 2048
DEFAULT_UBATCH = 512
FLASH_ATTN_TYPES = {"auto": -1, "off": 0, "on": 1}
"""llama-bench's -fa values and llama.cpp's `llama_flash_attn_type` for each."""
DEFAULT_FLASH_ATTN = "auto"
RUNTIME_FLASH_ATTN = "on" if FLASH_ATTENTION else "off"
"""The -fa value chat, solve and serve run with (mllm_cpu.engine.FLASH_ATTENTION)."""

_BUFFER_LINE = re.compile(r"(?P<buffer>\S+)\s+(?P<kind>model|KV|compute|output) buffer size =\s*(?P<mib>[0-9.]+) MiB")
_KV_CELLS = re.compile(r"llama_kv_cache: size =\s*[0-9.]+ MiB \(\s*(?P<cells>\d+) cells")
_backend_ready = False


@dataclass(frozen=True)
class LoggedBuffers:
    """Buffer sizes in MiB as llama.cpp logs them (two decimals), by kind and buffer name."""

    sizes_mib: dict[str, dict[str, float]] = field(default_factory=dict)
    kv_cells: int | None = None

    def total_mib(self, kind: str) -> float:
        """Sum over the buffers of one kind: "model", "KV", "compute" or "output"."""
        return sum(self.sizes_mib.get(kind, {}).values())


def parse_logged_buffers(lines: Sequence[str]) -> LoggedBuffers:
    """Read the "... buffer size = N MiB" and "llama_kv_cache: size = ... (N cells" lines of a log."""
    sizes: dict[str, dict[str, float]] = {}
    cells = None
    for line in "".join(lines).splitlines():
        if "matches expectation" in line:
            continue
        match = _BUFFER_LINE.search(line)
        if match:
            sizes.setdefault(match["kind"], {})[match["buffer"]] = float(match["mib"])
        cells_match = _KV_CELLS.search(line)
        if cells_match:
            cells = int(cells_match["cells"])
    return LoggedBuffers(sizes, cells)


def ensure_backend() -> None:
    """Initialize llama.cpp's backends once per process."""
    global _backend_ready
    import llama_cpp

    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass
class LoadedModel:
    """A model loaded through the C API; free it with `close()` (or use `loaded_model`)."""

    file: ModelFile
    handle: Any
    vocab: Any
    load_seconds: float
    n_params: int
    tensor_bytes: int
    n_vocab: int
    add_bos: bool
    bos: int
    buffers: LoggedBuffers

    def close(self) -> None:
        """Free the model (idempotent)."""
        import llama_cpp

        if self.handle is not None:
            llama_cpp.llama_model_free(self.handle)
            self.handle = None


def load_model(path: Path) -> LoadedModel:
    """Validate a GGUF, then load it with llama.cpp's default model parameters (as llama-bench)."""
    import llama_cpp

    model_file = validate_model_file(Path(path))
    prepare_load(model_file.path)
    ensure_backend()
    params = llama_cpp.llama_model_default_params()
    with captured_llama_log() as log:
        start = time.perf_counter()
        handle = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        seconds = time.perf_counter() - start
    if not handle:
        raise InputError(f"llama.cpp could not load {path}: {last_error(log)}")
    vocab = llama_cpp.llama_model_get_vocab(handle)
    return LoadedModel(
        file=model_file,
        handle=handle,
        vocab=vocab,
        load_seconds=seconds,
        n_params=int(llama_cpp.llama_model_n_params(handle)),
        tensor_bytes=int(llama_cpp.llama_model_size(handle)),
        n_vocab=int(llama_cpp.llama_vocab_n_tokens(vocab)),
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        bos=int(llama_cpp.llama_vocab_bos(vocab)),
        buffers=parse_logged_buffers(log),
    )


@contextmanager
def loaded_model(path: Path) -> Iterator[LoadedModel]:
    """`load_model` as a context manager that frees the model afterwards."""
    model = load_model(path)
    try:
        yield model
    finally:
        model.close()


@dataclass(frozen=True)
class ContextSettings:
    """The context parameters a measurement varies; the rest are llama.cpp's defaults."""

    n_ctx: int
    threads: int
    n_batch: int = DEFAULT_BATCH
    n_ubatch: int = DEFAULT_UBATCH
    flash_attn: str = DEFAULT_FLASH_ATTN
    """A key of FLASH_ATTN_TYPES."""


def parse_flash_attn(text: str) -> str:
    """llama-bench's -fa spellings (on/off/auto, 1/0) -> a key of FLASH_ATTN_TYPES."""
    value = {"1": "on", "0": "off"}.get(text.strip().lower(), text.strip().lower())
    if value not in FLASH_ATTN_TYPES:
        raise InputError(f"-fa/--flash-attn takes on, off or auto, got {text!r}")
    return value


@dataclass
class OpenContext:
    """A llama_context with the buffer sizes llama.cpp logged while creating it."""

    handle: Any
    n_ctx: int
    buffers: LoggedBuffers

    @property
    def memory(self) -> Any:
        """The context's llama_memory_t (the KV cache)."""
        import llama_cpp

        return llama_cpp.llama_get_memory(self.handle)


@contextmanager
def open_context(model: LoadedModel, settings: ContextSettings) -> Iterator[OpenContext]:
    """Create a context like llama-bench's (F16 KV, flash attention as asked); freed on exit."""
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = settings.n_ctx
    params.n_batch = settings.n_batch
    params.n_ubatch = settings.n_ubatch
    params.n_threads = settings.threads
    params.n_threads_batch = settings.threads
    params.type_k = llama_cpp.GGML_TYPE_F16
    params.type_v = llama_cpp.GGML_TYPE_F16
    params.flash_attn_type = FLASH_ATTN_TYPES[settings.flash_attn]
    params.offload_kqv = True
    params.swa_full = False
    params.embeddings = False
    with captured_llama_log() as log:
        handle = llama_cpp.llama_init_from_model(model.handle, params)
    if not handle:
        raise InputError(f"llama.cpp could not create a context of {settings.n_ctx} tokens: {last_error(log)}")
    context = OpenContext(handle, int(llama_cpp.llama_n_ctx(handle)), parse_logged_buffers(log))
    try:
        yield context
    finally:
        with captured_llama_log():
            llama_cpp.llama_free(handle)


@contextmanager
def token_batch(capacity: int) -> Iterator[Any]:
    """A llama_batch for up to `capacity` tokens of sequence 0, freed on exit."""
    import llama_cpp

    batch = llama_cpp.llama_batch_init(capacity, 0, 1)
    try:
        yield batch
    finally:
        llama_cpp.llama_batch_free(batch)


def fill_batch(batch: Any, tokens: Sequence[int], first_pos: int, first_output: int | None = None) -> None:
    """Put tokens at consecutive positions of sequence 0.

    Only the last token outputs logits, or every token from index `first_output` on.
    """
    last = len(tokens) - 1
    outputs_from = last if first_output is None else first_output
    for i, token in enumerate(tokens):
        batch.token[i] = token
        batch.pos[i] = first_pos + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = i >= outputs_from
    batch.n_tokens = len(tokens)


def decode(context: OpenContext, batch: Any) -> None:
    """llama_decode; raises on failure."""
    import llama_cpp

    status = llama_cpp.llama_decode(context.handle, batch)
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status}")


def perf_counts(context: OpenContext) -> tuple[int, int]:
    """llama.cpp's own counters: (prompt tokens evaluated, single tokens evaluated)."""
    import llama_cpp

    data = llama_cpp.llama_perf_context(context.handle)
    return int(data.n_p_eval), int(data.n_eval)


def system_info() -> str:
    """llama.cpp's build and CPU feature line (llama_print_system_info)."""
    import llama_cpp

    ensure_backend()
    raw = llama_cpp.llama_print_system_info()
    return (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)).strip()


def logits_rows(context: OpenContext, index: int, rows: int, n_vocab: int) -> Any:
    """The logits of `rows` consecutive outputs from batch token `index` on, as a float32 array
    [rows, n_vocab] viewing llama.cpp's output buffer (valid until the next decode)."""
    import llama_cpp
    import numpy as np

    pointer = llama_cpp.llama_get_logits_ith(context.handle, index)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(rows, n_vocab))


def logits_argmax(context: OpenContext, index: int, n_vocab: int) -> int:
    """The highest-scoring token of output `index` (greedy pick)."""
    import llama_cpp
    import numpy as np

    pointer = llama_cpp.llama_get_logits_ith(context.handle, index)
    values = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
    return int(values.argmax())
