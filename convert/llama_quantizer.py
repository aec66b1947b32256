"""Quantize a high-precision GGUF with llama.cpp's own quantizer (llama_model_quantize).

The quantizer runs in a child process: a KeyboardInterrupt raised while llama.cpp calls
back into Python (its log callback) is swallowed by ctypes, so Ctrl-C could not stop it
in-process. The parent waits on the child and kills it on Ctrl-C or any error; the child
ignores SIGINT and, on Linux, dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from mllm_cpu.core.child import module_command
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.gguf_constants import constants as gguf  # gguf-py's constants alone: no numpy
from mllm_cpu.core.llama_log import captured_llama_log, last_error

from .quant_types import QuantLevel

_PR_SET_PDEATHSIG = 1
_PROBE_BYTES = 1 << 16


def quantize_with_llama_cpp(
    source: Path,
    target: Path,
    level: QuantLevel,
    embedding_type: gguf.GGMLQuantizationType | None = None,
    threads: int | None = None,
) -> None:
    """Run llama.cpp's quantizer from `source` (F32/F16/BF16 GGUF) to `target`.

    `embedding_type` fixes the type of the token embedding matrix, which with tied
    embeddings is also the output projection.
    """
    arguments = [
        str(os.getpid()),
        str(source),
        str(target),
        str(int(level.file_type)),
        str(-1 if embedding_type is None else int(embedding_type)),
        str(threads or os.cpu_count() or 1),
    ]
    child = subprocess.Popen(
        module_command("mllm_cpu.convert.llama_quantizer", *arguments),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, log = child.communicate()
    except BaseException:
        child.kill()
        child.wait()
        raise
    if child.returncode != 0:
        write_error = _write_error(target)
        if write_error is not None:
            raise write_error  # named by the caller's naming_path: "OUT.gguf: No space left on device"
        if child.returncode < 0:
            raise InputError(
                f"llama.cpp's quantizer ended by {_signal_name(-child.returncode)} while writing {level.label}"
            )
        lines = [log.decode("utf-8", errors="replace")]
        raise InputError(f"llama.cpp could not quantize to {level.label}: {last_error(lines)}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _write_error(path: Path) -> OSError | None:
    """The error writing to `path` gives now (a full disk, a file-size limit), or None if writing works.

    llama.cpp's quantizer reports a failed write only as "basic_ios::clear: iostream error";
    appending a block to the partial file it left (removed afterwards) shows the real cause.
    """
    try:
        with path.open("ab", buffering=0) as handle:
            handle.write(bytes(_PROBE_BYTES))
            os.fsync(handle.fileno())
    except OSError as error:
        return OSError(error.errno, error.strerror)
    return None


def child_main(arguments: list[str]) -> None:
    """The child process: quantize, write llama.cpp's log to stderr on failure, exit 1 then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent, source, target, file_type, embedding_type, threads = arguments
    _die_with_parent(int(parent))
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = int(threads)
    if int(embedding_type) >= 0:
        params.token_embedding_type = int(embedding_type)
        params.output_tensor_type = int(embedding_type)
    with captured_llama_log() as log:
        status = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if status != 0:
        sys.stderr.write("".join(log))
        sys.exit(1)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies; exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except AttributeError:
        return
    if os.getppid() != parent:
        sys.exit(1)


if __name__ == "__main__":
    child_main(sys.argv[1:])
