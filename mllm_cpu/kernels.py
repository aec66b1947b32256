"""Which of llama.cpp's CPU weight kernels models load with: the AMX path is kept out where it faults.

llama.cpp built for an Intel CPU with AMX (as `pip install` builds it, `-march=native`) offers
two "extra" weight buffer types, in this order: AMX, then CPU_REPACK (the AVX2/AVX-512/NEON
repacked kernels). On some machines, mostly virtual ones, the AMX matrix multiply segfaults at
the first decode of more than one token (llama.cpp #20824, ollama #17205, #17006). So before
the first model load of a process, `prepare_kernels` decides:

- `MLLM_CPU_AMX=on` or `off` forces the choice; unset (or `auto`), a one-time probe decides: a
  child process loads a tiny Q8_0/Q4_0 model with AMX and decodes a 32-token batch, and the
  logits are compared with the CPU_REPACK kernels'. The verdict is cached per llama.cpp build
  and CPU under `cache_home()`.
- AMX is kept out by removing it from the list of extra buffer types that llama.cpp's CPU
  backend hands to the model loader (`ggml_backend_dev_get_extra_bufts`): models then load
  exactly as with a llama.cpp compiled without AMX, with CPU_REPACK where it applies.

The choice holds for the whole process, so every path that loads weights (engine, drafting,
bench, quality, serve, the memory probe) calls `prepare_kernels` first.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mllm_cpu.core.child import module_command, run_child
from mllm_cpu.core.errors import InputError
from mllm_cpu.core.notices import notice

AMX_ENV = "MLLM_CPU_AMX"
"""Environment variable: `on` or `off` forces llama.cpp's AMX kernels; `auto` (the default) probes."""
AMX_SETTINGS = ("auto", "on", "off")
AMX = "AMX"
"""llama.cpp's name for its AMX weight buffer type."""
PROBE_TIMEOUT_SECONDS = 120.0
PROBE_BATCH = 32
PROBE_TOLERANCE = 0.05
"""Largest |logit difference| between the AMX and CPU_REPACK kernels, relative to the largest |logit|."""

_choice: KernelChoice | None = None


@dataclass(frozen=True)
class KernelChoice:
    """The extra weight buffer types llama.cpp offers here, those models load with, and why."""

    offered: tuple[str, ...]
    used: tuple[str, ...]
    setting: str
    reason: str
    probe_seconds: float | None = None
    """How long the AMX probe took, when this process ran it (None: cached, forced or not needed)."""

    @property
    def amx(self) -> bool:
        """True when quantized weights go to llama.cpp's AMX kernels."""
        return AMX in self.used

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for `doctor --json`)."""
        return {**asdict(self), "amx": self.amx}


def amx_setting() -> str:
    """The value of MLLM_CPU_AMX (auto when unset); InputError for anything else."""
    value = os.environ.get(AMX_ENV, "auto").strip().lower() or "auto"
    if value not in AMX_SETTINGS:
        raise InputError(f"{AMX_ENV} must be one of {', '.join(AMX_SETTINGS)}, got {value!r}")
    return value


def prepare_kernels() -> KernelChoice:
    """Decide (once per process) whether models load with AMX, and apply it before any model loads."""
    global _choice
    if _choice is not None:
        return _choice
    setting = amx_setting()
    buffer_types = _ExtraBufferTypes()
    offered = buffer_types.names()
    probe_seconds = None
    if AMX not in offered:
        keep, reason = True, "this llama.cpp build has no AMX kernels for this CPU"
    elif setting != "auto":
        keep, reason = setting == "on", f"{AMX_ENV}={setting}"
    else:
        verdict, probe_seconds = _amx_verdict()
        keep, reason = verdict["works"], verdict["reason"]
        if not keep and probe_seconds is not None:
            notice(f"llama.cpp's AMX kernels fail on this CPU ({reason}); using {_others(offered)} instead")
    if not keep:
        buffer_types.remove(AMX)
    _choice = KernelChoice(offered, buffer_types.names(), setting, reason, probe_seconds)
    return _choice


def _others(offered: tuple[str, ...]) -> str:
    rest = [name for name in offered if name != AMX]
    return " and ".join(rest) + " kernels" if rest else "the plain CPU kernels"


def llama_build_id() -> str:
    """Identifies the installed llama.cpp libraries (version, sizes and times), without importing them."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise InputError("llama-cpp-python is not installed")
    digest = hashlib.sha256()
    lib = Path(spec.origin).parent / "lib"
    for library in sorted(lib.glob("*.so*")) if lib.is_dir() else []:
        stat = library.stat()
        digest.update(f"{library.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def cpu_id() -> str:
    """Identifies the CPU and kernel: the first processor's name and feature flags, the OS release."""
    fields: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    text = "|".join([fields.get("model name", platform.processor()), fields.get("flags", ""), platform.release()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _verdict_path() -> Path:
    from mllm_cpu.store import cache_home

    return cache_home() / "kernels" / f"amx-{llama_build_id()}-{cpu_id()}.json"


def _amx_verdict() -> tuple[dict[str, Any], float | None]:
    """The cached verdict on AMX for this build and CPU, or a fresh probe's (with its duration)."""
    path = _verdict_path()
    cached = read_verdict(path)
    if cached is not None and isinstance(cached.get("works"), bool) and isinstance(cached.get("reason"), str):
        return cached, None
    start = time.perf_counter()
    result = run_child(module_command("mllm_cpu.kernels"), timeout=PROBE_TIMEOUT_SECONDS, env={AMX_ENV: "on"})
    seconds = time.perf_counter() - start
    if result.crashed:
        verdict = {"works": False, "reason": f"a test decode crashed: {result.crash_reason()}"}
    elif result.returncode != 0:
        # the probe itself failed (no disk, no memory): keep AMX out for now, decide again next time
        return {"works": False, "reason": "the AMX probe could not run"}, seconds
    else:
        difference = json.loads(result.stdout.strip().splitlines()[-1])["relative_difference"]
        works = difference <= PROBE_TOLERANCE
        verdict = {
            "works": works,
            "reason": f"a test decode {'matched' if works else 'differed from'} CPU_REPACK "
            f"(relative difference {difference:.2g})",
        }
    verdict["probe_seconds"] = round(seconds, 3)
    write_verdict(path, verdict)
    return verdict, seconds


def read_verdict(path: Path) -> dict[str, Any] | None:
    """A probe's cached verdict (a JSON object), or None when there is none or it is unreadable."""
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) else None


def write_verdict(path: Path, verdict: dict[str, Any]) -> None:
    """Cache a probe's verdict atomically; a read-only or full disk only means probing again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".partial") as handle:
            json.dump(verdict, handle)
        os.replace(handle.name, path)
    except OSError:
        pass


class _ExtraBufferTypes:
    """The NULL-terminated array of extra weight buffer types that llama.cpp's CPU backend offers.

    The array is the CPU backend's own (static, writable); llama.cpp reads it at every model load.
    """

    def __init__(self) -> None:
        import llama_cpp
        import llama_cpp._ggml

        llama_cpp.llama_backend_init()
        lib = llama_cpp._ggml.libggml
        lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ggml_backend_buft_name.restype = ctypes.c_char_p
        lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
        self._name = lib.ggml_backend_buft_name
        self._slots: Any = None
        device = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
        if not device:
            return
        registry = lib.ggml_backend_dev_backend_reg(device)
        address = lib.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_dev_get_extra_bufts")
        if address:
            get_extra = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(address)
            self._slots = ctypes.cast(get_extra(device), ctypes.POINTER(ctypes.c_void_p))

    def _entries(self) -> list[int]:
        entries: list[int] = []
        while self._slots is not None and self._slots[len(entries)]:
            entries.append(self._slots[len(entries)])
        return entries

    def names(self) -> tuple[str, ...]:
        """The buffer types in llama.cpp's order of preference."""
        return tuple(self._name(entry).decode() for entry in self._entries())

    def remove(self, name: str) -> None:
        """Drop `name` from the array, moving the others up (the array keeps its NULL end)."""
        entries = self._entries()
        kept = [entry for entry in entries if self._name(entry).decode() != name]
        for index in range(len(entries)):
            self._slots[index] = kept[index] if index < len(kept) else None


def _probe() -> float:
    """The child side of the AMX probe: one batched decode with AMX, then with it removed; their relative difference."""
    import numpy as np

    from mllm_cpu.convert.probe_model import write_probe_model

    buffer_types = _ExtraBufferTypes()
    with tempfile.TemporaryDirectory() as folder:
        path = write_probe_model(Path(folder) / "probe.gguf")
        amx_logits = _decode_probe(path)
        buffer_types.remove(AMX)
        other_logits = _decode_probe(path)
    scale = float(np.abs(other_logits).max()) or 1.0
    return float(np.abs(amx_logits - other_logits).max()) / scale


def _decode_probe(path: Path) -> Any:
    import llama_cpp
    import numpy as np

    from mllm_cpu.core.llama_log import captured_llama_log

    with captured_llama_log():
        llama = llama_cpp.Llama(str(path), n_ctx=2 * PROBE_BATCH, n_batch=PROBE_BATCH, verbose=False, logits_all=True)
    llama.eval(list(range(3, 3 + PROBE_BATCH)))
    logits = np.array(llama.scores[:PROBE_BATCH], dtype=np.float32)
    llama.close()
    return logits


if __name__ == "__main__":
    print(json.dumps({"relative_difference": _probe()}))
    sys.exit(0)
