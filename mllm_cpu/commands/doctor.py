"""`mllm-cpu doctor`: the CPU, cores, SIMD features, memory and versions this install runs with."""

from __future__ import annotations

from typing import Annotated

import typer

from mllm_cpu.commands.console import print_json, print_table, table
from mllm_cpu.core.values import human_bytes


def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print the facts as JSON.")] = False,
) -> None:
    """Show the CPU, SIMD features and build flags (as llama.cpp reports them), weight kernels, memory, versions."""
    from mllm_cpu.bench.machine import machine_info, package_versions  # numpy, gguf: not needed for --help
    from mllm_cpu.kernels import AMX, prepare_kernels

    machine = machine_info()
    choice = prepare_kernels()
    versions = package_versions()
    if json_output:
        print_json({"machine": machine.to_dict(), "kernels": choice.to_dict(), "versions": versions})
        return
    amx = "in use" if choice.amx else "kept out" if AMX in choice.offered else "not available"
    rows = [
        ["CPU", machine.cpu_model],
        ["architecture", f"{machine.architecture} ({machine.system})"],
        ["cores", f"{machine.physical_cores} physical, {machine.logical_cores} logical"],
        ["SIMD features (llama.cpp)", ", ".join(machine.simd_features) or "none"],
        ["build flags (llama.cpp)", ", ".join(machine.build_flags) or "none"],
        ["llama_print_system_info", machine.llama_system_info],
        ["weight kernels (llama.cpp)", ", ".join(choice.used) or "plain CPU"],
        ["AMX kernels", f"{amx}: {choice.reason}"],
        [
            "memory",
            f"{human_bytes(machine.memory_total_bytes)} total, {human_bytes(machine.memory_available_bytes)} available",
        ],
        *([name, version] for name, version in versions.items()),
    ]
    print_table(table("mllm-cpu doctor", ["item", "value"], rows))
