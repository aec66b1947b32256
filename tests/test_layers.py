"""The layer rules of docs/DESIGN.md, checked on the source: who may import what, and who may print."""

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

COMMAND_LAYER = ("mllm_cpu/commands", "mllm_cpu/cli.py", "mllm_cpu/__main__.py")
"""What prints and draws: the typer commands, cli.py (with its entry point, __main__.py) and the terminal
modules (console, bars, stream_display, ...)."""

TERMINAL = ("mllm_cpu.commands", "mllm_cpu.cli", "rich")
"""What only the command layer imports: itself and rich."""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _library_modules() -> list[Path]:
    """Every module of convert/, bench/ and mllm_cpu/ outside the command layer."""
    paths = [path for folder in ("convert", "bench", "mllm_cpu") for path in sorted((ROOT / folder).rglob("*.py"))]
    return [path for path in paths if not path.relative_to(ROOT).as_posix().startswith(COMMAND_LAYER)]


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":`"""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    return (
        isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _print_calls(source: str, tool: bool) -> list[int]:
    """Lines of the `print(...)` calls in `source`, except in its `if __name__ == "__main__":` blocks
    and, for a tool (a bench/ module run with `python -m`), in its module-level `main()`."""
    module = ast.parse(source)
    exempt = [
        node
        for node in module.body
        if _is_main_guard(node) or (tool and isinstance(node, ast.FunctionDef) and node.name == "main")
    ]
    inside = {id(child) for node in exempt for child in ast.walk(node)}
    return [
        node.lineno
        for node in ast.walk(module)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and id(node) not in inside
    ]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(folder: str) -> None:
    allowed = ALLOWED[folder]
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] == "mllm_cpu" and not _within(name, allowed)
    ]
    assert not bad, "layer rule broken (see docs/DESIGN.md):\n" + "\n".join(bad)


def test_only_the_command_layer_imports_the_terminal() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _library_modules()
        for line, name in _imports(path)
        if _within(name, TERMINAL)
    ]
    assert not bad, "outside the command layer, report through a protocol the command implements:\n" + "\n".join(bad)


def test_only_the_command_layer_prints() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} calls print"
        for path in _library_modules()
        for line in _print_calls(path.read_text(encoding="utf-8"), tool=path.relative_to(ROOT).parts[0] == "bench")
    ]
    assert not bad, "outside the command layer, report through a protocol the command implements:\n" + "\n".join(bad)


def test_the_print_check_sees_prints_outside_main() -> None:
    source = """
def measure():
    print("library")

def main():
    print("tool")

    def helper():
        print("still the tool")

class Tool:
    def main(self):
        print("a method")

if __name__ == "__main__":
    print("child")
"""
    assert _print_calls(source, tool=True) == [3, 13]
    assert _print_calls(source, tool=False) == [3, 6, 9, 13]
