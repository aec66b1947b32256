"""Facts about this machine and the software stack, for `doctor` and for comparing runs."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mllm_cpu.hardware import available_memory_bytes, logical_cores, physical_cores, total_memory_bytes

from .llama_session import system_info

BUILD_FLAGS = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "KLEIDIAI", "AARCH64_REPACK"})
PACKAGES = ("llama-cpp-python", "gguf", "numpy", "mllm-cpu")


@dataclass(frozen=True)
class MachineInfo:
    """CPU, cores, memory and what llama.cpp's CPU backend was built with."""

    cpu_model: str
    architecture: str
    system: str
    physical_cores: int
    logical_cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    llama_system_info: str
    simd_features: list[str] = field(default_factory=list)
    build_flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def cpu_model() -> str:
    """The CPU's marketing name (or the board model on a Raspberry Pi)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        for key in ("model name", "model", "hardware", "cpu model"):
            if fields.get(key):
                return fields[key]
    tree_model = Path("/proc/device-tree/model")
    if tree_model.is_file():
        return tree_model.read_text(errors="replace").strip("\x00\n ")
    if sys.platform == "darwin":
        done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return platform.processor() or platform.machine() or "unknown"


def parse_system_info(text: str) -> tuple[list[str], list[str]]:
    """Split llama.cpp's "CPU : AVX2 = 1 | OPENMP = 1 | ..." into (SIMD features, build flags) that are on."""
    features: list[str] = []
    flags: list[str] = []
    for part in text.replace(":", "|").split("|"):
        name, _, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not name or value in ("", "0"):
            continue
        (flags if name in BUILD_FLAGS else features).append(name)
    return features, flags


def machine_info() -> MachineInfo:
    """Collect the machine facts (llama.cpp's backends are initialized on the way)."""
    info = system_info()
    features, flags = parse_system_info(info)
    return MachineInfo(
        cpu_model=cpu_model(),
        architecture=platform.machine(),
        system=platform.platform(),
        physical_cores=physical_cores(),
        logical_cores=logical_cores(),
        memory_total_bytes=total_memory_bytes(),
        memory_available_bytes=available_memory_bytes(),
        llama_system_info=info,
        simd_features=features,
        build_flags=flags,
    )


def package_versions() -> dict[str, str]:
    """Python and the packages a benchmark depends on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
