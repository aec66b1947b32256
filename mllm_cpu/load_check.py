"""Before a GGUF first loads in this process, it loads and decodes once in a child process.

Validation (`model_file`) refuses the damaged files it knows, but llama.cpp has asserts no
validator foresees, and an assert ends the whole process (SIGABRT, a C++ backtrace). So the
first load and a short decode of a file not seen before run in a child; if llama.cpp aborts
or crashes there, the user gets one line: `FILE: llama.cpp aborts on this file: GGML_ASSERT(...)
(llama-graph.cpp:161)`. The verdict is cached by the file's fingerprint, the llama.cpp build and
the kernel choice (`mllm_cpu.kernels`), so it costs once per file.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mllm_cpu.core.child import module_command, run_child
from mllm_cpu.core.errors import InputError
from mllm_cpu.identity import file_fingerprint
from mllm_cpu.kernels import KernelChoice, llama_build_id, prepare_kernels, read_verdict, write_verdict

CHECK_TIMEOUT_SECONDS = 600.0
"""A first load that takes longer than this (a huge file on a slow board) gives no verdict; the load goes on."""
CHECK_CONTEXT = 256
CHECK_TOKENS = 8
"""The child decodes a batch of this many tokens, then one more alone (the two kinds of decode a reply does)."""
EXIT_LOAD_FAILED = 3
"""The child's exit code when llama.cpp refused the file without crashing (the in-process load says why)."""


@dataclass(frozen=True)
class LoadCheck:
    """What checking a file's first load found."""

    path: Path
    cached: bool
    seconds: float


def prepare_load(path: Path) -> KernelChoice:
    """Everything to do before llama.cpp loads `path` in this process: the kernel choice, the first-load check."""
    choice = prepare_kernels()
    check_first_load(path, choice)
    return choice


def _verdict_path(path: Path, choice: KernelChoice) -> Path:
    from mllm_cpu.store import cache_home

    kernels = "-".join(choice.used) or "CPU"
    return cache_home() / "files" / f"{file_fingerprint(path)}-{llama_build_id()}-{kernels}.json"


def check_first_load(path: Path, choice: KernelChoice) -> LoadCheck:
    """InputError if llama.cpp aborts or crashes loading `path` and decoding a few tokens (cached)."""
    start = time.perf_counter()
    verdict_path = _verdict_path(path, choice)
    verdict = read_verdict(verdict_path) or {}
    cached = isinstance(verdict.get("aborts"), bool)
    if not cached:
        result = run_child(module_command("mllm_cpu.load_check", str(path)), timeout=CHECK_TIMEOUT_SECONDS)
        if result.crashed and not result.timed_out:
            verdict = {"aborts": True, "reason": result.crash_reason()}
        elif result.returncode == 0:
            verdict = {"aborts": False}
        else:  # refused without a crash, or too slow to tell: the load in this process reports what it finds
            return LoadCheck(path, cached=False, seconds=time.perf_counter() - start)
        write_verdict(verdict_path, verdict)
    if verdict["aborts"]:
        raise InputError(f"{path}: llama.cpp aborts on this file: {verdict.get('reason', 'a crash')}")
    return LoadCheck(path, cached=cached, seconds=time.perf_counter() - start)


def _check(path: Path) -> int:
    """The child side: load `path` as the runtime would, decode a batch and one token; 0 when all went well."""
    import llama_cpp

    prepare_kernels()
    try:  # verbose: llama.cpp's log and an assert's message reach stderr, which the parent reads
        llama = llama_cpp.Llama(str(path), n_ctx=CHECK_CONTEXT, n_batch=CHECK_CONTEXT, verbose=True)
    except ValueError:
        return EXIT_LOAD_FAILED
    tokens = list(range(min(CHECK_TOKENS, llama.n_vocab())))
    llama.eval(tokens)
    llama.eval(tokens[:1])
    llama.close()
    return 0


if __name__ == "__main__":
    sys.exit(_check(Path(sys.argv[1])))
