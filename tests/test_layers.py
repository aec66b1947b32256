"""The layer rules of docs/DESIGN.md, checked on the source: who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# folder -> the mllm_cpu packages its modules may import (besides their own)
ALLOWED = {
    "convert": ("mllm_cpu.core", "mllm_cpu.convert"),
    "mllm_cpu/core": ("mllm_cpu.core",),
    "bench": ("mllm_cpu",),
    "mllm_cpu": ("mllm_cpu",),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of the project's packages in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "mllm_cpu"]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(folder: str) -> None:
    allowed = ALLOWED[folder]
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in _imports(path)
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)
    ]
    assert not bad, "layer rule broken (see docs/DESIGN.md):\n" + "\n".join(bad)
